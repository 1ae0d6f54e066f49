"""turnout plugin sync: a second machine installs what the registry references, as recorded.

Machine A installs echo 1.0.0 and 2.0.0 (and plain 0.1.0, which nothing references) into its
store and points a target at 1.0.0 and a route at 2.0.0; machine B shares the registry but
starts with an empty store (another TURNOUT_HOME). Real wheels, real installs, offline.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from turnout import Status, Turnout
from turnout.cli import cli
from turnout.refs import PluginRef
from turnout.runtime import _sync_request
from turnout.store import InstallRequest


@dataclass
class Fleet:
    db: Path
    home_a: Path
    home_b: Path
    wheelhouse: Path
    digests: dict[str, str]

    def sync(self, *args: str, home: Path | None = None) -> Result:
        env = {"TURNOUT_HOME": str(home or self.home_b)}
        return CliRunner().invoke(
            cli, ["--db", str(self.db), "plugin", "sync", *args], env=env, catch_exceptions=False
        )


def _install(tt: Turnout, spec: str, wheelhouse: Path) -> str:
    request = InstallRequest(spec=spec, find_links=[str(wheelhouse)], no_index=True)
    (outcome,) = tt.install_plugin(request)
    return outcome.digest


@pytest.fixture
def fleet(db_path: Path, tmp_path: Path, wheelhouse: Path) -> Fleet:
    home_a, home_b = tmp_path / "machine-a", tmp_path / "machine-b"
    with Turnout(str(db_path), home=home_a) as a:
        digests = {
            "echo@1.0.0": _install(a, "turnout-echo==1.0.0", wheelhouse),
            "echo@2.0.0": _install(a, "turnout-echo==2.0.0", wheelhouse),
            "plain@0.1.0": _install(a, "turnout-plain==0.1.0", wheelhouse),
        }
        a.set_target("site", "echo@1.0.0")
        a.add_route("site", "customer", "acme", "echo@2.0.0")
    return Fleet(db_path, home_a, home_b, wheelhouse, digests)


def _rows(result: Result) -> dict[str, dict[str, object]]:
    return {f"{r['plugin']}@{r['version']}": r for r in json.loads(result.stdout)}


def _envs(home: Path) -> set[str]:
    envs = home / "envs"
    return {p.name for p in envs.iterdir()} if envs.is_dir() else set()


@pytest.mark.slow
def test_sync_converges_a_second_machine_on_the_registry(fleet: Fleet) -> None:
    check = fleet.sync("--check", "--json")
    assert check.exit_code == 75, check.stderr
    rows = _rows(check)
    assert set(rows) == {"echo@1.0.0", "echo@2.0.0"}  # plain@0.1.0 is referenced by nothing
    assert {r["status"] for r in rows.values()} == {"missing"}
    assert rows["echo@1.0.0"]["targets"] == ["site"]
    assert _envs(fleet.home_b) == set()  # a check installs nothing

    synced = fleet.sync("--find-links", str(fleet.wheelhouse), "--json")
    assert synced.exit_code == 0, synced.stderr
    rows = _rows(synced)
    assert {ref: r["status"] for ref, r in rows.items()} == {
        "echo@1.0.0": "installed",
        "echo@2.0.0": "installed",
    }
    assert rows["echo@2.0.0"]["digest"] == fleet.digests["echo@2.0.0"]
    assert rows["echo@1.0.0"]["requirement"] == "turnout-echo==1.0.0"
    # The very environments machine A recorded, and not the unreferenced one.
    assert _envs(fleet.home_b) == {fleet.digests["echo@1.0.0"], fleet.digests["echo@2.0.0"]}
    assert list((fleet.home_b / "tmp").iterdir()) == []

    with Turnout(str(fleet.db), home=fleet.home_b) as b:
        default = b.release("site", "a.tgz", key="k1")
        routed = b.release("site", "a.tgz", key="k2", context={"customer": "acme"})
        assert b.verify_plugins("echo@1.0.0") == {"echo@1.0.0": []}
    assert default.status is Status.SUCCEEDED
    assert routed.status is Status.SUCCEEDED
    assert default.result is not None
    assert default.result["version"] == "1.0.0"
    assert routed.result is not None
    assert routed.result["version"] == "2.0.0"

    again = fleet.sync("--find-links", str(fleet.wheelhouse))
    assert again.exit_code == 0, again.stderr
    assert "nothing to install" in again.stderr
    assert "present" in again.stdout
    assert fleet.sync("--check").exit_code == 0
    assert fleet.sync("--json").exit_code == 0  # nothing to install: no index needed


@pytest.mark.slow
def test_sync_refuses_a_tampered_wheel_and_leaves_nothing(fleet: Fleet, tmp_path: Path) -> None:
    house = tmp_path / "tampered-house"
    shutil.copytree(fleet.wheelhouse, house)
    wheel = next(house.glob("turnout_echo-1.0.0-*.whl"))
    data = bytearray(wheel.read_bytes())
    data[len(data) // 2] ^= 0x01  # one byte changed
    wheel.write_bytes(bytes(data))

    result = fleet.sync("--find-links", str(house), "--json")
    assert result.exit_code == 1
    rows = _rows(result)
    assert rows["echo@1.0.0"]["status"] == "failed"  # the installer's archive check (CRC)
    assert "nothing was installed" in str(rows["echo@1.0.0"]["detail"])
    assert rows["echo@2.0.0"]["status"] == "installed"  # the intact one still converges
    assert _envs(fleet.home_b) == {fleet.digests["echo@2.0.0"]}
    assert list((fleet.home_b / "tmp").iterdir()) == []
    assert fleet.sync("--check").exit_code == 75


@pytest.mark.slow
def test_sync_refuses_other_files_than_recorded(fleet: Fleet, tmp_path: Path) -> None:
    # A well-formed wheel of the same name and version whose module differs by one byte: it
    # installs fine, but gives another environment than the recorded one, and is removed.
    house = tmp_path / "rebuilt-house"
    shutil.copytree(fleet.wheelhouse, house)
    wheel = next(house.glob("turnout_echo-1.0.0-*.whl"))
    with zipfile.ZipFile(wheel) as original:
        members = {info.filename: original.read(info) for info in original.infolist()}
    code = members["turnout_echo.py"]
    members["turnout_echo.py"] = code[:-1] + (b" " if code[-1:] != b" " else b"\t")
    with zipfile.ZipFile(wheel, "w") as rebuilt:
        for name, content in members.items():
            rebuilt.writestr(name, content)

    result = fleet.sync("--find-links", str(house), "--json")
    assert result.exit_code == 1
    row = _rows(result)["echo@1.0.0"]
    assert row["status"] == "mismatch"  # turnout's check: not the recorded file hashes
    assert fleet.digests["echo@1.0.0"] in str(row["detail"])
    assert "1 file(s) differ" in str(row["detail"])
    assert fleet.digests["echo@1.0.0"] not in _envs(fleet.home_b)
    assert _envs(fleet.home_b) == {fleet.digests["echo@2.0.0"]}
    with Turnout(str(fleet.db), home=fleet.home_b) as b:
        stored = b.registry.find_plugin_version(PluginRef.parse("echo@1.0.0"), "store")
    assert stored is not None
    assert stored.location == fleet.digests["echo@1.0.0"]


def test_sync_reports_unknown_and_environment_versions(db_path: Path, home: Path) -> None:
    with Turnout(str(db_path), home=home) as tt:
        tt.registry.record_plugin_version(
            PluginRef.parse("local@1.0.0"),
            source="environment",
            distribution="turnout-local",
            entry_point="turnout_local",
            location="/site-packages",
        )
        # Targets written straight to the registry: no machine here has these versions.
        tt.registry.set_target("own", PluginRef.parse("local@1.0.0"), actor="t", reason="t")
        tt.registry.set_target("ghost", PluginRef.parse("nosuch@3.0.0"), actor="t", reason="t")
        results = {str(r.ref): r for r in tt.sync_plugins()}
    assert results["local@1.0.0"].status == "environment"
    assert "pip install 'turnout-local==1.0.0'" in str(results["local@1.0.0"].detail)
    assert results["nosuch@3.0.0"].status == "unknown"
    assert "turnout plugin install" in str(results["nosuch@3.0.0"].detail)
    result = CliRunner().invoke(cli, ["--db", str(db_path), "plugin", "sync"])
    assert result.exit_code == 78
    assert "unknown" in result.stdout


def test_sync_with_nothing_referenced_says_so(db_path: Path, home: Path) -> None:
    result = CliRunner().invoke(cli, ["--db", str(db_path), "plugin", "sync", "--check"])
    assert result.exit_code == 0
    assert "nothing to sync" in result.stderr


def test_sync_request_repeats_the_recorded_requirement(tmp_path: Path) -> None:
    request = _sync_request("turnout-echo==1.0.0", ["/wheels"], None)
    assert (request.spec, request.no_index, request.find_links) == (
        "turnout-echo==1.0.0",
        True,
        ("/wheels",),
    )
    assert _sync_request("turnout-echo==1.0.0", ["/w"], "https://idx/simple").no_index is False
    # A wheel recorded by a path this machine lacks is looked up by name and version.
    gone = _sync_request("/elsewhere/turnout_echo-2.0.0-py3-none-any.whl", [], None)
    assert gone.spec == "turnout-echo==2.0.0"
    lock = tmp_path / "lock.txt"
    lock.write_text("turnout-echo==1.0.0 --hash=sha256:00\n")
    locked = _sync_request(f"-r {lock}", [], None)
    assert (locked.spec, locked.requirements, locked.require_hashes) == (None, lock, True)


def test_sync_installs_a_version_installed_from_a_relative_path_from_any_folder(
    db_path: Path, tmp_path: Path, wheelhouse: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "turnout plugin install ./dist/x.whl" records where the wheel is, not "./dist/x.whl":
    # machine B syncs from its own folder (and a tool's cwd is rarely the installer's).
    wheel = next(wheelhouse.glob("turnout_plain-0.1.0-*.whl"))
    monkeypatch.chdir(wheelhouse.parent)
    relative = f"./{wheelhouse.name}/{wheel.name}"
    with Turnout(str(db_path), home=tmp_path / "machine-a") as a:
        request = InstallRequest(spec=relative, find_links=[wheelhouse.name], no_index=True)
        (outcome,) = a.install_plugin(request)
        a.set_target("site", "plain@0.1.0")
        (row,) = a.registry.plugin_versions("store")
    assert row.requirement == str(wheel)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    fleet = Fleet(db_path, tmp_path / "machine-a", tmp_path / "machine-b", wheelhouse, {})
    synced = fleet.sync("--find-links", str(wheelhouse), "--json")
    assert synced.exit_code == 0, synced.stderr
    assert _rows(synced)["plain@0.1.0"]["status"] == "installed"
    assert _envs(fleet.home_b) == {outcome.digest}


def test_sync_that_fails_does_not_say_everything_is_here(
    db_path: Path, tmp_path: Path, wheelhouse: Path
) -> None:
    with Turnout(str(db_path), home=tmp_path / "machine-a") as a:
        _install(a, "turnout-plain==0.1.0", wheelhouse)
        a.set_target("site", "plain@0.1.0")
    fleet = Fleet(db_path, tmp_path / "machine-a", tmp_path / "machine-b", wheelhouse, {})
    failed = fleet.sync("--find-links", str(tmp_path / "no-such-wheelhouse"))  # nothing to find
    assert failed.exit_code == 1, failed.stderr
    assert "failed" in failed.stdout
    assert "nothing to install" not in failed.stderr + failed.stdout
