"""``turnout plugin new``: the template renders into a plugin that installs, tests and releases."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from helpers import install_into

from turnout import ConfigRejectedError, Status, Turnout, _scaffold
from turnout.cli import cli
from turnout.store import InstallRequest
from turnout.worker import WorkerReleaser

ROOT = Path(__file__).parents[1]
SOURCE = ROOT / "plugins" / "_template"


def _new(*args: str) -> Result:
    return CliRunner().invoke(cli, ["plugin", "new", *args], catch_exceptions=False)


def _tree(root: Path) -> dict[str, bytes]:
    return {p.as_posix(): (root / p).read_bytes() for p in _scaffold.template_files(root)}


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty current folder for the command to write into."""
    folder = tmp_path / "work"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


def test_plugin_new_renders_every_name(workdir: Path) -> None:
    result = _new("echo2")
    assert result.exit_code == 0, result.stderr
    plugin = workdir / "turnout-echo2"
    assert sorted(_tree(plugin)) == [
        "CHANGELOG.md",
        "LICENSE",
        "README.md",
        "pyproject.toml",
        "src/turnout_echo2/__init__.py",
        "src/turnout_echo2/py.typed",
        "tests/conftest.py",
        "tests/test_plugin.py",
        "tests/test_release.py",
    ]
    project = tomllib.loads((plugin / "pyproject.toml").read_text())["project"]
    assert project["name"] == "turnout-echo2"
    assert project["entry-points"]["turnout.releasers"] == {"echo2": "turnout_echo2"}
    assert project["dependencies"] == ["pluggy>=1.5,<2"]
    code = (plugin / "src" / "turnout_echo2" / "__init__.py").read_text()
    assert 'PLUGIN_ID = "echo2"' in code
    assert "import turnout_echo2" in (plugin / "tests" / "test_plugin.py").read_text()
    for path, data in _tree(plugin).items():
        assert "template" not in path
        assert "template" not in data.decode().lower(), path
    # What to do next, on stderr; nothing on stdout.
    assert result.stdout == ""
    for step in ("cd turnout-echo2", "pip install -e '.[test]'", "turnout plugin install ."):
        assert step in result.stderr
    assert "turnout target set TARGET echo2@0.1.0 --config path=" in result.stderr


def test_plugin_new_renders_the_template_files_and_nothing_else(workdir: Path) -> None:
    assert _new("echo2").exit_code == 0
    renames = _scaffold.names("echo2")
    expected = {
        path.replace("turnout_template", renames["turnout_template"]): data
        for path, data in _tree(_scaffold.template_root()).items()
    }
    rendered = _tree(workdir / "turnout-echo2")
    assert rendered.keys() == expected.keys()
    # Only the three spellings change: line for line, the same files.
    for path, data in rendered.items():
        assert len(data.splitlines()) == len(expected[path].splitlines()), path


def test_plugin_new_json_into_dir(workdir: Path, tmp_path: Path) -> None:
    dest = tmp_path / "elsewhere" / "my-notes"
    result = _new("my_notes", "--dir", str(dest), "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["path"] == str(dest.resolve())
    assert (data["plugin"], data["version"]) == ("my_notes", "0.1.0")
    assert (data["distribution"], data["package"]) == ("turnout-my_notes", "turnout_my_notes")
    assert "src/turnout_my_notes/__init__.py" in data["files"]
    assert (dest / "src" / "turnout_my_notes" / "py.typed").is_file()
    assert data["next"][0] == f"cd {dest}"
    assert list(workdir.iterdir()) == []


def test_plugin_new_fills_an_empty_folder(workdir: Path) -> None:
    (workdir / "turnout-echo2").mkdir()
    assert _new("echo2").exit_code == 0
    assert (workdir / "turnout-echo2" / "pyproject.toml").is_file()
    assert [p.name for p in workdir.iterdir()] == ["turnout-echo2"]  # no staging left behind


def test_plugin_new_name_holding_the_placeholder_is_renamed_once(workdir: Path) -> None:
    assert _new("template2").exit_code == 0
    project = tomllib.loads((workdir / "turnout-template2" / "pyproject.toml").read_text())
    assert project["project"]["name"] == "turnout-template2"
    assert project["project"]["entry-points"]["turnout.releasers"] == {
        "template2": "turnout_template2"
    }
    assert (workdir / "turnout-template2" / "src" / "turnout_template2").is_dir()


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        ("Echo", "try: turnout plugin new echo"),
        ("my plugin", "try: turnout plugin new my-plugin"),
        ("2fast", "try: turnout plugin new fast"),
        ("echo-", "try: turnout plugin new echo"),
        ("a/b", "try: turnout plugin new a-b"),
        ("web.hook", "try: turnout plugin new web-hook"),
        ("turnout-echo", "leave out the 'turnout-' prefix"),
        ("", "e.g. turnout plugin new static-site"),
        ("a" * 65, "up to 64 lowercase letters"),  # a folder name the file system refuses
    ],
)
def test_plugin_new_refuses_a_bad_name(workdir: Path, name: str, hint: str) -> None:
    result = _new(name)
    assert result.exit_code == 2
    assert f"invalid plugin name {name!r}" in result.stderr
    assert hint in result.stderr
    assert "Traceback" not in result.stderr
    assert list(workdir.iterdir()) == []


