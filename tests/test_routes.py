"""Routes end to end: edits, resolve, refusals, preflight, dry-run plans, the routing snapshot.

Everything is real: turnout-echo 1.0.0 and 2.0.0 are wheels installed into a fresh store and
run in worker processes, the registry is a SQLite file or (``registry_url``) a PostgreSQL
database, and the CLI runs through click's runner in this process. The echo plugin writes the
version that served each call into its calls file, which is how a test knows what really ran.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result
from helpers import read_calls

from turnout.cli import cli
from turnout.errors import ConfigRejectedError, UsageError
from turnout.models import Release, TargetRevision, utcnow
from turnout.refs import PluginRef
from turnout.registry import Registry, changes
from turnout.releases import PLUGIN_KEY_MARK
from turnout.routing import bucket
from turnout.runtime import ACTOR_ENV, Turnout
from turnout.store import InstallRequest
from turnout.worker import WorkerReleaser

V1, V2 = "echo@1.0.0", "echo@2.0.0"


def _versions(calls: Path) -> dict[str, str]:
    """The version the plugin itself says served each key (the caller's key: the plugin is
    called with it and, for a release with a customer, the customer's digest after a mark)."""
    return {
        str(call["key"]).partition(PLUGIN_KEY_MARK)[0]: str(call["version"])
        for call in read_calls(calls)
    }


class World:
    """One test's registry, store and target ``web`` (default echo@1.0.0, revision 1).

    ``handle`` is a long-lived :class:`Turnout` (warm workers); :meth:`run` is the CLI, a new
    handle per command, as a person or a job runner would use it.
    """

    def __init__(self, url: str, home: Path, wheelhouse: Path, calls: Path) -> None:
        self.url = url
        self.home = home
        self.calls = calls
        self.runner = CliRunner()
        self.handle = Turnout(url, home=home)
        for version in ("1.0.0", "2.0.0"):
            wheel = next(wheelhouse.glob(f"turnout_echo-{version}-*.whl"))
            self.handle.install_plugin(
                InstallRequest(spec=str(wheel), find_links=[str(wheelhouse)], no_index=True)
            )
        self.handle.set_target(
            "web", V1, config={"calls": str(calls)}, actor="setup", reason="create web"
        )

    def run(self, *args: str, env: dict[str, str | None] | None = None) -> Result:
        return self.runner.invoke(cli, ["--db", self.url, *args], env=env, catch_exceptions=False)

    def ok(self, *args: str, env: dict[str, str | None] | None = None) -> Any:
        """Run a command that must succeed; its JSON output, if it printed any."""
        result = self.run(*args, env=env)
        assert result.exit_code == 0, result.stderr
        return json.loads(result.stdout) if result.stdout.startswith(("{", "[")) else result

    def state(self) -> tuple[Any, Any]:
        """The target and its whole history, as the CLI shows them."""
        return self.ok("target", "show", "web", "--json"), self.ok("history", "web", "--json")

    def versions(self) -> dict[str, str]:
        return _versions(self.calls)

    def revisions(self) -> list[dict[str, Any]]:
        """The stored history rows, every column, read with plain SQL."""
        table = TargetRevision.__table__  # type: ignore[attr-defined]
        query = sa.select(table).where(table.c.target == "web").order_by(table.c.revision)
        with self.handle.registry.engine.connect() as conn:
            return [dict(row) for row in conn.execute(query).mappings()]

    def close(self) -> None:
        self.handle.close()


@pytest.fixture
def world(db_path: Path, home: Path, wheelhouse: Path, calls_file: Path) -> Iterator[World]:
    """A world on a SQLite file."""
    w = World(f"sqlite:///{db_path}", home, wheelhouse, calls_file)
    yield w
    w.close()


@pytest.fixture
def world_db(registry_url: str, home: Path, wheelhouse: Path, calls_file: Path) -> Iterator[World]:
    """A world on each database turnout supports."""
    w = World(registry_url, home, wheelhouse, calls_file)
    yield w
    w.close()


def _moves(data: dict[str, Any]) -> list[dict[str, Any]]:
    return list(data["moves"])


# 1. Edits, revisions, history ------------------------------------------------------------


def test_routes_api_edits_bump_the_revision_and_append_history(world_db: World) -> None:
    tt = world_db.handle
    steps = [
        (lambda: tt.add_route("web", "customer", "acme", V2, actor="alice", reason="acme beta")),
        (lambda: tt.add_route("web", "project", ["p1", "p2"], V2, actor="bob", reason="projects")),
        (lambda: tt.add_route("web", "plan", "free", V2, actor="carol", reason="free tier")),
        (lambda: tt.add_route("web", "channel", ["beta", "edge"], V2, actor="dan", reason="ch")),
        (lambda: tt.split("web", {V2: 10, V1: 90}, key="project", actor="erin", reason="ramp")),
        (lambda: tt.remove_route("web", "r2", actor="fay", reason="by id")),
        (lambda: tt.remove_route("web", selector="channel", value="edge", actor="gus", reason="v")),
        (lambda: tt.remove_route("web", selector=None, actor="hal", reason="drop the split")),
    ]
    expected_changes = [
        {"route.r1": [None, f"customer=acme -> {V2}"]},
        {"route.r2": [None, f"project=p1,p2 -> {V2}"]},
        {"route.r3": [None, f"plan=free -> {V2}"]},
        {"route.r4": [None, f"channel=beta,edge -> {V2}"]},
        {"route.r5": [None, f"everyone -> split by project: {V2} 10%, {V1} 90%"]},
        {"route.r2": [f"project=p1,p2 -> {V2}", None]},
        {"route.r4": [f"channel=beta,edge -> {V2}", None]},
        {"route.r5": [f"everyone -> split by project: {V2} 10%, {V1} 90%", None]},
    ]
    seen = world_db.revisions()
    for number, (step, expected) in enumerate(zip(steps, expected_changes, strict=True), 2):
        change = step()
        assert change.changed
        assert change.before is not None
        assert (change.before.revision, change.target.revision) == (number - 1, number)
        rows = world_db.revisions()
        assert rows[:-1] == seen  # every earlier row, every column, exactly as it was
        assert len(rows) == number
        assert rows[-1]["revision"] == number
        assert changes(rows[-2]["snapshot"], rows[-1]["snapshot"]) == expected
        seen = rows
    actors = [(r["actor"], r["reason"]) for r in seen]
    assert actors == [
        ("setup", "create web"),
        ("alice", "acme beta"),
        ("bob", "projects"),
        ("carol", "free tier"),
        ("dan", "ch"),
        ("erin", "ramp"),
        ("fay", "by id"),
        ("gus", "v"),
        ("hal", "drop the split"),
    ]
    assert [r.id for r in tt.registry.get_target("web").routes] == ["r1", "r3"]
    assert str(tt.resolve("web", {"customer": "acme"}).plugin_ref) == V2
    assert str(tt.resolve("web", {"channel": "beta"}).plugin_ref) == V1  # its route is gone


def test_routes_cli_add_split_list_remove_with_actor_reason_and_diff(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ACTOR_ENV, raising=False)
    added = world.ok(
        "route", "add", "web", "--customer", "acme", "--to", V2,
        "--actor", "alice", "--reason", "acme beta", "--json",
    )  # fmt: skip
    assert (added["revision"], added["changed"], added["dry_run"]) == (2, True, False)
    assert added["routes"] == [
        {
            "id": "r1",
            "match": {"customer": ["acme"]},
            "to": V2,
            "rule": "customer=acme",
            "describe": f"customer=acme -> {V2}",
        }
    ]
    history_after_first = world.ok("history", "web", "--json")

    table = world.run(
        "route", "add", "web", "--project", "p1", "--project", "p2", "--to", V2,
        "--reason", "two projects", env={ACTOR_ENV: "bob"},
    )  # fmt: skip
    assert table.exit_code == 0, table.stderr
    assert "routes changed (revision 3)" in table.stderr
    assert "project=p1,p2" in table.stdout
    assert "target default" in table.stdout
    world.ok("route", "add", "web", "--plan", "free", "--to", V2, "--reason", "free tier")
    world.ok(
        "route", "add", "web", "--channel", "beta", "--channel", "edge", "--to", V2,
        "--actor", "carol",
    )  # fmt: skip
    world.ok(
        "route", "split", "web", "--to", f"{V2}=10", "--to", f"{V1}=90", "--key", "project",
        "--actor", "dan", "--reason", "ramp",
    )  # fmt: skip

    listed = world.ok("route", "list", "web", "--json")
    assert (listed["target"], listed["revision"], listed["default"]) == ("web", 6, V1)
    assert [(r["id"], r["rule"]) for r in listed["routes"]] == [
        ("r1", "customer=acme"),
        ("r2", "project=p1,p2"),
        ("r3", "plan=free"),
        ("r4", "channel=beta,edge"),
        ("r5", "split by project"),
    ]
    split = listed["routes"][4]["split"]
    assert split["key"] == "project"
    assert split["weights"] == [[V2, 10.0], [V1, 90.0]]
    assert split["slices"][0][0] == 0
    assert {ref for _, ref in split["slices"]} == {V1, V2}
    shown = world.run("route", "list", "web")
    assert shown.exit_code == 0
    for text in ("r1", "customer=acme", "r5", "split by project", f"everyone else -> {V1}"):
        assert text in shown.stdout

    world.ok("route", "remove", "web", "r2", "--actor", "erin", "--reason", "by id")
    world.ok("route", "remove", "web", "--channel", "edge", "--actor", "erin", "--reason", "value")
    world.ok("route", "remove", "web", "--split", "--actor", "erin", "--reason", "no split")
    assert [r["id"] for r in world.ok("route", "list", "web", "--json")["routes"]] == ["r1", "r3"]

    history = world.ok("history", "web", "--json")
    assert history[: len(history_after_first)] == history_after_first
    assert [(h["revision"], h["actor"], h["reason"]) for h in history] == [
        (1, "setup", "create web"),
        (2, "alice", "acme beta"),
        (3, "bob", "two projects"),
        (4, getpass.getuser(), "free tier"),
        (5, "carol", ""),
        (6, "dan", "ramp"),
        (7, "erin", "by id"),
        (8, "erin", "value"),
        (9, "erin", "no split"),
    ]
    diffs = [h["changes"] for h in history[1:]]
    assert diffs == [
        {"route.r1": [None, f"customer=acme -> {V2}"]},
        {"route.r2": [None, f"project=p1,p2 -> {V2}"]},
        {"route.r3": [None, f"plan=free -> {V2}"]},
        {"route.r4": [None, f"channel=beta,edge -> {V2}"]},
        {"route.r5": [None, f"everyone -> split by project: {V2} 10%, {V1} 90%"]},
        {"route.r2": [f"project=p1,p2 -> {V2}", None]},
        {"route.r4": [f"channel=beta,edge -> {V2}", None]},
        {"route.r5": [f"everyone -> split by project: {V2} 10%, {V1} 90%", None]},
    ]
    assert [h["target"]["routes"] for h in history[:2]] == [
        [],
        [{"id": "r1", "match": {"customer": ["acme"]}, "to": V2}],
    ]
    assert history[0]["before"] is None
    assert [h["before"] for h in history[1:]] == [h["target"] for h in history[:-1]]
    text = world.run("history", "web")
    assert text.exit_code == 0
    for word in ("alice", "acme beta", "route.r5", "erin", "no split"):
        assert word in text.stdout


def test_routes_the_same_selector_again_repoints_its_route(world: World) -> None:
    world.ok("route", "add", "web", "--customer", "acme", "--to", V2)
    again = world.ok("route", "add", "web", "--customer", "acme", "--to", V1, "--json")
    assert [(r["id"], r["to"]) for r in again["routes"]] == [("r1", V1)]
    assert again["revision"] == 3
    same = world.run("route", "add", "web", "--customer", "acme", "--to", V1)
    assert same.exit_code == 0
    assert "nothing changed" in same.stderr
    assert len(world.ok("history", "web", "--json")) == 3


# 2. resolve and the stored decision -------------------------------------------------------


def _ref_of(bucket_number: int, slices: list[list[Any]]) -> str:
    """The ref of the slice holding ``bucket_number`` (slices: [[start, ref], ...] sorted)."""
    return str([ref for start, ref in slices if start <= bucket_number][-1])


def test_routes_resolve_equals_the_decision_a_release_stores(world_db: World) -> None:
    w = world_db
    w.ok("route", "add", "web", "--customer", "acme", "--to", V2)
    w.ok("route", "add", "web", "--plan", "free", "--to", V2)
    w.ok("route", "split", "web", "--to", f"{V2}=50", "--to", f"{V1}=50")
    split = w.ok("route", "list", "web", "--json")["routes"][2]["split"]
    customer = "c-42"
    number = bucket(customer, split["salt"])
    cases = {
        "pin": (["customer=acme", "plan=free"], V2, "customer=acme", "r1", None, None),
        "rule": (["customer=zed", "plan=free"], V2, "plan=free", "r2", None, None),
        "split": (
            [f"customer={customer}", "plan=pro"],
            _ref_of(number, split["slices"]),
            "split by customer",
            "r3",
            number,
            "customer",
        ),
        "default": (["project=site"], V1, "target default", None, None, None),
    }
    stored = {}
    for name, (context, plugin, rule, route, bucket_number, key) in cases.items():
        flags = [arg for pair in context for arg in ("--context", pair)]
        resolved = w.ok("resolve", "web", *flags, "--json")
        assert resolved == {
            "target": "web",
            "plugin": plugin,
            "rule": rule,
            "route": route,
            "bucket": bucket_number,
            "key": key,
            "revision": 4,
        }, name
        released = w.ok("release", "web", "a.tgz", "--key", f"k-{name}", *flags, "--json")
        assert released["plugin_ref"] == plugin
        shown = w.ok("releases", "show", released["id"], "--json")
        assert shown["decision"] == {k: v for k, v in resolved.items() if k != "target"}, name
        stored[released["id"]] = shown["decision"]
        table = w.run("resolve", "web", *flags)
        assert plugin in table.stdout
        assert rule in table.stdout
    assert w.versions() == {f"k-{n}": c[1].split("@")[1] for n, c in cases.items()}

    # Later routing changes answer differently now, and never touch what was stored.
    w.ok("route", "remove", "web", "r1")
    w.ok("route", "split", "web", "--to", f"{V2}=0", "--to", f"{V1}=100")
    w.ok("target", "set", "web", V2)
    assert w.ok("resolve", "web", "--context", "customer=acme", "--json")["rule"] == (
        "split by customer"
    )
    assert w.ok("resolve", "web", "--context", "project=site", "--json")["plugin"] == V2
    for release_id, decision in stored.items():
        assert w.ok("releases", "show", release_id, "--json")["decision"] == decision


# 3. Refusals ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (["route", "add", "web", "--customer", "x", "--plan", "free", "--to", V2], 2, "one attr"),
        (["route", "add", "web", "--customer", "", "--to", V2], 2, "invalid customer ''"),
        (["route", "add", "web", "--project", "a\x07b", "--to", V2], 2, "invalid project"),
        (["route", "add", "web", "--plan", "free\n", "--to", V2], 2, "invalid plan"),
        (["route", "add", "web", "--channel", " beta", "--to", V2], 2, "invalid channel"),
        (["route", "add", "web", "--to", V2], 2, "say what the route selects"),
        (
            ["route", "add", "web", "--customer", "beta", "--customer", "acme", "--to", V1],
            2,
            "customer acme is already routed by r1",
        ),
        (["route", "split", "web", "--to", f"{V2}=10", "--to", f"{V1}=80"], 2, "add up to 90"),
        (["route", "split", "web", "--to", f"{V2}=100"], 2, "at least two refs"),
        (["route", "split", "web", "--to", f"{V2}=ten", "--to", f"{V1}=90"], 2, "WEIGHT"),
        (["route", "add", "web", "--customer", "zed", "--to", "echo@9.9.9"], 78, "not installed"),
        (
            ["route", "split", "web", "--to", "echo@9.9.9=10", "--to", f"{V1}=90"],
            78,
            "echo@9.9.9 is not installed",
        ),
        (["route", "add", "web", "--customer", "zed", "--to", "echo@>=2"], 2, "ranges"),
        (
            ["route", "add", "web", "--customer", "zed", "--to", V2, "--expect-revision", "1"],
            75,
            "revision",
        ),
        (["target", "set", "web", V2, "--expect-revision", "1"], 75, "revision"),
        (["rollback", "web", "--to-revision", "1", "--expect-revision", "1"], 75, "revision"),
        (["route", "remove", "web", "r9"], 2, "no route 'r9'"),
        (["route", "remove", "web", "--customer", "nobody"], 2, "route for customer 'nobody'"),
        (["route", "remove", "web", "--split"], 2, "split on everyone"),
        (["route", "remove", "web", "r1", "--customer", "acme"], 2, "name one route"),
        (["route", "add", "nowhere", "--customer", "x", "--to", V2], 78, "unknown target"),
    ],
)
def test_routes_refusals_leave_the_target_and_history_unchanged(
    world: World, args: list[str], code: int, fragment: str
) -> None:
    world.ok("route", "add", "web", "--customer", "acme", "--to", V2)
    before = world.state()
    rows = world.revisions()
    result = world.run(*args)
    assert result.exit_code == code, result.stderr
    assert fragment in result.stderr
    assert "Traceback" not in result.stderr
    assert world.state() == before
    assert world.revisions() == rows


