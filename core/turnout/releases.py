"""The release ledger: claiming an idempotency key, recording outcomes, reading them back.

A release is claimed by inserting its row, unique on (target, idempotency key), in a short
committed transaction before any plugin code runs; whoever loses that insert answers from the
winner's row instead of running anything. Statements here use SQLAlchemy Core: this is the hot
path of every release.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine, RowMapping

from turnout import _db
from turnout.errors import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_TEMPFAIL,
    InvalidKeyError,
    KeyMismatchError,
    ReleaseFailedError,
    ReleaseInProgressError,
    TransientReleaseError,
    UsageError,
)
from turnout.models import Release, utcnow
from turnout.refs import PluginRef

TABLE: sa.Table = Release.__table__  # type: ignore[attr-defined]

MAX_KEY_LENGTH = 200
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+=#~-]*$")
_CONTEXT_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")


class Status(StrEnum):
    """Where a release is in its life."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"


def validate_key(key: str) -> str:
    """Check an idempotency key before it reaches any query.

    Raises:
        InvalidKeyError: Empty, longer than 200 characters, or holding anything but letters,
            digits and ``. _ : / @ + = # ~ -`` (no spaces, no control characters).
    """
    if not key:
        raise InvalidKeyError("it is empty")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidKeyError(f"it has {len(key)} characters; the limit is {MAX_KEY_LENGTH}")
    if not _KEY.match(key):
        raise InvalidKeyError(
            "use letters, digits and . _ : / @ + = # ~ - only, starting with a letter or digit"
        )
    return key


def validate_context(context: Mapping[str, str] | None) -> dict[str, str]:
    """Check release context attributes: identifier-like names, string values."""
    checked: dict[str, str] = {}
    for name, value in (context or {}).items():
        if not isinstance(name, str) or not _CONTEXT_KEY.match(name):
            raise UsageError(f"invalid context attribute name {name!r}")
        if not isinstance(value, str):
            raise UsageError(f"context attribute {name!r} must be a string")
        checked[name] = value
    return checked