def test_plugin_new_into_a_folder_it_cannot_write_is_a_usage_error(workdir: Path) -> None:
    result = _new("echo2", "--dir", "/proc/no-such-folder/turnout-echo2")
    assert result.exit_code == 2
    assert "nothing was written. Choose a folder you can write to with --dir PATH" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr


def test_plugin_new_refuses_a_folder_that_holds_something(workdir: Path) -> None:
    mine = workdir / "turnout-echo2" / "notes.txt"
    mine.parent.mkdir()
    mine.write_text("mine")
    result = _new("echo2")
    assert result.exit_code == 2
    assert "already exists and is not an empty folder; nothing was written" in result.stderr
    assert "--dir" in result.stderr
    assert [p.name for p in mine.parent.iterdir()] == ["notes.txt"]
    assert mine.read_text() == "mine"
    assert [p.name for p in workdir.iterdir()] == ["turnout-echo2"]


def _installed_editable() -> bool:
    direct_url = metadata.distribution("turnout").read_text("direct_url.json") or "{}"
    return bool(json.loads(direct_url).get("dir_info", {}).get("editable", False))


def test_plugin_new_renders_the_packaged_template_when_installed() -> None:
    """A wheel install (the nox ``tests`` session) renders the wheel's copy, which is
    plugins/_template byte for byte; a checkout's editable install renders plugins/_template."""
    root = _scaffold.template_root()
    if _installed_editable():
        assert root.resolve() == SOURCE.resolve()
    else:
        assert root == _scaffold.PACKAGED
        assert root.is_relative_to(Path(_scaffold.__file__).parent)
        assert _tree(root) == _tree(SOURCE)


def _build_wheel(project: Path, dest: Path) -> Path:
    """A real wheel of ``project``, built by hatchling through ``python -m build``, offline."""
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dest)],
        cwd=project,
        check=True,
        capture_output=True,
    )
    (wheel,) = dest.glob("*.whl")
    return wheel


@pytest.mark.slow
def test_plugin_new_core_wheel_carries_the_template(tmp_path: Path) -> None:
    """turnout's own wheel ships plugins/_template, and a turnout installed from it renders it."""
    wheel = _build_wheel(ROOT, tmp_path / "dist")
    prefix = "turnout/_template/"
    with zipfile.ZipFile(wheel) as archive:
        packaged = {
            name.removeprefix(prefix): archive.read(name)
            for name in archive.namelist()
            if name.startswith(prefix)
        }
    assert packaged == _tree(SOURCE)

    site = tmp_path / "site"
    install_into(site, wheel)
    env = {**os.environ, "PYTHONPATH": str(site)}
    code = "from turnout import _scaffold, cli; print(_scaffold.template_root()); cli.main()"
    dest = tmp_path / "echo3"
    run = subprocess.run(
        [sys.executable, "-c", code, "plugin", "new", "echo3", "--dir", str(dest)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert Path(run.stdout.strip()) == site / "turnout" / "_template"
    assert (dest / "src" / "turnout_echo3" / "__init__.py").is_file()


@pytest.fixture
def tt(db_path: Path, home: Path) -> Iterator[Turnout]:
    handle = Turnout(str(db_path), home=home)
    yield handle
    handle.close()


@pytest.mark.slow
def test_plugin_new_plugin_installs_passes_its_tests_and_releases(
    workdir: Path, tmp_path: Path, wheelhouse: Path, tt: Turnout
) -> None:
    assert _new("echo2").exit_code == 0
    plugin = workdir / "turnout-echo2"

    # A real wheel, installed the way pip would, then the plugin's own tests, unchanged.
    wheel = _build_wheel(plugin, tmp_path / "dist")
    assert wheel.name == "turnout_echo2-0.1.0-py3-none-any.whl"
    site = tmp_path / "site"
    install_into(site, wheel)
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    env["PYTHONPATH"] = str(site)
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=plugin,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert " passed" in tests.stdout
    assert "failed" not in tests.stdout

    # Into a real store, offline, then a release through a worker process.
    (outcome,) = tt.install_plugin(
        InstallRequest(spec=str(wheel), find_links=[str(wheelhouse)], no_index=True)
    )
    assert (str(outcome.plugin.ref), outcome.plugin.distribution) == (
        "echo2@0.1.0",
        "turnout-echo2",
    )
    with pytest.raises(ConfigRejectedError, match="config 'path' is required"):
        tt.set_target("notes", "echo2@0.1.0", config={"path": "relative.jsonl"})
    log = tmp_path / "out" / "releases.jsonl"
    tt.set_target("notes", "echo2@0.1.0", config={"path": str(log)})
    record = tt.release("notes", "dist/site.tgz", key="build-1", context={"customer": "acme"})
    assert record.status is Status.SUCCEEDED, record.error
    assert record.result == {
        "path": str(log),
        "line": 1,
        "idempotency_key": record.plugin_key,  # build-1, made unique per customer
        "reused": False,
    }
    (releaser,) = tt._releasers.values()
    assert isinstance(releaser, WorkerReleaser)
    (line,) = [json.loads(text) for text in log.read_text().splitlines()]
    assert (line["plugin"], line["target"], line["context"]) == (
        "echo2",
        "notes",
        {"customer": "acme"},
    )
