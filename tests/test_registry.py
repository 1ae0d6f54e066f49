"""The registry database: migrations, SQLite settings, targets and their history."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from helpers import read_calls
from sqlmodel import SQLModel

from turnout import Status, _db
from turnout.errors import (
    ConfigRejectedError,
    DatabaseNotMigratedError,
    InvalidPluginRefError,
    PluginLoadError,
    PluginNotInstalledError,
    RegistryNotFoundError,
    RegistryUnavailableError,
    UnknownTargetError,
    UsageError,
)
from turnout.refs import PluginRef
from turnout.registry import Registry
from turnout.releases import Claim, fingerprint
from turnout.runtime import Turnout


def test_db_schema_head_matches_alembic_head() -> None:
    assert _db.alembic_head() == _db.SCHEMA_HEAD


def test_db_models_and_migrations_agree(db_path: Path) -> None:
    import turnout.models  # noqa: F401 - registers the tables

    engine = sa.create_engine(f"sqlite:///{db_path}")
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    engine.dispose()
    assert diff == []


def test_migration_0008_copies_each_recorded_customer_into_its_column(
    registry_url: str,
) -> None:
    """Releases recorded before 0008 keep their customer filterable: it is copied out of the
    context, on SQLite and on PostgreSQL."""
    from alembic import command

    registry = Registry(registry_url)
    with registry.engine.begin() as conn:  # the fixture migrated it: back to 0007
        command.downgrade(_db._alembic_config(conn), "0007")
    rows = [
        {"id": f"r{i}", "context": context, "customer": None}
        for i, context in enumerate([{"customer": "acme", "plan": "pro"}, {"plan": "free"}, {}])
    ]
    with registry.engine.begin() as conn:
        for row in rows:
            conn.execute(
                sa.text(
                    "INSERT INTO releases (id, target, idempotency_key, fingerprint, plugin_id, "
                    "plugin_version, artifact, context, status, attempts, started_at) VALUES "
                    "(:id, 't', :id, 'f', 'echo', '1.0.0', 'a', :context, 'succeeded', 1, "
                    ":at)"
                ),
                {"id": row["id"], "context": json.dumps(row["context"]), "at": datetime.now(UTC)},
            )
    _db.upgrade(registry.engine)
    with registry.engine.connect() as conn:
        found = dict(conn.execute(sa.text("SELECT id, customer FROM releases")).all())
    assert found == {"r0": "acme", "r1": None, "r2": None}
    registry.close()
    with Turnout(registry_url) as tt:
        assert [r.id for r in tt.ledger.recent(customer="acme")] == ["r0"]


def test_migration_0009_scopes_recorded_keys_by_customer(registry_url: str) -> None:
    """After 0009 a recorded release keeps answering for its key, under its customer, and
    another customer may use the same key on the same target (SQLite and PostgreSQL)."""
    from alembic import command

    registry = Registry(registry_url)
    with registry.engine.begin() as conn:  # the fixture migrated it: back to 0008
        command.downgrade(_db._alembic_config(conn), "0008")
    with registry.engine.begin() as conn:
        for rid, customer in (("r0", "acme"), ("r1", None)):
            conn.execute(
                sa.text(
                    "INSERT INTO releases (id, target, idempotency_key, fingerprint, plugin_id, "
                    "plugin_version, artifact, context, customer, status, attempts, started_at) "
                    "VALUES (:id, 't', :id, 'f', 'echo', '1.0.0', 'a', :context, :customer, "
                    "'succeeded', 1, :at)"
                ),
                {
                    "id": rid,
                    "context": json.dumps({"customer": customer} if customer else {}),
                    "customer": customer,
                    "at": datetime.now(UTC),
                },
            )
    _db.upgrade(registry.engine)
    with registry.engine.connect() as conn:
        scopes = dict(conn.execute(sa.text("SELECT id, key_scope FROM releases")).all())
    assert scopes == {"r0": "acme", "r1": ""}
    registry.close()
    with Turnout(registry_url) as tt:
        found = tt.ledger.find("t", "r0", "acme")
        assert found is not None
        assert found.id == "r0"
        assert tt.ledger.find("t", "r0") is None  # not nobody's key
        assert tt.ledger.find("t", "r1") is not None
        # The old constraint is gone: another customer's claim of r0's key is a release.
        other = tt.ledger.claim(
            target="t",
            key="r0",
            fingerprint="g",
            plugin_ref=PluginRef.parse("echo@1.0.0"),
            artifact="a",
            context={"customer": "globex"},
        )
        assert isinstance(other, Claim)
        assert other.id != "r0"


@pytest.mark.usefixtures("plugin_site")
def test_migration_0010_releases_claimed_before_go_on_with_their_bare_key(
    registry_url: str, calls_file: Path
) -> None:
    """A customer's release claimed before 0010 was called with its bare key. Resumed after
    the upgrade it is called with that key again: with the new key, a plugin that recognises
    repeats by key would not know the first call (SQLite and PostgreSQL)."""
    from alembic import command

    config = {"calls": str(calls_file)}
    acme = {"customer": "acme"}
    with Turnout(registry_url) as tt:
        tt.set_target("t", "echo@1.0.0", config=config, isolation="inline")
    registry = Registry(registry_url)
    with registry.engine.begin() as conn:  # the fixture migrated it: back to 0009
        command.downgrade(_db._alembic_config(conn), "0009")
    with registry.engine.begin() as conn:  # its first attempt failed transiently
        conn.execute(
            sa.text(
                "INSERT INTO releases (id, target, idempotency_key, fingerprint, plugin_id, "
                "plugin_version, artifact, context, customer, key_scope, status, attempts, "
                "retryable, error, token, started_at, finished_at) VALUES ('r0', 't', 'k1', "
                ":fingerprint, 'echo', '1.0.0', 'a.tgz', :context, 'acme', 'acme', 'failed', "
                "1, :true, 'ConnectionError: gone', 'x', :at, :at)"
            ),
            {
                "fingerprint": fingerprint("t", "a.tgz", PluginRef("echo", "1.0.0"), config, acme),
                "context": json.dumps(acme),
                "true": True,
                "at": datetime.now(UTC),
            },
        )
    _db.upgrade(registry.engine)
    registry.close()
    with Turnout(registry_url) as tt:
        resumed = tt.release("t", "a.tgz", key="k1", context=acme)
        fresh = tt.release("t", "a.tgz", key="k2", context=acme)
    assert (resumed.id, resumed.status, resumed.attempts) == ("r0", Status.SUCCEEDED, 2)
    assert resumed.plugin_key == "k1"
    assert fresh.plugin_key.startswith("k2!")
    assert [(c["key"], c["attempt"]) for c in read_calls(calls_file)] == [
        ("k1", 2),
        (fresh.plugin_key, 1),
    ]


def test_db_upgrade_is_idempotent(tmp_path: Path) -> None:
    registry = Registry(str(tmp_path / "nested" / "r.db"))
    assert registry.upgrade() == (None, _db.SCHEMA_HEAD)
    assert registry.upgrade() == (_db.SCHEMA_HEAD, _db.SCHEMA_HEAD)
    registry.close()


def test_db_sqlite_runs_in_wal_with_a_busy_timeout(db_path: Path) -> None:
    registry = Registry(str(db_path))
    with registry.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == _db.SQLITE_BUSY_TIMEOUT_MS
    registry.close()


def test_db_write_transactions_begin_immediate(db_path: Path) -> None:
    """A write transaction holds SQLite's write lock from its first statement."""
    registry = Registry(str(db_path))
    other = sqlite3.connect(db_path, timeout=0, isolation_level=None)
    with registry.engine.begin() as conn:
        conn.exec_driver_sql("SELECT 1").scalar()  # a read only, but the lock is taken at BEGIN
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("BEGIN IMMEDIATE")
    other.execute("BEGIN IMMEDIATE")  # free again once the transaction ended
    other.execute("ROLLBACK")
    with _db.reader(registry.engine) as conn, conn.begin():
        conn.exec_driver_sql("SELECT 1").scalar()
        other.execute("BEGIN IMMEDIATE")  # a reader does not block a writer
        other.execute("ROLLBACK")
    other.close()
    registry.close()


