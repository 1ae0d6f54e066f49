"""F9: a registry that cannot be written (read-only, disk full) → a clear error that says what
to do, no plugin call without a durable claim, nothing half-written.

Each case is the database's own refusal, not a mock: SQLite opened read-only (``mode=ro``),
SQLite at its page limit (``max_page_count``: SQLite answers "database or disk is full" exactly
as on a full disk), and PostgreSQL with ``default_transaction_read_only`` (as on a standby).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from helpers import read_calls
from sqlalchemy import event
from sqlalchemy.engine import make_url

from turnout import Status, Turnout
from turnout.errors import RegistryUnavailableError

pytestmark = pytest.mark.usefixtures("plugin_site")


def _echo_target(url: str, calls: Path, **config: Any) -> None:
    with Turnout(url) as tt:
        tt.set_target("site", "echo@1.0.0", config={"calls": str(calls), **config}, reason="t")
        assert tt.release("site", "a.tgz", key="before").status is Status.SUCCEEDED


def _keys(url: str) -> list[str]:
    with Turnout(url) as tt:
        return sorted(r.idempotency_key for r in tt.ledger.recent(target="site", limit=None))


def test_f9_sqlite_read_only_refuses_before_the_call(db_path: Path, calls_file: Path) -> None:
    _echo_target(str(db_path), calls_file)
    read_only = f"sqlite:///file:{db_path}?mode=ro&uri=true"
    with Turnout(read_only) as tt, pytest.raises(RegistryUnavailableError) as raised:
        tt.release("site", "a.tgz", key="k1")
    assert raised.value.exit_code == 75
    assert "attempt to write a readonly database" in str(raised.value)
    assert "make the database file, its folder and its -wal and -shm files writable" in str(
        raised.value
    )
    assert [call["key"] for call in read_calls(calls_file)] == ["before"]  # no call
    assert _keys(str(db_path)) == ["before"]  # nothing written


def test_f9_postgres_read_only_refuses_before_the_call(
    postgres_registry_url: str, calls_file: Path
) -> None:
    import psycopg

    url = postgres_registry_url
    _echo_target(url, calls_file)
    name = make_url(url).database
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
    try:
        with Turnout(url) as tt, pytest.raises(RegistryUnavailableError) as raised:
            tt.release("site", "a.tgz", key="k1")
    finally:
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute("SET default_transaction_read_only = off")
            admin.execute(f'ALTER DATABASE "{name}" RESET default_transaction_read_only')
    assert raised.value.exit_code == 75
    assert "read-only transaction" in str(raised.value)
    assert "point the URL at the primary" in str(raised.value)
    assert [call["key"] for call in read_calls(calls_file)] == ["before"]
    assert _keys(url) == ["before"]


def _full(tt: Turnout, when: str = "") -> None:
    """Cap the database at the pages it has (SQLite's "database or disk is full" from then on),
    on every new connection, or only once a statement holding ``when`` is about to run. The
    free pages the migrations left are vacuumed away first: a full disk has none."""
    with sqlite3.connect(tt.registry.url.database or "") as db:
        db.execute("VACUUM")
        assert db.execute("PRAGMA freelist_count").fetchone()[0] == 0

    def cap(dbapi_connection: Any) -> None:
        pages = dbapi_connection.execute("PRAGMA page_count").fetchone()[0]
        dbapi_connection.execute(f"PRAGMA max_page_count = {pages}")

    if when:

        @event.listens_for(tt.registry.engine, "before_cursor_execute")
        def cap_before(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
            if when in statement:
                cap(conn.connection.dbapi_connection)

    else:
        event.listen(tt.registry.engine, "connect", lambda dbapi, _record: cap(dbapi))
        tt.registry.engine.dispose()  # the pooled connections were opened before the cap


def test_f9_disk_full_before_the_claim_calls_nothing(db_path: Path, calls_file: Path) -> None:
    _echo_target(str(db_path), calls_file)
    with Turnout(str(db_path)) as tt:
        _full(tt)
        with pytest.raises(RegistryUnavailableError) as raised:
            # a claim that needs pages of its own (its artifact does not fit in a page)
            tt.release("site", "a.tgz?" + "x" * 8000, key="k1")
    assert raised.value.exit_code == 75
    assert "database or disk is full (free space on the disk" in str(raised.value)
    assert [call["key"] for call in read_calls(calls_file)] == ["before"]
    assert _keys(str(db_path)) == ["before"]


def test_f9_disk_full_after_the_call_says_it_ran_and_is_settled_later(
    db_path: Path, calls_file: Path
) -> None:
    """The claim is written; the disk fills during the call; the outcome (which holds the
    result, twice the claim's size here) cannot be written. The error says the release ran;
    the claim stays as it was; the same key settles it through the probe, without a call."""
    deployed = calls_file.with_name("deployed.jsonl")
    _echo_target(str(db_path), calls_file, deployed=str(deployed))
    artifact = "a.tgz?" + "x" * 3000  # the claim fits in a page; with the result it does not
    with Turnout(str(db_path), lease=0.2) as tt:
        _full(tt, when="UPDATE releases SET status")
        with pytest.raises(RegistryUnavailableError) as raised:
            tt.release("site", artifact, key="k1")
    message = str(raised.value)
    assert raised.value.exit_code == 75
    assert "ran (succeeded after 1 attempt(s)) but its outcome could not be recorded" in message
    assert "database or disk is full" in message
    assert "the same key again, or turnout reconcile, settles it" in message
    with Turnout(str(db_path), lease=0.2) as tt:
        claimed = tt.ledger.find("site", "k1")
        assert claimed is not None
        assert claimed.status is Status.RUNNING  # the claim, whole; no outcome half-written
        assert claimed.result is None
        assert claimed.finished_at is None
        assert json.loads(deployed.read_text().splitlines()[-1])["key"] == "k1"
        tt._sleep(0.3)  # the lease runs out; the disk has room again (no cap on this handle)
        settled = tt.release("site", artifact, key="k1")
    assert settled.status is Status.RECONCILED
    assert settled.result == {"probed": "k1", "calls": 1}
    assert [call["key"] for call in read_calls(calls_file)] == ["before", "k1"]  # one call
