"""The release ledger on its own: claims of a repeated key, and the heartbeat's verdicts.

Each case runs on SQLite and on PostgreSQL (the ``registry_url`` fixture), with the ledger's
clock injected; no plugin runs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from turnout import _db
from turnout.errors import KeyMismatchError, ReleaseInProgressError
from turnout.models import utcnow
from turnout.refs import PluginRef
from turnout.releases import Claim, Ledger, ReleaseRecord, Status, fingerprint

REF = PluginRef.parse("echo@1.0.0")
LEASE = 60
LAPSE = timedelta(seconds=LEASE + 1)
"""Long enough for a lease to lapse on the injected clock."""


@pytest.fixture
def engine(registry_url: str) -> Iterator[Engine]:
    engine = _db.create_engine(_db.database_url(registry_url))
    yield engine
    engine.dispose()


@pytest.fixture
def now() -> list[datetime]:
    """The ledgers' shared clock: tests move ``now[0]``."""
    return [utcnow()]


_open: list[Ledger] = []


@pytest.fixture(autouse=True)
def _close_ledgers() -> Iterator[None]:
    """Stop the heartbeat thread of every ledger a test made."""
    yield
    while _open:
        _open.pop().close()


def ledger_on(engine: Engine, now: list[datetime]) -> Ledger:
    """A ledger on the shared clock; its own heartbeat thread would beat only every 20 s."""
    ledger = Ledger(engine, lease=LEASE, clock=lambda: now[0])
    _open.append(ledger)
    return ledger


def request(key: str = "k1", artifact: str = "a.tgz") -> dict[str, Any]:
    return {
        "target": "site",
        "key": key,
        "fingerprint": fingerprint("site", artifact, REF, {}, {}),
        "plugin_ref": REF,
        "artifact": artifact,
        "context": {},
    }


def claimed(ledger: Ledger, **overrides: Any) -> Claim:
    claim = ledger.claim(**{**request(), **overrides})
    assert isinstance(claim, Claim)
    return claim


# The heartbeat ---------------------------------------------------------------------------


def test_ledger_heartbeat_does_not_report_a_release_its_own_claim_finished(
    engine: Engine, now: list[datetime]
) -> None:
    """The beat copied the claim before the release finished, and renews it after."""
    ledger = ledger_on(engine, now)
    claim = claimed(ledger)
    ledger.move(claim, Status.SUCCEEDED, result={})
    assert ledger.heartbeat([claim]) == []


def test_ledger_heartbeat_reports_a_lease_taken_over(engine: Engine, now: list[datetime]) -> None:
    ledger_a, ledger_b = ledger_on(engine, now), ledger_on(engine, now)
    a = claimed(ledger_a)
    now[0] += LAPSE  # A's lease lapsed: B takes the release over
    b = claimed(ledger_b)
    assert b.takeover
    assert ledger_a.heartbeat([a]) == [a]
    ledger_b.move(b, Status.RUNNING, attempts=2)
    ledger_b.move(b, Status.SUCCEEDED, result={})
    assert ledger_a.heartbeat([a]) == [a]  # finished, but by B: still lost for A
    assert ledger_b.heartbeat([b]) == []


def between_copy_and_renewal(ledger: Ledger, step: Callable[[], object]) -> None:
    """Run ``step`` after the heartbeat thread copied its claims, before it renews them."""
    renew = ledger.heartbeat

    def heartbeat(claims: list[Claim]) -> list[Claim]:
        step()
        return renew(claims)

    ledger.heartbeat = heartbeat  # type: ignore[method-assign]


def lease_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "lease lost" in r.getMessage()]


def test_ledger_heartbeat_thread_is_silent_about_a_release_that_finished_meanwhile(
    engine: Engine, now: list[datetime], caplog: pytest.LogCaptureFixture
) -> None:
    ledger = ledger_on(engine, now)
    claim = claimed(ledger)
    with ledger.hold(claim):
        between_copy_and_renewal(ledger, lambda: ledger.move(claim, Status.SUCCEEDED, result={}))
        with caplog.at_level(logging.WARNING, logger="turnout.releases"):
            ledger._heart.beat()
    assert lease_warnings(caplog) == []