def test_db_concurrent_writers_queue_instead_of_failing(db_path: Path) -> None:
    """Eight threads read-then-write one target: no 'database is locked' reaches a caller."""
    registry = Registry(str(db_path))
    errors: list[BaseException] = []

    def write(n: int) -> None:
        try:
            for i in range(5):
                registry.set_target(
                    "t",
                    PluginRef("echo", "1.0.0"),
                    config={"n": n, "i": i},
                    actor="test",
                    reason="race",
                )
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    history = registry.target_history("t")
    assert [r.revision for r in history] == list(range(1, 41))
    registry.close()


def test_db_url_accepts_a_path_or_a_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _db.database_url(str(tmp_path / "x.db")).database == str(tmp_path / "x.db")
    assert _db.database_url("sqlite:///rel.db").database == "rel.db"
    assert _db.database_url("postgresql://u:pw@h/db").drivername == "postgresql+psycopg"
    monkeypatch.setenv("TURNOUT_DATABASE_URL", "sqlite:///from-env.db")
    assert _db.database_url(None).database == "from-env.db"
    monkeypatch.delenv("TURNOUT_DATABASE_URL")
    assert _db.database_url(None).database == "registry.db"
    assert "pw" not in _db.display_url(_db.database_url("postgresql://u:pw@h/db"))


