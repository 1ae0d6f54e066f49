"""The release ledger: claiming an idempotency key, recording outcomes, reading them back.

A release is claimed by inserting its row, unique on (target, idempotency key), in a short
committed transaction before any plugin code runs. An insert that finds the key taken writes
nothing and fails nothing (``ON CONFLICT DO NOTHING``); its caller answers from the winner's
row instead of running anything. Statements here use SQLAlchemy Core: this is the hot path of
every release.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
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
    LeaseLostError,
    RegistryUnavailableError,
    ReleaseFailedError,
    ReleaseInProgressError,
    ReleaseUnknownError,
    TransientReleaseError,
    UsageError,
)
from turnout.models import Release, Target, utcnow
from turnout.refs import PluginRef
from turnout.routing import PLAIN_TEXT, plain_text

TABLE: sa.Table = Release.__table__  # type: ignore[attr-defined]
_TARGETS: sa.Table = Target.__table__  # type: ignore[attr-defined]
log = logging.getLogger("turnout.releases")

DEFAULT_LEASE = 60.0
"""Seconds a claim stays valid without a heartbeat; renewed every third of that while running."""
MAX_KEY_LENGTH = 200
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+=#~-]*$")
_CONTEXT_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")


class Status(StrEnum):
    """Where a release is in its life; :data:`TRANSITIONS` says where it may go next."""

    CLAIMED = "claimed"
    """Taken over by a caller that is finding out what happened (probe, re-invoke, or not)."""
    RUNNING = "running"
    """An attempt is under way; the holder renews its lease while it runs."""
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    UNKNOWN = "unknown"
    """Its runner died, or was stopped, mid-call and nothing could tell whether it deployed yet:
    a takeover asks the plugin's probe, else a human decides."""
    RECONCILED = "reconciled"
    """Its runner died mid-call, and the plugin's probe (or a human) said it had deployed."""

    @property
    def terminal(self) -> bool:
        return self in TERMINAL

    @property
    def active(self) -> bool:
        """Held under a lease: whoever holds it may still be working."""
        return self in (Status.CLAIMED, Status.RUNNING)


TERMINAL = frozenset({Status.SUCCEEDED, Status.FAILED, Status.TIMED_OUT, Status.RECONCILED})
FAILURES = frozenset({Status.FAILED, Status.TIMED_OUT})
"""The terminal states an error rate counts as failed (over all terminal ones)."""
RAN = frozenset({Status.SUCCEEDED, Status.FAILED, Status.TIMED_OUT})
"""Ran to an outcome under one runner (not reconciled): the releases whose durations count."""

TRANSITIONS: dict[Status, frozenset[Status]] = {
    **{status: frozenset() for status in TERMINAL},
    Status.CLAIMED: frozenset({Status.RUNNING, Status.RECONCILED, Status.UNKNOWN, Status.CLAIMED}),
    Status.RUNNING: frozenset(
        {
            Status.RUNNING,
            Status.SUCCEEDED,
            Status.FAILED,
            Status.TIMED_OUT,
            Status.CLAIMED,
            Status.UNKNOWN,
        }
    ),
    Status.UNKNOWN: frozenset({Status.CLAIMED, Status.RECONCILED, Status.FAILED}),
    Status.FAILED: frozenset({Status.RUNNING}),
}
"""Every legal move of a release, the only place they are defined. A new release is inserted
as RUNNING (its claim starts its first attempt). CLAIMED -> CLAIMED and RUNNING -> CLAIMED are
takeovers of an expired lease; RUNNING -> UNKNOWN is a runner stopped mid-call (SIGTERM, see
:class:`~turnout.errors.Interrupted`); UNKNOWN -> RECONCILED/FAILED is a human's verdict. FAILED ->
RUNNING is a resumption: the same request asked again after a transient failure (see
:func:`resumable`)."""

REPLAYED = "replayed"
"""The fencing token a replay leaves on its original: a replayed release is never resumed."""


def resumable(row: Mapping[Any, Any]) -> bool:
    """Whether asking again with the same key runs more attempts of this ended release.

    True for a release that failed transiently (its last error was retryable) and that no
    replay has superseded. By the releaser contract a transient error means "not done, try
    again with the same key"; a job runner asking again later is that retry, with a fresh
    attempt budget. Anything else answers with its record: a success, a permanent failure, a
    replayed release, and a timed-out one (its last call was cut off at the deadline and may
    have deployed: ``turnout replay`` decides it, with the version in force).
    """
    return (
        row["status"] == Status.FAILED.value and bool(row["retryable"]) and row["token"] != REPLAYED
    )


