"""The naive registry that P10 compares against, and the two commits P1 and P10 count.

``NaiveLedger`` writes the same two single-row commits a release makes (claim: INSERT; finish:
UPDATE by primary key) with SQLAlchemy Core, on a table equivalent to turnout's ``releases``
(the same definition, copied into its own metadata) in its own SQLite file with the same
settings: WAL, synchronous NORMAL, the same busy timeout. ``naive_release`` looks the plugin up
by name with stevedore's ``DriverManager`` on every release, calls its ``turnout_release`` and
makes those two commits.
"""

from __future__ import annotations

import secrets
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event

from turnout.models import Release, utcnow

NAMESPACE = "turnout.releasers"


def _pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout = 30000")
    cursor.execute("PRAGMA journal_mode = WAL")
    cursor.execute("PRAGMA synchronous = NORMAL")
    cursor.close()


class NaiveLedger:
    """Two single-row Core commits per release, on turnout's table definition."""

    def __init__(self, path: Path) -> None:
        self.engine = sa.create_engine(f"sqlite:///{path}")
        event.listen(self.engine, "connect", _pragmas)
        metadata = sa.MetaData()
        self.table = Release.__table__.to_metadata(metadata)  # type: ignore[attr-defined]
        metadata.create_all(self.engine)

    def claim(self, target: str, key: str) -> str:
        release_id = f"{time.time_ns() // 1000:014x}{secrets.token_hex(5)}"
        values = {
            "id": release_id,
            "target": target,
            "idempotency_key": key,
            "fingerprint": "0" * 64,
            "plugin_id": "noop",
            "plugin_version": "1.0.0",
            "artifact": "dist/site.tar.gz",
            "context": {},
            "status": "running",
            "attempts": 0,
            "started_at": utcnow(),
        }
        with self.engine.begin() as conn:
            conn.execute(self.table.insert().values(values))
        return release_id

    def finish(self, release_id: str, result: dict[str, Any]) -> None:
        statement = (
            self.table.update()
            .where(self.table.c.id == release_id, self.table.c.status == "running")
            .values(status="succeeded", attempts=1, result=result, finished_at=utcnow())
        )
        with self.engine.begin() as conn:
            conn.execute(statement)

    def two_commits(self, key: str) -> None:
        self.finish(self.claim("naive", key), {"ok": True})

    def close(self) -> None:
        self.engine.dispose()


def naive_release(ledger: NaiveLedger, name: str, key: str) -> None:
    """Look the plugin up by name (stevedore), claim, call it, finish."""
    from stevedore import DriverManager

    manager = DriverManager(namespace=NAMESPACE, name=name, invoke_on_load=False)
    release_id = ledger.claim("naive", key)
    result = manager.driver.turnout_release(
        artifact="dist/site.tar.gz",
        target="naive",
        config={},
        context={},
        idempotency_key=key,
        attempt=1,
    )
    ledger.finish(release_id, result)


def forget_stevedore_caches() -> None:
    """Drop stevedore's in-process caches: the next lookup pays what a new process pays."""
    from stevedore import _cache
    from stevedore.extension import ExtensionManager

    ExtensionManager.ENTRY_POINT_CACHE.clear()
    _cache._c._internal.clear()


def make_distributions(folder: Path, count: int) -> Path:
    """``count`` tiny installed distributions (dist-info with METADATA and an entry point)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        name = f"fake_dist_{i:04d}"
        info = folder / f"{name}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: fake-dist-{i:04d}\nVersion: 1.0\n"
        )
        (info / "entry_points.txt").write_text(f"[console_scripts]\n{name} = {name}:main\n")
    return folder


@contextmanager
def on_path(folder: Path, present: bool) -> Iterator[None]:
    """Run with ``folder`` at the end of ``sys.path`` (or not), restoring it afterwards."""
    entry = str(folder)
    if present and entry not in sys.path:
        sys.path.append(entry)
    try:
        yield
    finally:
        if present and entry in sys.path:
            sys.path.remove(entry)
