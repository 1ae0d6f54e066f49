"""The plugin store: versions side by side, each in its own environment and worker process."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import FIXTURES, build_wheel, install_into, read_calls

from turnout import PluginLoadError, PluginNotInstalledError, Status, Turnout
from turnout.environment import DuplicatePluginError
from turnout.errors import (
    ConfigurationError,
    DatabaseNotMigratedError,
    PluginInstallError,
    UsageError,
)
from turnout.store import InstallRequest, tree_hashes
from turnout.worker import WorkerReleaser

STORE_FIXTURES = FIXTURES / "store"


def _request(wheel: Path | str, wheelhouse: Path) -> InstallRequest:
    return InstallRequest(spec=str(wheel), find_links=[str(wheelhouse)], no_index=True)


def _echo_wheel(wheelhouse: Path, version: str) -> Path:
    return next(wheelhouse.glob(f"turnout_echo-{version}-*.whl"))


@pytest.fixture
def tt(db_path: Path, home: Path) -> Turnout:
    handle = Turnout(str(db_path), home=home)
    yield handle
    handle.close()


def _turnout_cli() -> str:
    return shutil.which("turnout", path=str(Path(sys.executable).parent)) or "turnout"


def test_store_install_records_the_version_and_runs_it_in_a_worker(
    tt: Turnout, wheelhouse: Path, home: Path
) -> None:
    (outcome,) = tt.install_plugin(_request(_echo_wheel(wheelhouse, "1.0.0"), wheelhouse))
    assert outcome.status == "installed"
    assert str(outcome.plugin.ref) == "echo@1.0.0"
    env = home / "envs" / outcome.digest
    assert (env / "turnout_echo.py").is_file()
    assert (env / "pluggy").is_dir()
    row = tt.registry.find_plugin_version(outcome.plugin.ref, "store")
    assert row is not None
    assert (row.distribution, row.entry_point, row.location) == (
        "turnout-echo",
        "turnout_echo",
        outcome.digest,
    )
    assert row.hashes == tree_hashes(env)
    assert "turnout_echo.py" in row.hashes
    assert row.requirement is not None
    assert row.requirement.endswith("turnout_echo-1.0.0-py3-none-any.whl")
    assert list((home / "tmp").iterdir()) == []  # the build folder was moved, not copied

    tt.set_target("site", "echo@1.0.0")
    record = tt.release("site", "a.tgz", key="k1")
    assert record.status is Status.SUCCEEDED
    assert record.result is not None
    assert record.result["version"] == "1.0.0"
    # It ran in a worker whose path is the store environment.
    (releaser,) = tt._releasers.values()
    assert isinstance(releaser, WorkerReleaser)
    assert releaser.spec.path == (str(env),)


def test_store_install_twice_does_nothing(tt: Turnout, wheelhouse: Path, home: Path) -> None:
    wheel = _echo_wheel(wheelhouse, "1.0.0")
    (first,) = tt.install_plugin(_request(wheel, wheelhouse))
    env = home / "envs" / first.digest
    before = env.stat().st_mtime_ns
    (again,) = tt.install_plugin(_request(wheel, wheelhouse))
    assert again.status == "unchanged"
    assert again.digest == first.digest
    assert env.stat().st_mtime_ns == before
    assert [p.name for p in (home / "envs").iterdir()] == [first.digest]
    # By name and version, nothing even runs the installer.
    spec = InstallRequest(spec="turnout-echo==1.0.0", no_index=True)
    (by_name,) = tt.install_plugin(spec)
    assert by_name.status == "unchanged"


def test_store_installing_a_version_never_touches_another(
    tt: Turnout, wheelhouse: Path, home: Path
) -> None:
    (v1,) = tt.install_plugin(_request(_echo_wheel(wheelhouse, "1.0.0"), wheelhouse))
    snapshot = tree_hashes(home / "envs" / v1.digest)
    (v2,) = tt.install_plugin(_request(_echo_wheel(wheelhouse, "2.0.0"), wheelhouse))
    assert v2.digest != v1.digest
    assert tree_hashes(home / "envs" / v1.digest) == snapshot
    assert tt.verify_plugins() == {"echo@1.0.0": [], "echo@2.0.0": []}


def test_store_same_version_with_other_content_is_refused(
    tt: Turnout, wheelhouse: Path, tmp_path: Path
) -> None:
    tt.install_plugin(_request(_echo_wheel(wheelhouse, "1.0.0"), wheelhouse))
    other = build_wheel(
        tmp_path / "other",
        "turnout-echo",
        "1.0.0",
        {"turnout_echo.py": (FIXTURES / "echo.py").read_text().replace("@VERSION@", "evil")},
        entry_points={"turnout.releasers": {"echo": "turnout_echo"}},
        requires=["pluggy>=1.5"],
    )
    with pytest.raises(PluginInstallError, match="already in the store with other content"):
        tt.install_plugin(_request(other, wheelhouse))
    assert len(tt.registry.plugin_versions("store")) == 1


def test_store_install_is_all_or_nothing_across_the_plugins_of_an_environment(
    tt: Turnout, wheelhouse: Path, tmp_path: Path, home: Path
) -> None:
    # One wheel providing two releasers, one new (alpha) and one that conflicts with what the
    # store holds (echo, other content): refused, and alpha is not recorded either.
    (first,) = tt.install_plugin(_request(_echo_wheel(wheelhouse, "1.0.0"), wheelhouse))
    both = build_wheel(
        tmp_path / "both",
        "turnout-echo",
        "1.0.0",
        {"turnout_echo.py": (FIXTURES / "echo.py").read_text().replace("@VERSION@", "other")},
        entry_points={"turnout.releasers": {"alpha": "turnout_echo", "echo": "turnout_echo"}},
        requires=["pluggy>=1.5"],
    )
    with pytest.raises(PluginInstallError, match=r"echo@1\.0\.0 is already in the store"):
        tt.install_plugin(_request(both, wheelhouse))
    rows = tt.registry.plugin_versions("store")
    assert [(r.plugin_id, r.location) for r in rows] == [("echo", first.digest)]
    assert [p.name for p in (home / "envs").iterdir()] == [first.digest]


def test_store_install_into_a_registry_not_migrated_installs_nothing(
    wheelhouse: Path, tmp_path: Path, home: Path
) -> None:
    # The registry is checked while the installer runs: its refusal stops the installer.
    request = _request(_echo_wheel(wheelhouse, "1.0.0"), wheelhouse)
    (tmp_path / "empty.db").touch()
    with (
        Turnout(str(tmp_path / "empty.db"), home=home) as handle,
        pytest.raises(DatabaseNotMigratedError, match="turnout db upgrade"),
    ):
        handle.install_plugin(request)
    assert list((home / "envs").iterdir()) == []
    assert list((home / "tmp").iterdir()) == []


def test_store_two_versions_with_conflicting_dependencies_side_by_side(
    tt: Turnout, tmp_path: Path, wheelhouse: Path
) -> None:
    """v1 needs helperlib 1.x, v2 needs helperlib 2.x; one process releases to both."""
    house = tmp_path / "house"
    shutil.copytree(wheelhouse, house)
    for version in ("1.0.0", "2.0.0"):
        build_wheel(house, "helperlib", version, {"helperlib.py": f'VERSION = "{version}"\n'})
        build_wheel(
            house,
            "turnout-conflict",
            version,
            {
                "turnout_conflict.py": (STORE_FIXTURES / "conflict.py")
                .read_text()
                .replace("@VERSION@", version)
            },
            entry_points={"turnout.releasers": {"conflict": "turnout_conflict"}},
            requires=["pluggy>=1.5", f"helperlib=={version}"],
        )
    for version in ("1.0.0", "2.0.0"):
        spec = InstallRequest(
            spec=f"turnout-conflict=={version}", find_links=[str(house)], no_index=True
        )
        tt.install_plugin(spec)
        tt.set_target(f"on-v{version[0]}", f"conflict@{version}")
    for i in range(20):
        for major in ("1", "2"):
            record = tt.release(f"on-v{major}", "a.tgz", key=f"k{i}")
            assert record.result is not None
            assert record.result["plugin_version"] == f"{major}.0.0"
            assert record.result["helper_version"] == f"{major}.0.0"
            row = tt.registry.find_plugin_version(
                tt.registry.get_target(f"on-v{major}").plugin_ref, "store"
            )
            assert row is not None
            assert row.location in record.result["helper_file"]


def test_store_release_never_scans_installed_distributions(
    tt: Turnout, wheelhouse: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tt.install_plugin(_request(_echo_wheel(wheelhouse, "1.0.0"), wheelhouse))
    tt.set_target("site", "echo@1.0.0")
    fresh = Turnout(str(tt.registry.url.database), home=tt.store.home)

    def no_scan(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a release scanned the installed distributions")

    from importlib import metadata

    from turnout import environment

    monkeypatch.setattr(metadata, "distributions", no_scan)
    monkeypatch.setattr(metadata, "entry_points", no_scan)
    monkeypatch.setattr(environment, "scan", no_scan)
    try:
        assert fresh.release("site", "a.tgz", key="k").status is Status.SUCCEEDED
    finally:
        fresh.close()


def test_store_loads_only_the_named_entry_point(
    tt: Turnout, tmp_path: Path, wheelhouse: Path, home: Path
) -> None:
    """A distribution declaring a second releaser: only the pinned one is ever imported."""
    wheel = build_wheel(
        tmp_path / "w",
        "turnout-pair",
        "1.0.0",
        {
            "turnout_pair.py": (FIXTURES / "echo.py").read_text().replace("@VERSION@", "1.0.0"),
            "turnout_bystander.py": (STORE_FIXTURES / "bystander.py").read_text(),
        },
        entry_points={
            "turnout.releasers": {"pair": "turnout_pair", "bystander": "turnout_bystander"}
        },
        requires=["pluggy>=1.5"],
    )
    outcomes = tt.install_plugin(_request(wheel, wheelhouse))
    assert sorted(str(o.plugin.ref) for o in outcomes) == ["bystander@1.0.0", "pair@1.0.0"]
    tt.set_target("site", "pair@1.0.0")
    assert tt.release("site", "a.tgz", key="k").status is Status.SUCCEEDED
    assert list(home.rglob("BYSTANDER_IMPORTED")) == []


def test_store_refuses_two_providers_of_one_plugin_id(
    tt: Turnout, tmp_path: Path, wheelhouse: Path
) -> None:
    house = tmp_path / "house"
    shutil.copytree(wheelhouse, house)
    build_wheel(
        house,
        "turnout-impostor",
        "1.0.0",
        {"turnout_impostor.py": "import pluggy\n"},
        entry_points={"turnout.releasers": {"echo": "turnout_impostor"}},
    )
    wheel = build_wheel(
        tmp_path / "w",
        "turnout-echo",
        "3.0.0",
        {"turnout_echo.py": (FIXTURES / "echo.py").read_text()},
        entry_points={"turnout.releasers": {"echo": "turnout_echo"}},
        requires=["pluggy>=1.5", "turnout-impostor"],
    )
    with pytest.raises(PluginInstallError, match="provided by both"):
        tt.install_plugin(_request(wheel, house))
    assert tt.registry.plugin_versions("store") == []
    assert list((tt.store.envs).iterdir()) == []


def test_environment_two_distributions_providing_one_id_are_refused(
    tt: Turnout, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # S2 for plugins installed beside turnout: no guess between two providers of one id.
    site = tmp_path / "site"
    for distribution in ("turnout-dup-a", "turnout-dup-b"):
        module = distribution.replace("-", "_")
        wheel = build_wheel(
            tmp_path / "w",
            distribution,
            "1.0.0",
            {f"{module}.py": "raise SystemExit('never imported')\n"},
            entry_points={"turnout.releasers": {"dup": module}},
        )
        install_into(site, wheel)
    monkeypatch.syspath_prepend(str(site))
    with pytest.raises(DuplicatePluginError) as raised:
        tt.set_target("site", "dup@1.0.0", isolation="inline")
    assert raised.value.exit_code == 78
    assert "turnout-dup-a, turnout-dup-b" in str(raised.value)
    assert "uninstall all but one" in str(raised.value)
    assert tt.registry.list_targets() == []
    assert all(row.plugin_id != "dup" for row in tt.registry.plugin_versions())


def test_store_worker_refuses_a_row_that_names_another_version(
    tt: Turnout, wheelhouse: Path
) -> None:
    from sqlalchemy import text

    (v1,) = tt.install_plugin(_request(_echo_wheel(wheelhouse, "1.0.0"), wheelhouse))
    tt.install_plugin(_request(_echo_wheel(wheelhouse, "2.0.0"), wheelhouse))
    # Corrupt the registry: echo@2.0.0's row now points at the 1.0.0 environment.
    with tt.registry.engine.begin() as conn:
        conn.execute(
            text("UPDATE plugin_versions SET location = :loc WHERE version = '2.0.0'"),
            {"loc": v1.digest},
        )
    with pytest.raises(PluginLoadError, match=r"registry pins 2\.0\.0"):
        tt.set_target("site", "echo@2.0.0")


def test_store_plugin_missing_on_this_machine_names_the_fix(tt: Turnout, wheelhouse: Path) -> None:
    (v1,) = tt.install_plugin(_request(_echo_wheel(wheelhouse, "1.0.0"), wheelhouse))
    tt.set_target("site", "echo@1.0.0")
    shutil.rmtree(tt.store.path(v1.digest))
    fresh = Turnout(str(tt.registry.url.database), home=tt.store.home)
    with pytest.raises(PluginNotInstalledError, match="turnout plugin install"):
        fresh.release("site", "a.tgz", key="k")
    fresh.close()


def test_store_remove_is_refused_while_a_target_uses_it(tt: Turnout, wheelhouse: Path) -> None:
    (v1,) = tt.install_plugin(_request(_echo_wheel(wheelhouse, "1.0.0"), wheelhouse))
    tt.set_target("site", "echo@1.0.0")
    with pytest.raises(UsageError, match="used by target"):
        tt.remove_plugin("echo@1.0.0")
    assert tt.store.has(v1.digest)
    tt.remove_plugin("echo@1.0.0", force=True)
    assert not tt.store.has(v1.digest)
    assert tt.registry.find_plugin_version(v1.plugin.ref, "store") is None


def test_store_verify_finds_changed_missing_and_unexpected_files(
    tt: Turnout, wheelhouse: Path
) -> None:
    (v1,) = tt.install_plugin(_request(_echo_wheel(wheelhouse, "1.0.0"), wheelhouse))
    env = tt.store.path(v1.digest)
    assert tt.verify_plugins("echo@1.0.0") == {"echo@1.0.0": []}
    (env / "turnout_echo.py").write_text("tampered = True\n")
    (env / "pluggy" / "_result.py").unlink()
    (env / "extra.py").write_text("")
    (problems,) = tt.verify_plugins().values()
    assert problems == [
        "changed: turnout_echo.py",
        "missing: pluggy/_result.py",
        "unexpected: extra.py",
    ]


def test_store_cli_install_list_verify_remove(db_path: Path, home: Path, wheelhouse: Path) -> None:
    env = {**os.environ, "TURNOUT_DATABASE_URL": str(db_path), "TURNOUT_HOME": str(home)}

    def turnout(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [_turnout_cli(), *args], capture_output=True, text=True, env=env, check=False
        )

    wheel = str(_echo_wheel(wheelhouse, "1.0.0"))
    done = turnout(
        "plugin", "install", wheel, "--no-index", "--find-links", str(wheelhouse), "--json"
    )
    assert done.returncode == 0, done.stderr
    assert '"status": "installed"' in done.stdout
    assert turnout("target", "set", "site", "echo@1.0.0").returncode == 0
    listed = turnout("plugin", "list", "--json")
    assert '"source": "store"' in listed.stdout
    assert '"site"' in listed.stdout
    assert turnout("plugin", "verify").returncode == 0
    assert turnout("plugin", "remove", "echo@1.0.0").returncode == 2
    assert turnout("plugin", "install").returncode == 2
    assert turnout("plugin", "install", "turnout-nosuch==1.0", "--no-index").returncode == 1


# Concurrency and interruption (RELIABILITY.md C9) -------------------------------------------


@pytest.mark.slow
def test_store_concurrent_installs_of_one_version_end_with_one_environment(
    db_path: Path, home: Path, wheelhouse: Path
) -> None:
    env = {**os.environ, "TURNOUT_DATABASE_URL": str(db_path), "TURNOUT_HOME": str(home)}
    command = [
        _turnout_cli(), "plugin", "install", str(_echo_wheel(wheelhouse, "1.0.0")),
        "--no-index", "--find-links", str(wheelhouse),
    ]  # fmt: skip
    runs = [subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    errors = [run.communicate(timeout=120)[1] for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0], errors
    envs = list((home / "envs").iterdir())
    assert len(envs) == 1
    with Turnout(str(db_path), home=home) as handle:
        assert handle.verify_plugins() == {"echo@1.0.0": []}
        handle.set_target("site", "echo@1.0.0")
        assert handle.release("site", "a.tgz", key="k").status is Status.SUCCEEDED


@pytest.mark.slow
def test_store_install_killed_midway_leaves_nothing_used(
    db_path: Path, home: Path, wheelhouse: Path, tmp_path: Path
) -> None:
    # A wheel big enough that the installer is still copying when it is killed.
    big = build_wheel(
        tmp_path / "big",
        "turnout-echo",
        "1.0.0",
        {
            "turnout_echo.py": (FIXTURES / "echo.py").read_text().replace("@VERSION@", "1.0.0"),
            **{f"turnout_echo_data/blob{i}.bin": os.urandom(1 << 20) for i in range(40)},
        },
        entry_points={"turnout.releasers": {"echo": "turnout_echo"}},
        requires=["pluggy>=1.5"],
    )
    env = {**os.environ, "TURNOUT_DATABASE_URL": str(db_path), "TURNOUT_HOME": str(home)}
    command = [
        _turnout_cli(),
        "plugin",
        "install",
        str(big),
        "--no-index",
        "--find-links",
        str(wheelhouse),
    ]
    run = subprocess.Popen(command, env=env, start_new_session=True, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any((home / "tmp").glob("build-*/*")):
        time.sleep(0.001)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    assert not (home / "envs").exists() or list((home / "envs").iterdir()) == []
    with Turnout(str(db_path), home=home) as handle:
        assert handle.registry.plugin_versions("store") == []
        (outcome,) = handle.install_plugin(_request(big, wheelhouse))
        assert handle.verify_plugins() == {"echo@1.0.0": []}
        assert outcome.status == "installed"


# Hash-checking mode (RELIABILITY.md S1) ------------------------------------------------------


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def locked(tmp_path: Path, wheelhouse: Path) -> tuple[Path, Path]:
    """A wheelhouse with echo 1.0.0 and pluggy, and a lock file pinning both by hash."""
    house = tmp_path / "locked"
    house.mkdir()
    echo = shutil.copy(_echo_wheel(wheelhouse, "1.0.0"), house)
    pluggy = shutil.copy(next(wheelhouse.glob("pluggy-*.whl")), house)
    pluggy_version = Path(pluggy).name.split("-")[1]
    lock = tmp_path / "plugins.lock"
    lock.write_text(
        f"turnout-echo==1.0.0 --hash=sha256:{_sha256(Path(echo))}\n"
        f"pluggy=={pluggy_version} --hash=sha256:{_sha256(Path(pluggy))}\n"
    )
    return house, lock


def _hashed(house: Path, lock: Path) -> InstallRequest:
    return InstallRequest(
        find_links=[str(house)], no_index=True, requirements=lock, require_hashes=True
    )


def test_store_hash_checked_install_succeeds(tt: Turnout, locked: tuple[Path, Path]) -> None:
    (outcome,) = tt.install_plugin(_hashed(*locked))
    assert str(outcome.plugin.ref) == "echo@1.0.0"


def test_store_hash_checked_install_refuses_a_tampered_wheel(
    tt: Turnout, locked: tuple[Path, Path]
) -> None:
    house, lock = locked
    wheel = next(house.glob("turnout_echo-*.whl"))
    data = bytearray(wheel.read_bytes())
    data[len(data) // 2] ^= 0x01
    wheel.write_bytes(bytes(data))
    with pytest.raises(PluginInstallError, match="nothing was installed"):
        tt.install_plugin(_hashed(house, lock))
    assert tt.registry.plugin_versions("store") == []
    assert list(tt.store.envs.iterdir()) == []


def test_store_hash_checked_install_refuses_a_missing_hash_or_unpinned_dependency(
    tt: Turnout, locked: tuple[Path, Path]
) -> None:
    house, lock = locked
    lines = lock.read_text().splitlines()
    lock.write_text(lines[0].split(" --hash")[0] + "\n" + lines[1] + "\n")
    with pytest.raises(PluginInstallError):
        tt.install_plugin(_hashed(house, lock))
    lock.write_text(lines[0] + "\n")  # pluggy, a dependency, is not pinned at all
    with pytest.raises(PluginInstallError):
        tt.install_plugin(_hashed(house, lock))
    assert tt.registry.plugin_versions("store") == []
    assert list(tt.store.envs.iterdir()) == []


def test_store_hash_checked_install_refuses_to_build_a_source_distribution(
    tt: Turnout, tmp_path: Path, locked: tuple[Path, Path]
) -> None:
    """An sdist would run its build code; in hash-checking mode it is refused first."""
    house, lock = locked
    marker = tmp_path / "BUILD_CODE_RAN"
    sdist_root = tmp_path / "sdist" / "turnout-echo-1.0.0"
    sdist_root.mkdir(parents=True)
    (sdist_root / "setup.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nfrom setuptools import setup\nsetup()\n"
    )
    (sdist_root / "PKG-INFO").write_text(
        "Metadata-Version: 2.1\nName: turnout-echo\nVersion: 1.0.0\n"
    )
    for wheel in house.glob("turnout_echo-*.whl"):
        wheel.unlink()
    archive = house / "turnout_echo-1.0.0.tar.gz"
    subprocess.run(
        ["tar", "-czf", str(archive), "-C", str(sdist_root.parent), sdist_root.name], check=True
    )
    lines = lock.read_text().splitlines()
    lock.write_text(f"turnout-echo==1.0.0 --hash=sha256:{_sha256(archive)}\n{lines[1]}\n")
    with pytest.raises(PluginInstallError):
        tt.install_plugin(_hashed(house, lock))
    assert not marker.exists()
    assert tt.registry.plugin_versions("store") == []


def test_store_missing_version_names_the_versions_the_store_has(
    tt: Turnout, wheelhouse: Path
) -> None:
    tt.install_plugin(_request(_echo_wheel(wheelhouse, "2.0.0"), wheelhouse))
    with pytest.raises(PluginNotInstalledError) as raised:
        tt.set_target("site", "echo@9.9.9")
    assert "the store has echo@2.0.0" in str(raised.value)
    assert "turnout plugin install 'turnout-echo==9.9.9'" in str(raised.value)


@pytest.mark.usefixtures("plugin_site")
def test_store_isolation_picks_the_copy(tt: Turnout, tmp_path: Path, wheelhouse: Path) -> None:
    """echo@1.0.0 both beside turnout and in the store: inline runs the one, process the other."""
    store_copy = build_wheel(
        tmp_path / "w",
        "turnout-echo",
        "1.0.0",
        {"turnout_echo.py": (FIXTURES / "echo.py").read_text().replace("@VERSION@", "store-copy")},
        entry_points={"turnout.releasers": {"echo": "turnout_echo"}},
        requires=["pluggy>=1.5"],
    )
    tt.install_plugin(_request(store_copy, wheelhouse))
    tt.set_target("in-process", "echo@1.0.0", isolation="inline")
    tt.set_target("in-worker", "echo@1.0.0")
    inline = tt.release("in-process", "a.tgz", key="k")
    worker = tt.release("in-worker", "a.tgz", key="k")
    assert inline.result is not None
    assert worker.result is not None
    assert inline.result["version"] == "1.0.0"
    assert worker.result["version"] == "store-copy"


def test_store_inline_isolation_refuses_a_store_only_plugin(tt: Turnout, wheelhouse: Path) -> None:
    tt.install_plugin(_request(_echo_wheel(wheelhouse, "2.0.0"), wheelhouse))
    with pytest.raises(PluginNotInstalledError, match="use --isolation process"):
        tt.set_target("site", "echo@2.0.0", isolation="inline")


def test_store_worker_stays_warm_and_restarts_after_dying(tt: Turnout, wheelhouse: Path) -> None:
    tt.install_plugin(_request(_echo_wheel(wheelhouse, "2.0.0"), wheelhouse))
    tt.set_target("site", "echo@2.0.0")
    tt.release("site", "a.tgz", key="k1")
    (releaser,) = tt._releasers.values()
    assert isinstance(releaser, WorkerReleaser)
    (pid,) = releaser.pids()
    tt.release("site", "a.tgz", key="k2")
    assert releaser.pids() == [pid]  # warm: the same process served both
    os.kill(pid, signal.SIGKILL)
    wait_until_gone(pid)
    assert tt.release("site", "a.tgz", key="k3").status is Status.SUCCEEDED
    (fresh,) = releaser.pids()
    assert fresh != pid


@pytest.mark.usefixtures("plugin_site")
def test_store_workers_idle_too_long_are_stopped_without_another_call(
    tt: Turnout, wheelhouse: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A version nobody calls any more (a rollback moved its targets), in a job runner that has
    # gone quiet, does not keep a process meanwhile: it is stopped once it has waited its
    # limit, while the version still called keeps its warm worker.
    monkeypatch.setenv("TURNOUT_WORKER_IDLE_SECONDS", "1")
    tt.install_plugin(_request(_echo_wheel(wheelhouse, "2.0.0"), wheelhouse))
    tt.set_target("old", "echo@1.0.0")  # turnout's own environment, in a worker process
    tt.set_target("new", "echo@2.0.0")
    with caplog.at_level(logging.INFO, logger="turnout.worker"):
        tt.release("old", "a.tgz", key="k1")
        (old,) = [r for r in tt._releasers.values() if str(r.spec.ref) == "echo@1.0.0"]
        assert isinstance(old, WorkerReleaser)
        (pid,) = old.pids()
        tt.release("old", "a.tgz", key="k2")
        assert old.pids() == [pid]  # called within the second: still warm
        tt.release("new", "a.tgz", key="k1")
        (new,) = [r for r in tt._releasers.values() if str(r.spec.ref) == "echo@2.0.0"]
        (new_pid,) = new.pids()
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            time.sleep(0.25)  # keep the new version warm: a call at least every 0.25 s
            tt.release("new", "a.tgz", key=f"k{deadline - time.monotonic():.3f}")
            if not old.pids():
                break
        assert old.pids() == []
        wait_until_gone(pid)
        assert new.pids() == [new_pid]
        said = "stopped 1 idle worker(s) of echo@1.0.0 (1 s without a call)"
        deadline = time.monotonic() + 5  # logged once the worker's exit has been waited for
        while said not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.01)
        assert said in caplog.text
    assert tt.release("old", "a.tgz", key="k3").status is Status.SUCCEEDED  # a fresh one
    assert old.pids() != [pid]

    # No call at all, in either version: both are stopped.
    (old_pid,), (new_pid,) = old.pids(), new.pids()
    for gone in (old_pid, new_pid):
        wait_until_gone(gone, timeout=5)
    assert old.pids() == new.pids() == []


@pytest.mark.usefixtures("plugin_site")
def test_store_worker_settings_that_are_not_numbers_are_refused_before_the_claim(
    tt: Turnout, db_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch, calls_file: Path
) -> None:
    tt.set_target("site", "echo@1.0.0", config={"calls": str(calls_file)})
    monkeypatch.setenv("TURNOUT_WORKER_IDLE_SECONDS", "soon")
    with Turnout(str(db_path), home=home) as fresh, pytest.raises(ConfigurationError) as raised:
        fresh.release("site", "a.tgz", key="k1")
    assert "TURNOUT_WORKER_IDLE_SECONDS must be a number of seconds above 0, not 'soon'" in str(
        raised.value
    )
    assert raised.value.exit_code == 78
    assert tt.ledger.recent() == []
    assert read_calls(calls_file) == []


def wait_until_gone(pid: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().split(") ")[-1].startswith("Z"):
                return  # dead, not yet reaped by its parent (this process)
        except FileNotFoundError:
            return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} still runs after {timeout} s")


def test_store_version_whose_distribution_no_longer_declares_the_entry_point_is_refused(
    tt: Turnout, db_path: Path, home: Path, wheelhouse: Path, calls_file: Path
) -> None:
    # B3: the environment still holds turnout-echo 2.0.0, but its metadata no longer declares
    # the releaser. The release is refused as a configuration error: no call, nothing
    # recorded, and no other version (turnout's own echo 1.0.0) stands in for it.
    (outcome,) = tt.install_plugin(_request(_echo_wheel(wheelhouse, "2.0.0"), wheelhouse))
    tt.set_target("site", "echo@2.0.0", config={"calls": str(calls_file)})
    tt.close()  # its warm worker has loaded the plugin; the next one loads it again
    info = tt.store.path(outcome.digest) / "turnout_echo-2.0.0.dist-info"
    (info / "entry_points.txt").write_text("[console_scripts]\necho-tool = turnout_echo:main\n")
    with Turnout(str(db_path), home=home) as again:
        with pytest.raises(PluginLoadError) as raised:
            again.release("site", "a.tgz", key="k1")
        assert again.ledger.recent() == []
    assert raised.value.exit_code == 78
    assert "echo@2.0.0" in str(raised.value)
    assert "turnout.releasers" in str(raised.value)
    assert read_calls(calls_file) == []


def test_store_threads_releasing_one_version_at_once_run_at_once(
    tt: Turnout, wheelhouse: Path, calls_file: Path
) -> None:
    # C5: two targets on one version, released from two threads: each call gets a worker of
    # its own, so the second starts while the first is still running (6 s each).
    tt.install_plugin(_request(_echo_wheel(wheelhouse, "2.0.0"), wheelhouse))
    config = {"calls": str(calls_file), "sleep": 6, "note_pid": True}
    for name in ("one", "two"):
        tt.set_target(name, "echo@2.0.0", config=config)
    threads = [
        threading.Thread(target=tt.release, args=(name, "a.tgz"), kwargs={"key": "k1"})
        for name in ("one", "two")
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 5
    while len(read_calls(calls_file)) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    both_running = len(read_calls(calls_file)) == 2 and all(t.is_alive() for t in threads)
    for thread in threads:
        thread.join(timeout=60)
    assert both_running, "the second call waited for the first"
    calls = read_calls(calls_file)
    assert sorted(str(call["target"]) for call in calls) == ["one", "two"]
    assert len({call["pid"] for call in calls}) == 2  # a worker each
    assert [r.status for r in tt.ledger.recent()] == [Status.SUCCEEDED] * 2
    (releaser,) = tt._releasers.values()
    assert isinstance(releaser, WorkerReleaser)
    assert len(releaser.pids()) == 2  # both stay warm


def test_store_plugin_list_marks_versions_missing_on_this_machine(
    db_path: Path, home: Path, wheelhouse: Path
) -> None:
    from click.testing import CliRunner

    from turnout.cli import cli

    with Turnout(str(db_path), home=home) as handle:
        (v2,) = handle.install_plugin(_request(_echo_wheel(wheelhouse, "2.0.0"), wheelhouse))
    shutil.rmtree(home / "envs" / v2.digest)
    result = CliRunner().invoke(cli, ["--db", str(db_path), "plugin", "list", "--json"])
    rows = [r for r in json.loads(result.stdout) if r["source"] == "store"]
    assert [(r["plugin"], r["version"], r["status"]) for r in rows] == [
        ("echo", "2.0.0", "missing")
    ]