def sources_of(target: Status) -> frozenset[Status]:
    """The states from which a release may move to ``target``."""
    return frozenset(source for source, targets in TRANSITIONS.items() if target in targets)


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
    """Check release context attributes: identifier-like names; values as route selectors
    have them (non-empty, printable, at most 200 characters, no surrounding spaces)."""
    checked: dict[str, str] = {}
    for name, value in (context or {}).items():
        if not isinstance(name, str) or not _CONTEXT_KEY.match(name):
            raise UsageError(f"invalid context attribute name {name!r}")
        if not isinstance(value, str):
            raise UsageError(f"context attribute {name!r} must be a string")
        if not plain_text(value):
            raise UsageError(
                f"invalid value for context attribute {name!r}: {PLAIN_TEXT} (leave an "
                "attribute out rather than empty)"
            )
        checked[name] = value
    return checked


def fingerprint(
    target: str,
    artifact: str,
    plugin_ref: PluginRef,
    config: Mapping[str, Any],
    context: Mapping[str, str],
) -> str:
    """A canonical digest of a release as claimed: the request (target, artifact, context) and
    what the routing chose for it (the version, the target's config). The same claim always
    has the same one; :meth:`Ledger.claim` tells a new request from a change of routing."""
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
class TimelinePoint:
    """One version's releases to one target in one slice of a :meth:`Ledger.timeline`."""

    target: str
    plugin_ref: str
    bucket: int
    releases: int
    failed: int
    """Failed or timed out."""
    ended: int
    """Succeeded, reconciled, failed or timed out (not running, not unknown)."""
    ran: int
    """Succeeded, failed or timed out: those :attr:`mean_seconds` is the mean of."""
    mean_seconds: float | None
    """Mean seconds from claim to outcome of those that ran to one (not reconciled)."""

    @property
    def error_rate(self) -> float | None:
        return self.failed / self.ended if self.ended else None


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
    replay_of: str | None = None
    decision: dict[str, Any] | None = None
    attempt_log: list[dict[str, Any]] | None = None
    """One entry per attempt: ``attempt``, ``started_at``, ``duration``, ``outcome`` and, for a
    failed one, ``error_type``, ``error`` (redacted) and ``retryable``."""
    plugin_key: str = ""
    """The key the plugin was called with: ``idempotency_key``, made unique per customer when
    the release has one (:func:`plugin_key`)."""
    reused: bool = False
    """True when this call found the key already released and ran nothing."""

    @property
    def exit_code(self) -> int:
        """The CLI exit code: 0 deployed, 75 transient or undecided, 1 permanent failure."""
        if self.status in (Status.SUCCEEDED, Status.RECONCILED):
            return EXIT_OK
        if self.status.active or self.status is Status.UNKNOWN or self.retryable:
            return EXIT_TEMPFAIL
        return EXIT_FAILED

    @property
    def duration(self) -> float | None:
        """Seconds from claim to outcome, once finished."""
        if self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()

    def raise_for_status(self) -> ReleaseRecord:
        """Return self if it deployed; raise the matching error otherwise."""
        if self.status in (Status.SUCCEEDED, Status.RECONCILED):
            return self
        if self.status.active:
            raise ReleaseInProgressError(self.target, self.idempotency_key, self.id)
        if self.status is Status.UNKNOWN:
            raise ReleaseUnknownError(self)
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
    def from_row(cls, row: Mapping[Any, Any], *, reused: bool = False) -> ReleaseRecord:
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
            replay_of=row["replay_of"],
            decision=row["decision"],
            attempt_log=row["attempt_log"],
            plugin_key=called_with(row),
            reused=reused,
        )


class RoutedSinceError(Exception):
    """The key's release is the same request, claimed under routing that has changed since,
    and it is to go on (a transient failure to resume, or a takeover): on the version and the
    target revision its claim recorded, not on the routing in force now.

    Raised by :meth:`Ledger.claim` instead of claiming; nothing was written. The caller loads
    that version and revision and claims again with the release's own fingerprint.
    """

    def __init__(self, record: ReleaseRecord) -> None:
        self.record = record
        super().__init__(f"release {record.id} was claimed under {record.plugin_ref}")


class RoutingMovedError(Exception):
    """The target's routing is no longer at the revision a release was resolved under.

    Raised by :meth:`Ledger.claim` instead of claiming; nothing was written. The caller
    refreshes its routing snapshot and resolves again.
    """

    def __init__(self, target: str, revision: int | None) -> None:
        self.target = target
        self.revision = revision
        super().__init__(f"target {target!r} is now at revision {revision}")