def test_db_not_migrated_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty.db").touch()  # an empty file is an empty SQLite database
    registry = Registry(str(tmp_path / "empty.db"))
    with pytest.raises(DatabaseNotMigratedError) as raised:
        registry.list_targets()
    assert raised.value.exit_code == 78
    assert "turnout db upgrade" in str(raised.value)
    registry.close()


def test_db_unreachable_is_translated() -> None:
    registry = Registry("postgresql://turnout@127.0.0.1:1/nowhere")  # nothing listens there
    with pytest.raises(RegistryUnavailableError) as raised:
        registry.list_targets()
    assert raised.value.exit_code == 75
    assert isinstance(raised.value.__cause__, sa.exc.OperationalError)
    registry.close()


@pytest.mark.parametrize(
    ("make", "said"),
    [
        (lambda path: None, "no such file; create it with: turnout --db"),
        (lambda path: path.mkdir(), "it is a folder"),
        (lambda path: path.write_bytes(b"not sqlite at all " * 64), "not a SQLite database"),
    ],
    ids=["missing", "folder", "not-sqlite"],
)
def test_db_path_that_holds_no_registry_is_a_configuration_error(
    tmp_path: Path, make: Callable[[Path], None], said: str
) -> None:
    # Not "unavailable, retry later" (75): retrying never helps. And a command that only uses
    # the registry creates no empty file on the way.
    path = tmp_path / "registry.db"
    make(path)
    before = sorted(tmp_path.iterdir())
    registry = Registry(str(path))
    with pytest.raises(RegistryNotFoundError) as raised:
        registry.list_targets()
    registry.close()
    assert raised.value.exit_code == 78
    assert said in str(raised.value)
    assert sorted(tmp_path.iterdir()) == before


@pytest.mark.parametrize("url", ["bogus://x", "mysql://u@h/db", "postgresql://:x:y"])
def test_db_url_of_another_kind_is_a_usage_error(url: str) -> None:
    with pytest.raises(UsageError, match="SQLite file path, sqlite:///PATH or postgresql://"):
        Registry(url)


def test_db_postgres_password_never_in_messages() -> None:
    registry = Registry("postgresql://turnout:hunter2@127.0.0.1:1/nowhere")
    with pytest.raises(RegistryUnavailableError) as raised:
        registry.list_targets()
    assert "hunter2" not in str(raised.value)
    registry.close()


# Targets ---------------------------------------------------------------------------------


@pytest.fixture
def tt(db_path: Path, plugin_site: Path) -> Turnout:
    handle = Turnout(str(db_path))
    yield handle
    handle.close()


def test_target_set_creates_and_records_a_revision(tt: Turnout) -> None:
    change = tt.set_target("site", "echo@1.0.0", config={"a": 1}, actor="ana", reason="first")
    assert change.before is None
    assert change.target.revision == 1
    spec = tt.registry.get_target("site")
    assert spec.plugin_ref == PluginRef("echo", "1.0.0")
    assert spec.config == {"a": 1}
    assert (spec.max_attempts, spec.timeout) == (3, 60.0)
    (revision,) = tt.registry.target_history("site")
    assert (revision.actor, revision.reason, revision.revision) == ("ana", "first", 1)
    assert revision.snapshot == {
        "plugin": "echo@1.0.0",
        "config": {"a": 1},
        "max_attempts": 3,
        "timeout": 60.0,
        "isolation": "process",
        "idempotent": False,
        "routes": [],
    }