def test_routes_api_refusals_raise_and_write_nothing(world_db: World) -> None:
    tt = world_db.handle
    tt.add_route("web", "customer", ["acme", "beta"], V2, actor="a", reason="r")
    rows = world_db.revisions()
    with pytest.raises(UsageError, match="already routed by r1"):
        tt.add_route("web", "customer", "beta", V1, actor="a", reason="r")
    with pytest.raises(UsageError, match="add up to 110"):
        tt.split("web", {V2: 20, V1: 90}, actor="a", reason="r")
    with pytest.raises(UsageError, match="invalid customer"):
        tt.add_route("web", "customer", ["ok", "tab\there"], V2, actor="a", reason="r")
    with pytest.raises(UsageError, match="no route 'r7'"):
        tt.remove_route("web", "r7", actor="a", reason="r")
    assert world_db.revisions() == rows


def test_routes_cli_rollback_is_refused_when_the_target_moved_meanwhile(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another edit lands between rollback's read of the history and its write: exit 75.

    The other edit is made through a second handle right after the rollback read the history,
    which makes deterministic the moment a concurrent operator could slip in.
    """
    world.ok("route", "add", "web", "--customer", "acme", "--to", V2)
    real = Registry.target_history
    landed: list[int] = []

    def history_then_another_edit(self: Registry, name: str) -> Any:
        rows = real(self, name)
        if not landed:
            with Turnout(world.url, home=world.home) as other:
                change = other.add_route("web", "plan", "free", V2, actor="eve", reason="meanwhile")
                landed.append(change.target.revision)
        return rows

    monkeypatch.setattr(Registry, "target_history", history_then_another_edit)
    result = world.run("rollback", "web", "--to-revision", "1")
    monkeypatch.undo()
    assert landed == [3]
    assert result.exit_code == 75, result.stderr
    assert "revision" in result.stderr
    shown, history = world.state()
    assert shown["revision"] == 3
    assert [r["rule"] for r in shown["routes"]] == ["customer=acme", "plan=free"]
    assert [h["actor"] for h in history][-1] == "eve"


# 4. Preflight ---------------------------------------------------------------------------


def test_routes_preflight_refuses_a_version_that_rejects_the_config(world: World) -> None:
    """2.0.0 lives only in the store: its own code, in its worker, refuses the config."""
    world.ok("target", "set", "web", V1, "--config", 'reject_versions=["2.0.0"]')
    before, rows = world.state(), world.revisions()
    refusals = [
        ["route", "add", "web", "--customer", "acme", "--to", V2],
        ["route", "add", "web", "--plan", "free", "--plan", "trial", "--to", V2, "--dry-run"],
        ["route", "split", "web", "--to", f"{V2}=10", "--to", f"{V1}=90"],
        ["plan", "route", "split", "web", "--to", f"{V2}=5", "--to", f"{V1}=95"],
    ]
    for args in refusals:
        result = world.run(*args)
        assert result.exit_code == 78, (args, result.stderr)
        assert "echo@2.0.0 rejected the config: echo 2.0.0: config 'reject_versions'" in (
            result.stderr
        )
        assert world.state() == before
        assert world.revisions() == rows
    # The same edit to the version the config accepts goes through.
    world.ok("route", "add", "web", "--customer", "acme", "--to", V1)

    tt = world.handle
    with pytest.raises(ConfigRejectedError) as refused:
        tt.add_route("web", "customer", "beta", V2, actor="a", reason="r")
    assert refused.value.plugin_ref == V2
    releaser = tt._releasers[(PluginRef.parse(V2), "process")]
    assert isinstance(releaser, WorkerReleaser)
    stored = tt.registry.find_plugin_version(PluginRef.parse(V2), "store")
    assert stored is not None
    assert releaser.spec.path == (str(world.home / "envs" / stored.location),)


def test_routes_target_set_checks_a_new_config_with_every_routed_version(world: World) -> None:
    world.ok("route", "split", "web", "--to", f"{V2}=10", "--to", f"{V1}=90")
    calls = f"calls={world.calls}"
    before, rows = world.state(), world.revisions()
    for rejected in ("2.0.0", "1.0.0"):
        result = world.run(
            "target", "set", "web", V1, "--config", calls,
            "--config", f'reject_versions=["{rejected}"]',
        )  # fmt: skip
        assert result.exit_code == 78, result.stderr
        assert f"echo@{rejected} rejected the config" in result.stderr
        assert world.state() == before
        assert world.revisions() == rows
    accepted = world.ok(
        "target", "set", "web", V1, "--config", calls, "--config", 'reject_versions=["3.0.0"]',
        "--json",
    )  # fmt: skip
    assert accepted["revision"] == 3
    assert accepted["config"]["reject_versions"] == ["3.0.0"]
    assert [r["id"] for r in accepted["routes"]] == ["r1"]  # target set keeps the routes


# 5. Dry runs and plans ------------------------------------------------------------------


def _backdate(world: World, release_id: str, age: timedelta) -> None:
    table = Release.__table__  # type: ignore[attr-defined]
    with world.handle.registry.engine.begin() as conn:
        conn.execute(
            table.update().where(table.c.id == release_id).values(started_at=utcnow() - age)
        )


def _release(world: World, key: str, **context: str) -> str:
    return world.handle.release("web", "a.tgz", key=key, context=context).id


def test_routes_plan_names_who_moves_within_the_history_window(world_db: World) -> None:
    w = world_db
    _release(w, "acme", customer="acme", plan="pro", project="acme-site")
    _release(w, "bob", customer="bob", plan="free", project="bob-blog")
    _release(w, "cat", customer="cat", plan="free", project="cat-shop")
    _release(w, "nop", plan="free", project="anon-page")  # no customer, one project
    _backdate(w, _release(w, "old", customer="old", plan="free", project="old-site"), timedelta(2))
    _backdate(w, _release(w, "gone", customer="gone", plan="free"), timedelta(days=40))
    before, rows = w.state(), w.revisions()
    change = ["route", "add", "web", "--plan", "free", "--to", V2]

    dry = w.ok(*change, "--dry-run", "--json")
    assert (dry["dry_run"], dry["changed"], dry["revision"]) == (True, True, 2)
    assert [r["rule"] for r in dry["routes"]] == ["plan=free"]
    assert _moves(dry) == [
        {
            "from": V1,
            "to": V2,
            "contexts": 4,
            "customers": ["bob", "cat", "old"],
            "projects": ["anon-page", "bob-blog", "cat-shop", "old-site"],
        }
    ]
    recent = {
        "from": V1,
        "to": V2,
        "contexts": 3,
        "customers": ["bob", "cat"],
        "projects": ["anon-page", "bob-blog", "cat-shop"],
    }
    assert _moves(w.ok(*change, "--dry-run", "--history", "1h", "--json")) == [recent]
    planned = w.ok("plan", *change, "--history", "1h", "--json")
    assert _moves(planned) == [recent]
    assert planned == w.ok(*change, "--dry-run", "--history", "1h", "--json")

    table = w.run("plan", *change, "--history", "1h")
    assert table.exit_code == 0, table.stderr
    assert "would become revision 2" in table.stderr
    assert "nothing was written" in table.stderr
    line = next(ln for ln in table.stdout.splitlines() if "bob" in ln)
    for cell in (V1, V2, "3", "bob, cat", "anon-page, bob-blog, cat-shop"):
        assert cell in line
    assert "old" not in table.stdout
    assert "acme" not in table.stdout
    assert w.state() == before
    assert w.revisions() == rows
    nobody = w.run("route", "add", "web", "--plan", "enterprise", "--to", V2, "--dry-run")
    assert "nobody seen in the release history" in nobody.stderr
    assert w.state() == before


def test_routes_target_remove_dry_run_names_who_would_lose_the_target(world: World) -> None:
    w = world
    _release(w, "acme", customer="acme", project="acme-site")
    _release(w, "bob", customer="bob", plan="free")
    w.ok("route", "add", "web", "--customer", "acme", "--to", V2)
    before, rows = w.state(), w.revisions()

    dry = w.ok("plan", "target", "remove", "web", "--json")
    assert (dry["dry_run"], dry["removed"]["revision"]) == (True, 2)
    assert sorted(_moves(dry), key=lambda m: m["from"]) == [
        {"from": V1, "to": None, "contexts": 1, "customers": ["bob"], "projects": []},
        {"from": V2, "to": None, "contexts": 1, "customers": ["acme"], "projects": ["acme-site"]},
    ]
    table = w.run("target", "remove", "web", "--dry-run")
    assert table.exit_code == 0, table.stderr
    assert "would be removed" in table.stderr
    assert "(none)" in table.stdout
    assert w.state() == before
    assert w.revisions() == rows

    stale = w.run("target", "remove", "web", "--expect-revision", "1")
    assert stale.exit_code == 75, stale.stderr
    assert w.state() == before
    w.ok("target", "remove", "web", "--expect-revision", "2", "--reason", "retired")
    assert w.run("target", "show", "web").exit_code == 78
    assert [r["snapshot"] for r in w.revisions()][-1] is None


def _resolve_all(tt: Turnout, contexts: list[dict[str, str]]) -> list[str]:
    return [str(tt.resolve("web", context).plugin_ref) for context in contexts]


def _observed_moves(
    contexts: list[dict[str, str]], old: list[str], new: list[str]
) -> list[tuple[str, str, int, list[str], list[str]]]:
    moved: dict[tuple[str, str], list[dict[str, str]]] = {}
    for context, a, b in zip(contexts, old, new, strict=True):
        if a != b:
            moved.setdefault((a, b), []).append(context)
    return sorted(
        (
            a,
            b,
            len(group),
            sorted({c["customer"] for c in group if "customer" in c}),
            sorted({c["project"] for c in group if "project" in c}),
        )
        for (a, b), group in moved.items()
    )


def test_routes_every_dry_run_predicts_exactly_what_the_change_then_does(world: World) -> None:
    """route add, split, remove, target set, rollback: the plan is the change, who and where."""
    plans = ("free", "pro", "enterprise")
    contexts: list[dict[str, str]] = [
        {"customer": f"c{i:02}", "plan": plans[i % 3], "project": f"p{i % 7}"} for i in range(60)
    ]
    for context in contexts[4::5]:
        del context["customer"]  # not split: these fall through to the default
    for i, context in enumerate(contexts):
        _release(world, f"h{i}", **context)
    commands = [
        ["route", "add", "web", "--plan", "free", "--to", V2],
        ["route", "split", "web", "--to", f"{V2}=50", "--to", f"{V1}=50"],
        ["route", "split", "web", "--to", f"{V2}=80", "--to", f"{V1}=20"],
        ["route", "add", "web", "--project", "p3", "--to", V1],
        ["route", "remove", "web", "--plan", "free"],
        ["target", "set", "web", V2],
        ["route", "remove", "web", "--split"],
        ["rollback", "web", "--to-revision", "3"],
    ]
    for command in commands:
        before, rows = world.state(), world.revisions()
        old = _resolve_all(world.handle, contexts)
        dry = world.ok(*command, "--dry-run", "--json")
        planned = world.ok("plan", *command, "--json")
        table = world.ok("plan", *command)
        assert world.state() == before, command
        assert world.revisions() == rows, command
        assert _moves(planned) == _moves(dry), command
        assert dry["revision"] == before[0]["revision"] + 1
        done = world.ok(*command, "--json")
        assert done["revision"] == dry["revision"]
        assert done["routes"] == dry["routes"], command  # the very routes, salts included
        new = _resolve_all(world.handle, contexts)
        predicted = sorted(
            (m["from"], m["to"], m["contexts"], m["customers"], m["projects"]) for m in _moves(dry)
        )
        assert predicted == _observed_moves(contexts, old, new), command
        assert predicted, command  # every step here moves somebody
        lines = table.stdout.splitlines()
        for move in _moves(dry):
            cells = (move["from"], move["to"], str(move["contexts"]))
            cells += (", ".join(move["customers"][:10]), ", ".join(move["projects"][:10]))
            assert any(all(cell in line for cell in cells) for line in lines), (command, move)


# 6. The routing snapshot ----------------------------------------------------------------


def _turnout_script() -> str:
    return shutil.which("turnout", path=str(Path(sys.executable).parent)) or "turnout"


def test_routes_snapshot_follows_another_handles_change_with_one_read(
    world_db: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = world_db
    a = w.handle
    first = a.release("web", "a.tgz", key="k1", context={"customer": "acme"})
    assert first.plugin_ref == V1
    assert first.decision is not None
    assert first.decision["revision"] == 1

    real = a.registry.get_target
    reads: list[str] = []

    def forbidden(name: str) -> Any:
        raise AssertionError(f"a release read target {name!r} from the registry")

    def counted(name: str) -> Any:
        reads.append(name)
        return real(name)

    monkeypatch.setattr(a.registry, "get_target", forbidden)
    monkeypatch.setattr(a.registry, "session", forbidden)  # no ORM read either
    for i in range(2, 6):
        assert a.release("web", "a.tgz", key=f"k{i}", context={"customer": "acme"}).plugin_ref == V1

    with Turnout(w.url, home=w.home) as b:
        b.add_route("web", "customer", "acme", V2, actor="b", reason="from another handle")
    monkeypatch.setattr(a.registry, "get_target", counted)
    moved = a.release("web", "a.tgz", key="k6", context={"customer": "acme"})
    assert moved.plugin_ref == V2
    assert moved.decision == {
        "revision": 2,
        "rule": "customer=acme",
        "route": "r1",
        "bucket": None,
        "key": None,
        "plugin": V2,
    }
    for i in range(7, 12):
        customer = "acme" if i % 2 else "zed"
        a.release("web", "a.tgz", key=f"k{i}", context={"customer": customer})
    assert reads == ["web"]

    # Another process, through the console script: the same, one more read.
    env = {**os.environ, "TURNOUT_HOME": str(w.home)}
    done = subprocess.run(
        [_turnout_script(), "--db", w.url, "route", "add", "web", "--customer", "zed",
         "--to", V2, "--actor", "proc"],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    zed = a.release("web", "a.tgz", key="k12", context={"customer": "zed"})
    assert (zed.plugin_ref, zed.decision and zed.decision["revision"]) == (V2, 3)
    a.release("web", "a.tgz", key="k13", context={"customer": "zed"})
    assert reads == ["web", "web"]
    versions = w.versions()
    assert [versions[f"k{i}"] for i in range(1, 6)] == ["1.0.0"] * 5
    assert versions["k6"] == versions["k12"] == versions["k13"] == "2.0.0"
    assert [versions[f"k{i}"] for i in range(7, 12)] == ["2.0.0", "1.0.0"] * 2 + ["2.0.0"]


# 7. A canary, rolled out and rolled back ----------------------------------------------


def test_routes_canary_rollout_and_one_rollback_end_to_end(
    db_path: Path, home: Path, wheelhouse: Path, calls_file: Path
) -> None:
    url = f"sqlite:///{db_path}"
    runner = CliRunner()

    def turnout(*args: str) -> Any:
        result = runner.invoke(cli, ["--db", url, *args], catch_exceptions=False)
        assert result.exit_code == 0, result.stderr
        return json.loads(result.stdout) if result.stdout.startswith(("{", "[")) else result

    for version in ("1.0.0", "2.0.0"):
        wheel = next(wheelhouse.glob(f"turnout_echo-{version}-*.whl"))
        (installed,) = turnout(
            "plugin", "install", str(wheel), "--no-index", "--find-links", str(wheelhouse),
            "--json",
        )  # fmt: skip
        assert installed["version"] == version
    turnout(
        "target", "set", "web", V1, "--config", f"calls={calls_file}", "--isolation", "process",
        "--actor", "ops", "--reason", "launch web",
    )  # fmt: skip
    plans = ("free", "pro", "enterprise")
    plan_of = {"acme": "enterprise"} | {f"cust-{i:03}": plans[i % 3] for i in range(300)}

    def release_all(tt: Turnout, prefix: str) -> dict[str, str]:
        for customer, plan in plan_of.items():
            context = {"customer": customer, "plan": plan}
            tt.release("web", "a.tgz", key=f"{prefix}.{customer}", context=context)
        versions = _versions(calls_file)
        return {customer: versions[f"{prefix}.{customer}"] for customer in plan_of}

    with Turnout(url, home=home) as tt:  # one warm handle throughout, as a job runner keeps
        assert tt.release("web", "a.tgz", key="first").plugin_ref == V1
        turnout(
            "route", "add", "web", "--plan", "free", "--to", V2,
            "--reason", "free tier tries 2.0", "--actor", "alice",
        )  # fmt: skip
        turnout(
            "route", "add", "web", "--customer", "acme", "--to", V2,
            "--reason", "acme asked for 2.0", "--actor", "bob",
        )  # fmt: skip
        turnout(
            "route", "split", "web", "--to", f"{V2}=10", "--to", f"{V1}=90",
            "--reason", "10% canary", "--actor", "carol",
        )  # fmt: skip
        split = turnout("route", "list", "web", "--json")["routes"][2]["split"]
        expected = {
            customer: "2.0.0"
            if plan == "free" or customer == "acme"
            else _ref_of(bucket(customer, split["salt"]), split["slices"]).split("@")[1]
            for customer, plan in plan_of.items()
        }
        got = release_all(tt, "canary")
        assert got == expected
        split_group = [c for c, plan in plan_of.items() if plan != "free" and c != "acme"]
        assert len(split_group) >= 200
        canaries = [c for c in split_group if got[c] == "2.0.0"]
        assert 0.05 <= len(canaries) / len(split_group) <= 0.15
        predicted = {
            c: str(tt.resolve("web", {"customer": c, "plan": p}).plugin_ref).split("@")[1]
            for c, p in plan_of.items()
        }
        assert predicted == got
        records = tt.ledger.recent(target="web", limit=None)
        decisions = {
            (r.decision or {}).get("revision")
            for r in records
            if r.idempotency_key.startswith("canary.")
        }
        assert decisions == {4}

        back = turnout(
            "rollback", "web", "--to-revision", "1", "--actor", "dave",
            "--reason", "2.0.0 breaks checkout", "--json",
        )  # fmt: skip
        assert (back["revision"], back["plugin"], back["routes"]) == (5, V1, [])
        assert release_all(tt, "after") == dict.fromkeys(plan_of, "1.0.0")
    for customer in ("acme", "cust-000", canaries[0]):
        resolved = turnout(
            "resolve", "web", "--context", f"customer={customer}",
            "--context", f"plan={plan_of[customer]}", "--json",
        )  # fmt: skip
        assert (resolved["plugin"], resolved["rule"], resolved["revision"]) == (
            V1,
            "target default",
            5,
        )

    history = turnout("history", "web", "--json")
    assert [(h["revision"], h["actor"], h["reason"]) for h in history] == [
        (1, "ops", "launch web"),
        (2, "alice", "free tier tries 2.0"),
        (3, "bob", "acme asked for 2.0"),
        (4, "carol", "10% canary"),
        (5, "dave", "2.0.0 breaks checkout"),
    ]
    assert set(history[4]["changes"]) == {"route.r1", "route.r2", "route.r3"}
    assert all(now is None for _, now in history[4]["changes"].values())
    table = turnout("history", "web").stdout
    for word in ("ops", "alice", "bob", "carol", "dave", "10% canary", "2.0.0 breaks checkout"):
        assert word in table