@dataclass(slots=True)
class Claim:
    """This caller's hold on a release: the row's id and the fencing token of its writes."""

    id: str
    token: str
    values: dict[str, Any]
    """The row as this caller last wrote it (to build the record without reading it back)."""
    takeover: bool = False
    """True when the release was claimed before by a runner whose lease expired."""
    previous: Status | None = None
    """The status it had before a takeover (running, claimed or unknown) or a resumption
    (failed, with ``takeover`` false)."""

    @property
    def resumed(self) -> bool:
        """True when this claim resumes a release that ended with a transient failure."""
        return not self.takeover and self.previous is not None

    @property
    def attempts(self) -> int:
        count: int = self.values["attempts"]
        return count

    @property
    def plugin_key(self) -> str:
        """The key the plugin is called with."""
        return called_with(self.values)


class Ledger:
    """Release rows in one registry database.

    Every write after the claim is fenced: it names the claim's token, and it moves the row
    only along :data:`TRANSITIONS`. A caller whose lease expired and whose release was taken
    over finds its writes refused (:class:`~turnout.errors.LeaseLostError`).

    Args:
        engine: The registry's engine.
        lease: Seconds a claim stays valid without a heartbeat.
        clock: Now, as an aware UTC datetime (tests inject one).
    """

    def __init__(
        self,
        engine: Engine,
        *,
        lease: float = DEFAULT_LEASE,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.engine = engine
        self.lease = timedelta(seconds=lease)
        self.clock = clock
        self._heart = _Heartbeat(self)
        self._insert = _insert_unless_claimed(engine.dialect.name)
        self._by_id = TABLE.select().where(TABLE.c.id == sa.bindparam("rid"))
        self._token = sa.select(TABLE.c.token).where(TABLE.c.id == sa.bindparam("rid"))
        self._by_target_key = TABLE.select().where(
            TABLE.c.target == sa.bindparam("t"),
            TABLE.c.key_scope == sa.bindparam("s"),
            TABLE.c.idempotency_key == sa.bindparam("k"),
        )
        self._revision = sa.select(_TARGETS.c.revision).where(_TARGETS.c.name == sa.bindparam("t"))
        self._moves: dict[tuple[Status, tuple[str, ...]], sa.Update] = {}

    def claim(
        self,
        *,
        target: str,
        key: str,
        fingerprint: str,
        plugin_ref: PluginRef,
        artifact: str,
        context: dict[str, str],
        replay_of: str | None = None,
        decision: dict[str, Any] | None = None,
        revision: int | None = None,
    ) -> Claim | ReleaseRecord:
        """Insert the release row for (target, key), committed before any plugin code runs.

        With ``revision``, the claim is made only if the target is still at that routing
        revision, checked in the same transaction: a release never records a decision taken
        under routing that had already changed.

        Returns:
            A :class:`Claim` when this caller must act: a new release (its first attempt
            starts now), or a takeover of one whose runner's lease expired or that is
            ``unknown``. A finished :class:`ReleaseRecord` (``reused``) when the same request
            already ended: nothing is to run.

        Raises:
            KeyMismatchError: The key was used for a different request (another artifact or
                context).
            ReleaseInProgressError: The key's release is held under a live lease.
            RoutingMovedError: The target is no longer at ``revision``; nothing was written.
            RoutedSinceError: The same request, claimed under other routing, is to go on (a
                resumption or a takeover): on its own version and revision; nothing was
                written. (Ended, it answers with its record, as a same claim does.)
        """
        now = self.clock()
        values: dict[str, Any] = {
            "id": new_release_id(),
            "target": target,
            "idempotency_key": key,
            "fingerprint": fingerprint,
            "plugin_id": plugin_ref.plugin_id,
            "plugin_version": plugin_ref.version,
            "artifact": artifact,
            "context": context,
            "customer": context.get("customer"),
            "key_scope": key_scope(context),
            "plugin_key": plugin_key(key, context),
            "status": Status.RUNNING.value,
            "attempts": 1,
            "token": secrets.token_hex(8),
            "lease_expires_at": now + self.lease,
            "replay_of": replay_of,
            "decision": decision,
            "started_at": now,
        }
        with _db.translate_errors(self.engine.url), self.engine.begin() as conn:
            if revision is not None:
                now_at = conn.execute(self._revision, {"t": target}).scalar()
                if now_at != revision:
                    raise RoutingMovedError(target, now_at)
            inserted = conn.execute(self._insert, values).rowcount == 1
            if inserted and replay_of is not None:
                self._supersede(conn, replay_of, target, key)  # refused: nothing is written
        if inserted:
            return Claim(values["id"], values["token"], values)
        existing = self._row(target=target, key=key, scope=values["key_scope"])
        if existing is None:  # pragma: no cover - a conflict means the row exists
            raise RuntimeError(f"claim on {target}/{key} conflicted but no row was found")
        if existing["fingerprint"] != fingerprint:
            differs = _differences(existing, artifact, context)
            if differs:
                raise KeyMismatchError(target, key, existing["id"], differs)
            # The same request; only the routing (the version or the config) moved since.
            if Status(existing["status"]).terminal and not resumable(existing):
                return ReleaseRecord.from_row(existing, reused=True)
            raise RoutedSinceError(ReleaseRecord.from_row(existing))
        return self._take_over(existing, now)

    @staticmethod
    def _supersede(conn: sa.Connection, original: str, target: str, key: str) -> None:
        """Fence a replay's original so that it is never resumed, in the replay's transaction.

        Refused while the original is held (its runner is resuming or reconciling it): the two
        would deploy the same release twice.
        """
        statement = (
            TABLE.update()
            .where(
                TABLE.c.id == original,
                TABLE.c.status.not_in([Status.CLAIMED.value, Status.RUNNING.value]),
            )
            .values(token=REPLAYED)
        )
        if conn.execute(statement).rowcount != 1:
            held = sa.select(TABLE.c.idempotency_key).where(TABLE.c.id == original)
            raise ReleaseInProgressError(target, conn.execute(held).scalar() or key, original)

    def _take_over(self, row: RowMapping, now: datetime) -> Claim | ReleaseRecord:
        status = Status(row["status"])
        if status.terminal:
            if resumable(row):
                return self._resume(row, status, now)
            return ReleaseRecord.from_row(row, reused=True)
        expires = _aware(row["lease_expires_at"])
        if status.active and expires is not None and expires > now:
            raise ReleaseInProgressError(row["target"], row["idempotency_key"], row["id"])
        changes: dict[str, Any] = {
            "status": Status.CLAIMED.value,
            "lease_expires_at": now + self.lease,
        }
        if not self._reclaim(row, changes):  # another caller took it over first
            raise ReleaseInProgressError(row["target"], row["idempotency_key"], row["id"])
        return Claim(
            row["id"], changes["token"], {**row, **changes}, takeover=True, previous=status
        )

    def _reclaim(self, row: RowMapping, changes: dict[str, Any]) -> bool:
        """Write ``changes`` and a new token to ``row`` if it still has the status and token it
        was read with; of two callers racing for one row, one wins."""
        changes["token"] = secrets.token_hex(8)
        statement = (
            TABLE.update()
            .where(TABLE.c.id == row["id"], TABLE.c.status == row["status"])
            .where(_same_token(row["token"]))
            .values(changes)
        )
        with _db.translate_errors(self.engine.url), self.engine.begin() as conn:
            return bool(conn.execute(statement).rowcount == 1)

    def _resume(self, row: RowMapping, status: Status, now: datetime) -> Claim | ReleaseRecord:
        """Claim an ended, transiently failed release again to run more attempts.

        Fenced like a takeover: the row moves only if it still has the status and token read,
        so of two callers asking at once one resumes, and a replay that superseded the release
        in between (it sets the token to :data:`REPLAYED`) stops the resumption.
        """
        changes: dict[str, Any] = {
            "status": Status.RUNNING.value,
            "lease_expires_at": now + self.lease,
            "finished_at": None,
            "error": None,
            "error_type": None,
            "retryable": None,
        }
        if self._reclaim(row, changes):
            return Claim(row["id"], changes["token"], {**row, **changes}, previous=status)
        now_row = self._row(release_id=row["id"])
        if now_row is not None and Status(now_row["status"]).terminal:
            return ReleaseRecord.from_row(now_row, reused=True)  # replayed meanwhile
        raise ReleaseInProgressError(row["target"], row["idempotency_key"], row["id"])

    def move(self, claim: Claim, to: Status, **values: Any) -> ReleaseRecord:
        """Move a claimed release to ``to`` with ``values``, fenced by the claim's token.

        Raises:
            LeaseLostError: The claim's lease expired and another caller took the release over
                (or it already moved on): nothing was written.
        """
        if to.terminal or to is Status.UNKNOWN:
            values.setdefault("finished_at", self.clock())
        values["status"] = to.value
        if to.active:
            values["lease_expires_at"] = self.clock() + self.lease
        statement = self._move_statement(to, tuple(values))
        params = {f"v_{name}": value for name, value in values.items()}
        params["w_id"], params["w_token"] = claim.id, claim.token
        with _db.translate_errors(self.engine.url), self.engine.begin() as conn:
            moved = conn.execute(statement, params).rowcount == 1
        if not moved:
            raise LeaseLostError(claim.id, to.value)
        claim.values.update(values)
        return ReleaseRecord.from_row(_as_row(claim.values))

    def _move_statement(self, to: Status, names: tuple[str, ...]) -> sa.Update:
        """The fenced UPDATE of a move to ``to`` setting ``names``, built once per shape.

        Built on every move, the statement cost more Python than the rest of a release's
        bookkeeping (coercing each clause, then a cache key); the legal sources are rendered as
        constants, so nothing is expanded per execution either.
        """
        shape = (to, names)
        statement = self._moves.get(shape)
        if statement is None:
            sources = sorted(source.value for source in sources_of(to))
            statement = (
                TABLE.update()
                .where(
                    TABLE.c.id == sa.bindparam("w_id"),
                    TABLE.c.token == sa.bindparam("w_token"),
                    TABLE.c.status.in_([sa.literal_column(f"'{value}'") for value in sources]),
                )
                .values(
                    {name: sa.bindparam(f"v_{name}", type_=TABLE.c[name].type) for name in names}
                )
            )
            self._moves[shape] = statement
        return statement

    def settle(self, release_id: str, verdict: Status, *, actor: str, reason: str) -> ReleaseRecord:
        """A human's verdict on an ``unknown`` release: it deployed (reconciled) or it did not.

        Raises:
            UsageError: No such release, it is not ``unknown``, or the verdict is not one of
                ``reconciled`` / ``failed``.
        """
        if verdict not in (Status.RECONCILED, Status.FAILED):
            raise UsageError("a verdict is 'succeeded' (it deployed) or 'failed' (it did not)")
        note = f"settled by {actor}" + (f": {reason}" if reason else "")
        values: dict[str, Any] = {"status": verdict.value, "finished_at": self.clock()}
        if verdict is Status.RECONCILED:
            values |= {"result": {"settled_by": actor, "reason": reason}, "error": None}
        else:
            values |= {"error": f"did not deploy ({note})", "retryable": False}
        statement = (
            TABLE.update()
            .where(TABLE.c.id == release_id, TABLE.c.status == Status.UNKNOWN.value)
            .values(values)
        )
        with _db.translate_errors(self.engine.url), self.engine.begin() as conn:
            settled = conn.execute(statement).rowcount == 1
        record = self.get(release_id)
        if record is None:
            raise UsageError(f"no release {release_id!r}; list them with: turnout releases")
        if not settled:
            raise UsageError(
                f"release {release_id} is {record.status.value}, not unknown; only an unknown "
                "release takes a verdict"
            )
        return record

    @contextlib.contextmanager
    def hold(self, claim: Claim) -> Iterator[Claim]:
        """Keep ``claim``'s lease alive (a heartbeat every third of the lease) while inside."""
        self._heart.add(claim)
        try:
            yield claim
        finally:
            self._heart.discard(claim)

    def close(self) -> None:
        """Stop the heartbeat thread, if it runs."""
        self._heart.stop()

    def heartbeat(self, claims: list[Claim]) -> list[Claim]:
        """Extend the leases of active claims; return those whose lease was lost.

        A claim that is no longer active under its own token was moved on by its holder (the
        release finished, or went ``unknown``) since the caller listed it: it is not renewed,
        and not lost either. Lost means another runner's token replaced this claim's.
        """
        lost = []
        expires = self.clock() + self.lease
        with _db.translate_errors(self.engine.url), self.engine.begin() as conn:
            for claim in claims:
                statement = (
                    TABLE.update()
                    .where(TABLE.c.id == claim.id, TABLE.c.token == claim.token)
                    .where(TABLE.c.status.in_([Status.CLAIMED.value, Status.RUNNING.value]))
                    .values(lease_expires_at=expires)
                )
                if conn.execute(statement).rowcount == 1:
                    continue
                token = conn.execute(self._token, {"rid": claim.id}).scalar()
                if token != claim.token:
                    lost.append(claim)
        return lost

    def get(self, release_id: str) -> ReleaseRecord | None:
        """The release with this id, if any."""
        row = self._row(release_id=release_id)
        return None if row is None else ReleaseRecord.from_row(row)

    def find(self, target: str, key: str, customer: str | None = None) -> ReleaseRecord | None:
        """The release claimed for ``key`` on ``target`` by ``customer`` (by no customer when
        ``None``: keys are scoped per target and customer), if any, marked as reused."""
        row = self._row(target=target, key=key, scope=customer or "")
        return None if row is None else ReleaseRecord.from_row(row, reused=True)

    def recent(
        self,
        *,
        target: str | None = None,
        since: datetime | None = None,
        statuses: Sequence[Status] | None = None,
        plugin: PluginRef | str | None = None,
        customer: str | None = None,
        originals_only: bool = False,
        limit: int | None = 20,
        oldest_first: bool = False,
    ) -> list[ReleaseRecord]:
        """Releases, newest first (or oldest first), filtered as asked.

        ``plugin`` is a ref (that version) or a plugin id (every version of it); ``customer``
        matches the ``customer`` attribute of the release's context.
        """
        order = (TABLE.c.started_at, TABLE.c.id)
        query = TABLE.select().order_by(*(order if oldest_first else (c.desc() for c in order)))
        query = _filtered(query, target, since, statuses, plugin, customer)
        if originals_only:
            query = query.where(TABLE.c.replay_of.is_(None))
        if limit is not None:
            query = query.limit(limit)
        with _db.reader(self.engine) as conn:
            rows = conn.execute(query).mappings().all()
        return [ReleaseRecord.from_row(row) for row in rows]

    def outcomes(
        self,
        by: Sequence[str],
        *,
        since: datetime | None = None,
        target: str | None = None,
        plugin: PluginRef | str | None = None,
        customer: str | None = None,
    ) -> Iterator[tuple[Any, ...]]:
        """What :mod:`turnout.stats` counts, streamed: one tuple per matching release.

        A tuple holds the value of each dimension in ``by`` (see :data:`DIMENSIONS`), then the
        status, the attempt count and the seconds from claim to outcome (``None`` while it
        runs). Dimensions and durations are computed by the database, so that no row's context
        or timestamps are decoded here.
        """
        columns = [_dimension(name) for name in by]
        columns += [TABLE.c.status, TABLE.c.attempts, _seconds(self.engine.dialect.name)]
        query = _filtered(sa.select(*columns), target, since, None, plugin, customer)
        with _db.reader(self.engine) as conn:
            for row in conn.execution_options(yield_per=5000).execute(query):
                yield tuple(row)

    def timeline(
        self,
        *,
        since: datetime,
        until: datetime,
        buckets: int,
        target: str | None = None,
    ) -> list[TimelinePoint]:
        """Releases per target, plugin version and time bucket, counted by the database.

        The window from ``since`` to ``until`` is cut into ``buckets`` equal slices (bucket 0
        is the oldest); a point exists only for a slice where its version released.
        """
        if buckets < 1 or until <= since:
            raise ValueError("a timeline needs at least one bucket and until after since")
        dialect = self.engine.dialect.name
        width = max(1, math.ceil((until - since).total_seconds() / buckets))
        start = math.floor(since.timestamp())
        bucket = ((_epoch(TABLE.c.started_at, dialect) - start) // width).label("bucket")
        # As turnout.stats counts: the rate is failed over ended; durations of those that ran.
        failed, ended, ran = (
            TABLE.c.status.in_([status.value for status in states])
            for states in (FAILURES, TERMINAL, RAN)
        )
        query = (
            sa.select(
                TABLE.c.target,
                TABLE.c.plugin_id,
                TABLE.c.plugin_version,
                bucket,
                sa.func.count(),
                sa.func.sum(sa.case((failed, 1), else_=0)),
                sa.func.sum(sa.case((ended, 1), else_=0)),
                sa.func.sum(sa.case((ran, 1), else_=0)),
                sa.func.avg(sa.case((ran, _seconds(dialect)), else_=None)),
            )
            .where(TABLE.c.started_at >= since, TABLE.c.started_at < until)
            .group_by(TABLE.c.target, TABLE.c.plugin_id, TABLE.c.plugin_version, bucket)
        )
        if target is not None:
            query = query.where(TABLE.c.target == target)
        with _db.reader(self.engine) as conn:
            rows = conn.execute(query).all()
        return [
            TimelinePoint(
                target=name,
                plugin_ref=f"{plugin_id}@{version}",
                bucket=min(int(index), buckets - 1),
                releases=int(count),
                failed=int(failures or 0),
                ended=int(done or 0),
                ran=int(timed or 0),
                mean_seconds=None if mean is None else float(mean),
            )
            for name, plugin_id, version, index, count, failures, done, timed, mean in rows
        ]

    def contexts(self, target: str, *, since: datetime) -> list[dict[str, str]]:
        """The context of each release to ``target`` started since ``since``, oldest first."""
        query = (
            sa.select(TABLE.c.context)
            .where(TABLE.c.target == target, TABLE.c.started_at >= since)
            .order_by(TABLE.c.started_at)
        )
        with _db.reader(self.engine) as conn:
            return list(conn.execute(query).scalars())

    def abandoned(self, *, target: str | None = None) -> list[ReleaseRecord]:
        """Releases whose runner's lease expired mid-flight, and those left ``unknown``."""
        now = self.clock()
        held = sa.and_(
            TABLE.c.status.in_([Status.CLAIMED.value, Status.RUNNING.value]),
            TABLE.c.lease_expires_at < now,
        )
        query = (
            TABLE.select()
            .where(sa.or_(held, TABLE.c.status == Status.UNKNOWN.value))
            .order_by(TABLE.c.started_at)
        )
        if target is not None:
            query = query.where(TABLE.c.target == target)
        with _db.reader(self.engine) as conn:
            rows = conn.execute(query).mappings().all()
        return [ReleaseRecord.from_row(row) for row in rows]

    def _row(
        self,
        *,
        release_id: str | None = None,
        target: str | None = None,
        key: str | None = None,
        scope: str = "",
    ) -> RowMapping | None:
        params: dict[str, Any]
        if release_id is not None:
            statement, params = self._by_id, {"rid": release_id}
        else:
            statement, params = self._by_target_key, {"t": target, "s": scope, "k": key}
        with _db.reader(self.engine) as conn:
            return conn.execute(statement, params).mappings().first()


class _Heartbeat:
    """One thread per ledger that renews the leases of the claims held in this process.

    A release shorter than a third of the lease never costs a heartbeat write.
    """

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self._claims: dict[str, Claim] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, claim: Claim) -> None:
        with self._lock:
            self._claims[claim.id] = claim
            if self._thread is None:
                self._stop.clear()
                self._thread = threading.Thread(
                    target=self._run, name="turnout-heartbeat", daemon=True
                )
                self._thread.start()

    def discard(self, claim: Claim) -> None:
        with self._lock:
            self._claims.pop(claim.id, None)

    def stop(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        self._stop.set()
        if thread is not None:
            thread.join(timeout=5)

    def _run(self) -> None:
        interval = self._ledger.lease.total_seconds() / 3
        while not self._stop.wait(interval):
            self.beat()

    def beat(self) -> None:
        """Renew every claim held now; warn about those lost to another runner."""
        with self._lock:
            claims = list(self._claims.values())
        if not claims:
            return
        try:
            lost = self._ledger.heartbeat(claims)
        except RegistryUnavailableError as exc:  # an outage: one line a beat, no traceback
            log.warning("heartbeat failed, the next one tries again: %s", exc)
            return
        except Exception:  # the next beat tries again; meanwhile the lease may lapse
            log.exception("heartbeat failed")
            return
        with self._lock:
            # A claim let go since the copy was finished by its holder; whatever became of
            # its row after that (an unknown release asked again) is no loss of this process.
            lost = [claim for claim in lost if self._claims.get(claim.id) is claim]
        for claim in lost:
            log.warning("release %s: lease lost to another runner", claim.id)


DIMENSIONS = ("version", "plugin", "target", "customer", "plan", "project", "channel")
"""What releases can be grouped by: ``version`` is the plugin ref (``id@version``), ``plugin``
the id; ``customer``, ``plan``, ``project`` and ``channel`` come from the release's context."""


def _dimension(name: str) -> Any:
    if name == "version":
        return (TABLE.c.plugin_id + "@" + TABLE.c.plugin_version).label(name)
    if name == "plugin":
        return TABLE.c.plugin_id.label(name)
    if name in ("target", "customer"):
        return TABLE.c[name]
    if name in DIMENSIONS:
        return TABLE.c.context[name].as_string().label(name)
    raise ValueError(f"cannot group by {name}; use {', '.join(DIMENSIONS)}")


def _seconds(dialect: str) -> Any:
    """Seconds from ``started_at`` to ``finished_at``, to the microsecond, in SQL."""
    started, finished = TABLE.c.started_at, TABLE.c.finished_at
    if dialect == "postgresql":
        return sa.extract("epoch", finished - started)
    # SQLite keeps "YYYY-MM-DD HH:MM:SS.ffffff": whole seconds, then the fraction from col 20.
    whole = _epoch(finished, dialect) - _epoch(started, dialect)
    fraction = sa.cast(sa.func.substr(finished, 20), sa.Float) - sa.cast(
        sa.func.substr(started, 20), sa.Float
    )
    return whole + fraction


def _epoch(column: Any, dialect: str) -> Any:
    """Whole seconds since 1970 (UTC) of a timestamp column, in SQL."""
    if dialect == "postgresql":
        return sa.cast(sa.func.floor(sa.extract("epoch", column)), sa.BigInteger)
    # Without its fraction: SQLite rounds one to the millisecond, so "...:57.9996" reads as 58.
    return sa.cast(sa.func.strftime("%s", sa.func.substr(column, 1, 19)), sa.Integer)


def _filtered(
    query: Any,
    target: str | None,
    since: datetime | None,
    statuses: Sequence[Status] | None,
    plugin: PluginRef | str | None,
    customer: str | None,
) -> Any:
    if target is not None:
        query = query.where(TABLE.c.target == target)
    if since is not None:
        query = query.where(TABLE.c.started_at >= since)
    if statuses is not None:
        query = query.where(TABLE.c.status.in_([s.value for s in statuses]))
    if isinstance(plugin, PluginRef):
        query = query.where(
            TABLE.c.plugin_id == plugin.plugin_id, TABLE.c.plugin_version == plugin.version
        )
    elif plugin is not None:
        query = query.where(TABLE.c.plugin_id == plugin)
    if customer is not None:
        query = query.where(TABLE.c.customer == customer)
    return query


def key_scope(context: Mapping[str, str]) -> str:
    """Whose idempotency key a release's is: its customer's, or nobody's (``""``)."""
    return context.get("customer") or ""


PLUGIN_KEY_MARK = "!"
"""Between the caller's key and its customer's digest in a plugin key: a character no
idempotency key holds, so a customer's plugin key never equals a key without a customer."""


def plugin_key(key: str, context: Mapping[str, str]) -> str:
    """The key a plugin is called with for the release of ``key`` in ``context``.

    The key itself when the release has no customer; otherwise the key, ``!``, and 16 hex
    digits of a BLAKE2b digest of the customer (``build-42!3f9c...``). A plugin recognises a
    repeat by its key (and target): the customer's part keeps two customers who use the same
    key on one target apart there too, as they are in the registry (RELIABILITY S7), and a
    digest keeps the customer's name, and any character a destination would refuse, out of it.
    """
    scope = key_scope(context)
    if not scope:
        return key
    digest = hashlib.blake2b(scope.encode(), digest_size=8, person=b"turnout-key").hexdigest()
    return f"{key}{PLUGIN_KEY_MARK}{digest}"


def called_with(row: Mapping[str, Any]) -> str:
    """The key a release row's plugin is called with: its recorded ``plugin_key``, or the
    bare key in rows claimed before it was recorded (migration 0010), which is what they
    were called with."""
    key: str = row.get("plugin_key") or row["idempotency_key"]
    return key


def _insert_unless_claimed(dialect: str) -> Any:
    """``INSERT ... ON CONFLICT (target, key_scope, idempotency_key) DO NOTHING`` for
    ``dialect``.

    A repeated key inserts nothing (rowcount 0) instead of failing on the unique constraint:
    on PostgreSQL a failed insert logs an error, rolls back and leaves a dead tuple, and a
    replay storm repeats every key.
    """
    insert: Any
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite":  # ON CONFLICT since SQLite 3.24
        from sqlalchemy.dialects.sqlite import insert
    else:  # pragma: no cover - turnout's registry is SQLite or PostgreSQL
        raise ValueError(f"unsupported registry database {dialect!r}")
    conflict = [TABLE.c.target, TABLE.c.key_scope, TABLE.c.idempotency_key]
    statement = insert(TABLE).on_conflict_do_nothing(index_elements=conflict)
    # SQLAlchemy reports an INSERT's rowcount only when asked to keep it (2.0.28+).
    return statement.execution_options(preserve_rowcount=True)


def _same_token(token: str | None) -> Any:
    return TABLE.c.token.is_(None) if token is None else TABLE.c.token == token


_ROW_DEFAULTS = {
    "result": None,
    "error": None,
    "error_type": None,
    "retryable": None,
    "output": None,
    "finished_at": None,
    "replay_of": None,
    "decision": None,
    "attempt_log": None,
}


def _as_row(values: dict[str, Any]) -> dict[str, Any]:
    return {**_ROW_DEFAULTS, **values}


def _differences(row: RowMapping, artifact: str, context: dict[str, str]) -> list[str]:
    """What the caller asked differently from the key's release (the target is the same).

    The version and the config are not the caller's: they are what the routing chose when the
    key was claimed, and a change of routing since does not make another request.
    """
    differs = []
    if row["artifact"] != artifact:
        differs.append("artifact")
    if dict(row["context"]) != context:
        differs.append("context")
    return differs