def test_target_set_keeps_unset_options_and_skips_no_op_changes(tt: Turnout) -> None:
    tt.set_target("site", "echo@1.0.0", config={"a": 1}, max_attempts=5, timeout=9)
    change = tt.set_target("site", "echo@1.0.0")
    assert not change.changed
    assert change.target.revision == 1
    change = tt.set_target("site", "echo@1.0.0", timeout=10)
    assert change.changed
    assert change.target.revision == 2
    assert change.target.config == {"a": 1}
    assert change.target.max_attempts == 5
    assert len(tt.registry.target_history("site")) == 2


def test_target_set_normalises_the_ref(tt: Turnout) -> None:
    tt.set_target("site", "Echo@1.0.0")
    assert str(tt.registry.get_target("site").plugin_ref) == "echo@1.0.0"


@pytest.mark.parametrize(
    ("ref", "error", "fragment"),
    [
        ("echo", InvalidPluginRefError, "missing '@version'"),
        ("echo@", InvalidPluginRefError, "empty version"),
        ("echo@>=1.0", InvalidPluginRefError, "ranges"),
        ("echo@9.9.9", PluginNotInstalledError, "pip install 'turnout-echo==9.9.9'"),
        ("nosuch@1.0.0", PluginNotInstalledError, "no distribution"),
        ("broken@0.1.0", PluginLoadError, "turnout_fixture_missing_dependency"),
        ("hookless@0.1.0", PluginLoadError, "does not implement turnout_release"),
        ("typo@0.1.0", PluginLoadError, "turnout_relase"),
    ],
)
def test_target_set_refusals_leave_the_row_unchanged(
    tt: Turnout, ref: str, error: type[Exception], fragment: str
) -> None:
    tt.set_target("site", "echo@1.0.0", config={"a": 1})
    with pytest.raises(error, match=None) as raised:
        tt.set_target("site", ref, config={"b": 2})
    assert fragment in str(raised.value)
    spec = tt.registry.get_target("site")
    assert (str(spec.plugin_ref), spec.config, spec.revision) == ("echo@1.0.0", {"a": 1}, 1)
    assert len(tt.registry.target_history("site")) == 1


def test_target_set_config_rejected_by_the_plugin(tt: Turnout) -> None:
    tt.set_target("site", "echo@1.0.0")
    with pytest.raises(ConfigRejectedError) as raised:
        tt.set_target("site", "echo@1.0.0", config={"invalid": "x"})
    assert "echo: config 'invalid' is not allowed" in str(raised.value)
    assert raised.value.exit_code == 78
    assert tt.registry.get_target("site").config == {}


def test_target_remove_keeps_history(tt: Turnout) -> None:
    tt.set_target("site", "echo@1.0.0")
    tt.registry.remove_target("site", actor="ana", reason="gone")
    with pytest.raises(UnknownTargetError):
        tt.registry.get_target("site")
    history = tt.registry.target_history("site")
    assert [(r.revision, r.snapshot is None) for r in history] == [(1, False), (2, True)]
    assert tt.set_target("site", "echo@1.0.0").target.revision == 3
    with pytest.raises(UnknownTargetError):
        tt.registry.remove_target("never", actor="ana", reason="")


def test_target_set_expect_revision_is_a_compare_and_set(tt: Turnout) -> None:
    from turnout.errors import StaleRevisionError

    tt.set_target("site", "echo@1.0.0", expect_revision=0)
    tt.set_target("site", "echo@1.0.0", config={"a": 1}, expect_revision=1)
    with pytest.raises(StaleRevisionError) as raised:
        tt.set_target("site", "echo@1.0.0", config={"a": 2}, expect_revision=1)
    assert raised.value.exit_code == 75
    assert "--expect-revision 2" in str(raised.value)
    spec = tt.registry.get_target("site")
    assert (spec.revision, spec.config) == (2, {"a": 1})
    assert len(tt.registry.target_history("site")) == 2