def test_ledger_heartbeat_thread_is_silent_about_a_claim_discarded_meanwhile(
    engine: Engine, now: list[datetime], caplog: pytest.LogCaptureFixture
) -> None:
    """A claim let go after it moved to ``unknown``, then taken over by another runner."""
    ledger, other = ledger_on(engine, now), ledger_on(engine, now)
    stale = claimed(ledger)
    now[0] += LAPSE
    claim = claimed(ledger)  # this runner takes over its own stale release
    assert claim.takeover
    hold = ledger.hold(claim)
    hold.__enter__()

    def let_go_and_lose() -> None:
        ledger.move(claim, Status.UNKNOWN)
        hold.__exit__(None, None, None)
        assert isinstance(other.claim(**request()), Claim)  # unknown: another asks again

    between_copy_and_renewal(ledger, let_go_and_lose)
    with caplog.at_level(logging.WARNING, logger="turnout.releases"):
        ledger._heart.beat()
    assert stale.token != claim.token
    assert lease_warnings(caplog) == []


def test_ledger_heartbeat_thread_warns_about_a_lease_lost_to_another_runner(
    engine: Engine, now: list[datetime], caplog: pytest.LogCaptureFixture
) -> None:
    ledger, other = ledger_on(engine, now), ledger_on(engine, now)
    claim = claimed(ledger)
    with ledger.hold(claim):
        now[0] += LAPSE
        assert claimed(other).takeover
        with caplog.at_level(logging.WARNING, logger="turnout.releases"):
            ledger._heart.beat()
    assert lease_warnings(caplog) == [f"release {claim.id}: lease lost to another runner"]


# Claims of a repeated key ------------------------------------------------------------------


def test_ledger_repeated_key_answers_as_before(engine: Engine, now: list[datetime]) -> None:
    """In progress, mismatch, takeover, reused: every answer to a key claimed before."""
    ledger = ledger_on(engine, now)
    first = claimed(ledger)
    with pytest.raises(ReleaseInProgressError):
        ledger.claim(**request())
    with pytest.raises(KeyMismatchError) as mismatch:
        ledger.claim(**request(artifact="b.tgz"))
    assert mismatch.value.release_id == first.id
    now[0] += LAPSE
    taken = claimed(ledger)
    assert (taken.id, taken.takeover, taken.previous) == (first.id, True, Status.RUNNING)
    ledger.move(taken, Status.RECONCILED, result={"probed": True})
    reused = ledger.claim(**request())
    assert isinstance(reused, ReleaseRecord)
    assert (reused.id, reused.reused, reused.status) == (first.id, True, Status.RECONCILED)
    other = claimed(ledger, key="k2")
    assert other.id != first.id
    with engine.connect() as conn:
        count = conn.execute(sa.text("SELECT count(*) FROM releases")).scalar()
    assert count == 2


def _releases_stats(url: str) -> tuple[int, int, int]:
    """``n_tup_ins``, ``n_tup_upd`` and ``n_dead_tup`` of the releases table, once no other
    session is left.

    A backend flushes its statistics as it exits, before it leaves ``pg_stat_activity``.
    """
    observer = sa.create_engine(_db.database_url(url), poolclass=sa.pool.NullPool)
    others = sa.text(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    stats = sa.text(
        "SELECT n_tup_ins, n_tup_upd, n_dead_tup FROM pg_stat_user_tables "
        "WHERE relname = 'releases'"
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            with observer.connect() as conn:
                if conn.execute(others).scalar() == 0:
                    inserted, updated, dead = conn.execute(stats).one()
                    return int(inserted), int(updated), int(dead)
            if time.monotonic() > deadline:  # pragma: no cover - a session that never ends
                raise AssertionError("sessions on the test database did not end")
            time.sleep(0.02)
    finally:
        observer.dispose()


def test_ledger_repeated_key_writes_no_row_on_postgresql(
    postgres_registry_url: str, now: list[datetime]
) -> None:
    """A replayed key is answered without a failed insert: no error, rollback, dead tuple.

    PostgreSQL only: its statistics count the tuples a failed insert leaves."""
    engine = _db.create_engine(_db.database_url(postgres_registry_url))
    ledger = ledger_on(engine, now)
    try:
        first = claimed(ledger)
        ledger.move(first, Status.SUCCEEDED, result={})
        for _ in range(5):
            repeat = ledger.claim(**request())
            assert isinstance(repeat, ReleaseRecord)
            assert repeat.reused
        with pytest.raises(KeyMismatchError):
            ledger.claim(**request(artifact="b.tgz"))
    finally:
        engine.dispose()
    # One row inserted, once; the one dead tuple is the version the move to succeeded replaced.
    assert _releases_stats(postgres_registry_url) == (1, 1, 1)