def fingerprint(
    target: str,
    artifact: str,
    plugin_ref: PluginRef,
    config: Mapping[str, Any],
    context: Mapping[str, str],
) -> str:
    """A canonical digest of a release request: the same request always has the same one."""
    canonical = json.dumps(
        {
            "target": target,
            "artifact": artifact,
            "plugin": str(plugin_ref),
            "config": config,
            "context": context,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def new_release_id() -> str:
    """A sortable release id: microseconds since the epoch, then 40 random bits."""
    return f"{time.time_ns() // 1000:014x}{secrets.token_hex(5)}"


def _aware(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; turnout only ever stores UTC.
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class ReleaseRecord:
    """A release as recorded: the request, its outcome, and whether this call ran it."""

    id: str
    target: str
    idempotency_key: str
    fingerprint: str
    plugin_ref: str
    artifact: str
    context: dict[str, str]
    status: Status
    attempts: int
    result: dict[str, Any] | None
    error: str | None
    error_type: str | None
    retryable: bool | None
    output: str | None
    started_at: datetime
    finished_at: datetime | None
    reused: bool = False
    """True when this call found the key already released and ran nothing."""

    @property
    def exit_code(self) -> int:
        """The CLI exit code for this outcome: 0 success, 75 transient, 1 permanent failure."""
        if self.status is Status.SUCCEEDED:
            return EXIT_OK
        if self.status is Status.RUNNING or self.retryable:
            return EXIT_TEMPFAIL
        return EXIT_FAILED

    @property
    def duration(self) -> float | None:
        """Seconds from claim to outcome, once finished."""
        if self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()

    def raise_for_status(self) -> ReleaseRecord:
        """Return self if it succeeded; raise the matching failure otherwise."""
        if self.status is Status.SUCCEEDED:
            return self
        if self.status is Status.RUNNING:
            raise ReleaseInProgressError(self.target, self.idempotency_key, self.id)
        if self.retryable:
            raise TransientReleaseError(self)
        raise ReleaseFailedError(self)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (timestamps as ISO 8601)."""
        data = asdict(self)
        data["status"] = self.status.value
        data["started_at"] = self.started_at.isoformat()
        data["finished_at"] = self.finished_at.isoformat() if self.finished_at else None
        data["duration"] = self.duration
        return data

    @classmethod
    def from_row(cls, row: RowMapping, *, reused: bool = False) -> ReleaseRecord:
        return cls(
            id=row["id"],
            target=row["target"],
            idempotency_key=row["idempotency_key"],
            fingerprint=row["fingerprint"],
            plugin_ref=f"{row['plugin_id']}@{row['plugin_version']}",
            artifact=row["artifact"],
            context=dict(row["context"]),
            status=Status(row["status"]),
            attempts=row["attempts"],
            result=row["result"],
            error=row["error"],
            error_type=row["error_type"],
            retryable=row["retryable"],
            output=row["output"],
            started_at=_aware(row["started_at"]),  # type: ignore[arg-type]
            finished_at=_aware(row["finished_at"]),
            reused=reused,
        )


class Ledger:
    """Release rows in one registry database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def claim(
        self,
        *,
        target: str,
        key: str,
        fingerprint: str,
        plugin_ref: PluginRef,
        artifact: str,
        context: dict[str, str],
    ) -> tuple[str, ReleaseRecord | None]:
        """Insert the release row for (target, key), committed before the plugin runs.

        Returns:
            ``(release_id, None)`` when this call won the claim and must run the release, or
            ``(release_id, record)`` with the earlier, finished release of the same request.

        Raises:
            KeyMismatchError: The key was used for a different request.
            ReleaseInProgressError: The key's release is still running elsewhere.
        """
        release_id = new_release_id()
        values = {
            "id": release_id,
            "target": target,
            "idempotency_key": key,
            "fingerprint": fingerprint,
            "plugin_id": plugin_ref.plugin_id,
            "plugin_version": plugin_ref.version,
            "artifact": artifact,
            "context": context,
            "status": Status.RUNNING.value,
            "attempts": 0,
            "started_at": utcnow(),
        }
        with _db.translate_errors(self.engine.url):
            try:
                with self.engine.begin() as conn:
                    conn.execute(TABLE.insert().values(values))
                return release_id, None
            except sa.exc.IntegrityError:
                pass
        existing = self._by_key(target, key)
        if existing is None:  # pragma: no cover - a unique violation means the row exists
            raise RuntimeError(f"claim on {target}/{key} conflicted but no row was found")
        if existing["fingerprint"] != fingerprint:
            differs = _differences(existing, plugin_ref, artifact, context)
            raise KeyMismatchError(target, key, existing["id"], differs)
        record = ReleaseRecord.from_row(existing, reused=True)
        if record.status is Status.RUNNING:
            raise ReleaseInProgressError(target, key, record.id)
        return record.id, record

    def finish(
        self,
        release_id: str,
        *,
        status: Status,
        attempts: int,
        result: dict[str, Any] | None = None,
        error: str | None = None,
        error_type: str | None = None,
        retryable: bool | None = None,
        output: str | None = None,
    ) -> None:
        """Record the outcome of a release this process claimed."""
        values = {
            "status": status.value,
            "attempts": attempts,
            "result": result,
            "error": error,
            "error_type": error_type,
            "retryable": retryable,
            "output": output,
            "finished_at": utcnow(),
        }
        statement = (
            TABLE.update()
            .where(TABLE.c.id == release_id, TABLE.c.status == Status.RUNNING.value)
            .values(values)
        )
        with _db.translate_errors(self.engine.url), self.engine.begin() as conn:
            conn.execute(statement)

    def get(self, release_id: str) -> ReleaseRecord | None:
        """The release with this id, if any."""
        with _db.reader(self.engine) as conn:
            row = conn.execute(TABLE.select().where(TABLE.c.id == release_id)).mappings().first()
        return None if row is None else ReleaseRecord.from_row(row)

    def recent(self, *, target: str | None = None, limit: int = 20) -> list[ReleaseRecord]:
        """The newest releases first, optionally for one target."""
        query = TABLE.select().order_by(TABLE.c.started_at.desc(), TABLE.c.id.desc()).limit(limit)
        if target is not None:
            query = query.where(TABLE.c.target == target)
        with _db.reader(self.engine) as conn:
            rows = conn.execute(query).mappings().all()
        return [ReleaseRecord.from_row(row) for row in rows]

    def find(self, target: str, key: str) -> ReleaseRecord | None:
        """The release claimed for (target, key), if any, marked as reused."""
        row = self._by_key(target, key)
        return None if row is None else ReleaseRecord.from_row(row, reused=True)

    def _by_key(self, target: str, key: str) -> RowMapping | None:
        query = TABLE.select().where(TABLE.c.target == target, TABLE.c.idempotency_key == key)
        with _db.reader(self.engine) as conn:
            return conn.execute(query).mappings().first()


def _differences(
    row: RowMapping, plugin_ref: PluginRef, artifact: str, context: dict[str, str]
) -> list[str]:
    differs = []
    if row["artifact"] != artifact:
        differs.append("artifact")
    if (row["plugin_id"], row["plugin_version"]) != (plugin_ref.plugin_id, plugin_ref.version):
        differs.append("plugin version")
    if dict(row["context"]) != context:
        differs.append("context")
    return differs or ["config"]