def test_target_history_cli_shows_each_revision_and_its_changes(tt: Turnout, db_path: Path) -> None:
    import json

    from click.testing import CliRunner

    from turnout.cli import cli

    tt.set_target("site", "echo@1.0.0", config={"a": 1}, reason="first", actor="ana")
    tt.set_target("site", "echo@1.0.0", config={"a": 2}, timeout=5, reason="tune", actor="bo")
    tt.registry.remove_target("site", actor="bo", reason="gone")
    result = CliRunner().invoke(cli, ["--db", str(db_path), "history", "site", "--json"])
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [(r["revision"], r["actor"], r["reason"]) for r in rows] == [
        (1, "ana", "first"),
        (2, "bo", "tune"),
        (3, "bo", "gone"),
    ]
    assert rows[1]["changes"] == {"config.a": [1, 2], "timeout": [60.0, 5.0]}
    assert rows[2]["target"] is None
    table = CliRunner().invoke(cli, ["--db", str(db_path), "history", "site"])
    assert "config.a: 1 -> 2" in table.stdout
    missing = CliRunner().invoke(cli, ["--db", str(db_path), "history", "nowhere"])
    assert missing.exit_code == 78  # an unknown target, as everywhere


def test_rollback_writes_a_new_revision_copying_an_earlier_one(tt: Turnout, db_path: Path) -> None:
    from click.testing import CliRunner

    from turnout.cli import cli

    tt.set_target("site", "echo@1.0.0", config={"a": 1}, actor="ana", reason="first")
    tt.set_target("site", "echo@1.0.0", config={"a": 2}, timeout=5, actor="bo", reason="tune")
    change = tt.rollback("site", actor="cy")
    assert change.target.revision == 3
    assert (change.target.config, change.target.timeout) == ({"a": 1}, 60.0)
    history = tt.registry.target_history("site")
    assert [(r.revision, r.actor, r.reason) for r in history] == [
        (1, "ana", "first"),
        (2, "bo", "tune"),
        (3, "cy", "rollback to revision 1"),
    ]
    result = CliRunner().invoke(
        cli, ["--db", str(db_path), "rollback", "site", "--to-revision", "2"]
    )
    assert result.exit_code == 0, result.stderr
    assert tt.registry.get_target("site").config == {"a": 2}
    assert len(tt.registry.target_history("site")) == 4
    bad = CliRunner().invoke(cli, ["--db", str(db_path), "rollback", "site", "--to-revision", "9"])
    assert bad.exit_code == 2
    assert "no earlier revision 9" in bad.stderr


def test_rollback_refuses_a_version_no_longer_installed(tt: Turnout) -> None:
    from sqlalchemy import text

    from turnout.errors import PluginNotInstalledError

    tt.set_target("site", "echo@1.0.0")
    tt.set_target("site", "echo@1.0.0", config={"b": 1})
    with tt.registry.engine.begin() as conn:  # as if revision 1 had named a removed version
        conn.execute(
            text(
                "UPDATE target_revisions SET snapshot = json_set(snapshot, '$.plugin', "
                "'echo@0.9.0') WHERE revision = 1"
            )
        )
    with pytest.raises(PluginNotInstalledError):
        tt.rollback("site")
    assert tt.registry.get_target("site").revision == 2


# Store plugin versions --------------------------------------------------------------------


def test_store_versions_added_from_a_stale_read_are_read_again(registry_url: str) -> None:
    # Two installers of one version: the second read the store before the first recorded it.
    # Its insert fails on the unique key; it reads again and finds the row (same environment:
    # unchanged; another environment: the caller refuses). Nothing is recorded twice.
    registry = Registry(registry_url)
    ref = PluginRef("echo", "1.0.0")
    add = {ref: ("turnout-echo", "turnout_echo")}
    stale = registry.plugin_versions("store")
    assert stale == []
    assert registry.add_store_versions(add, location="d1", hashes={}, requirement="r") == {
        ref: None
    }
    again = registry.add_store_versions(add, location="d1", hashes={}, requirement="r", known=stale)
    other = registry.add_store_versions(add, location="d2", hashes={}, requirement="r", known=stale)
    rows = registry.plugin_versions("store")
    registry.close()
    assert [row and row.location for row in again.values()] == ["d1"]
    assert [row and row.location for row in other.values()] == ["d1"]
    assert [(r.plugin_id, r.version, r.location) for r in rows] == [("echo", "1.0.0", "d1")]
