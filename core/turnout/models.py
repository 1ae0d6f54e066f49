"""The registry's tables, as sqlmodel models.

The release path reads and writes these tables through SQLAlchemy Core (``Model.__table__``)
to keep the ORM off the hot path; administrative commands use the models directly. Every change
here needs a migration in ``turnout/migrations/versions``; a test compares the two.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import JSON, Column, DateTime, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    """Now, as an aware UTC datetime (the only kind turnout stores)."""
    return datetime.now(UTC)


def _timestamp(*, nullable: bool = False, index: bool = False) -> Any:
    column = Column(DateTime(timezone=True), nullable=nullable, index=index)
    return Field(default=None, sa_column=column) if nullable else Field(sa_column=column)


def _json(*, nullable: bool = False) -> Any:
    column = Column(JSON, nullable=nullable)
    return Field(default=None, sa_column=column) if nullable else Field(sa_column=column)


class PluginVersion(SQLModel, table=True):
    """A plugin version turnout knows about, and where its code lives.

    ``source`` is ``environment`` for plugins installed into turnout's own environment (then
    ``location`` is the folder it was found in) or ``store`` for the store's isolated
    environments (then ``location`` is the environment's digest, the same on every machine,
    ``hashes`` the sha256 of each of its files and ``requirement`` what was installed).
    """

    __tablename__ = "plugin_versions"
    __table_args__ = (UniqueConstraint("plugin_id", "version", "source"),)

    id: int | None = Field(default=None, primary_key=True)
    plugin_id: str = Field(index=True)
    version: str
    distribution: str
    entry_point: str
    source: str
    location: str
    requirement: str | None = None
    hashes: dict[str, str] = _json()
    recorded_at: datetime = _timestamp()


class Target(SQLModel, table=True):
    """A named release destination: its default plugin ref, config, policy and routes.

    ``routes`` is the ordered list of overrides (see :mod:`turnout.routing`), stored with the
    target so that one revision fixes its whole routing.

    ``idempotent`` is the operators' word that the plugin may be called again with the same key
    after a runner died mid-call, when it has no ``turnout_probe`` to ask.
    """

    __tablename__ = "targets"

    name: str = Field(primary_key=True)
    plugin_id: str
    plugin_version: str
    config: dict[str, Any] = _json()
    max_attempts: int
    timeout: float
    isolation: str = Field(default="process", sa_column_kwargs={"server_default": "process"})
    idempotent: bool = Field(default=False, sa_column_kwargs={"server_default": sa.false()})
    routes: list[dict[str, Any]] = Field(
        default_factory=list,
        sa_column=Column(JSON, nullable=False, server_default=sa.text("'[]'")),
    )
    revision: int
    created_at: datetime = _timestamp()
    updated_at: datetime = _timestamp()


class TargetRevision(SQLModel, table=True):
    """An append-only snapshot of a target after each change; never updated or deleted.

    ``snapshot`` is ``None`` for the revision that removed the target.
    """

    __tablename__ = "target_revisions"
    __table_args__ = (UniqueConstraint("target", "revision"),)

    id: int | None = Field(default=None, primary_key=True)
    target: str = Field(index=True)
    revision: int
    actor: str
    reason: str
    snapshot: dict[str, Any] | None = _json(nullable=True)
    created_at: datetime = _timestamp()


class Release(SQLModel, table=True):
    """One release request, its attempts and its outcome.

    ``retryable`` says whether the final error was transient, so that asking again with the
    same key answers with the original exit code. ``output`` is the tail of what the plugin
    printed, when it ran in a worker process. ``token`` fences every write after the claim
    and ``lease_expires_at`` says until when the holder is presumed alive (see
    :class:`turnout.releases.Ledger`); ``replay_of`` links a replay to its original;
    ``decision`` records why the release got its version (routing revision, rule, bucket, ref),
    written once at the claim and never changed; ``attempt_log`` holds one entry per attempt
    (when it started, seconds it took, how it ended, the error's type and redacted message).
    """

    __tablename__ = "releases"
    __table_args__ = (
        # A key is one release per target and customer (key_scope): see Ledger.claim.
        UniqueConstraint("target", "key_scope", "idempotency_key", name="uq_releases_key"),
        Index("ix_releases_target_started_at", "target", "started_at"),
        # Covering for Ledger.timeline (the dashboard's charts): it counts releases per
        # target, version, status and time slice from this index alone, never reading a row.
        Index(
            "ix_releases_timeline",
            "started_at",
            "target",
            "plugin_id",
            "plugin_version",
            "status",
            "finished_at",
        ),
        # One customer's releases, newest first (--customer, the dashboard's drill-down).
        Index("ix_releases_customer_started_at", "customer", "started_at"),
    )

    id: str = Field(primary_key=True)
    target: str
    idempotency_key: str
    fingerprint: str
    plugin_id: str
    plugin_version: str
    artifact: str
    context: dict[str, str] = _json()
    customer: str | None = None
    """The context's ``customer``, copied: indexed, where the context (JSON) cannot be."""
    key_scope: str = Field(default="", sa_column_kwargs={"server_default": sa.text("''")})
    """Whose key it is: the customer (``""`` without one). Keys are unique per target and
    scope, so customers who use the same key on one target never meet."""
    plugin_key: str | None = None
    """The key the plugin is called with (:func:`turnout.releases.plugin_key`); ``None`` in
    rows claimed before it was recorded, which were called with ``idempotency_key``."""
    status: str = Field(index=True)
    attempts: int
    result: dict[str, Any] | None = _json(nullable=True)
    error: str | None = None
    error_type: str | None = None
    retryable: bool | None = None
    output: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    token: str | None = None
    lease_expires_at: datetime | None = _timestamp(nullable=True)
    replay_of: str | None = Field(default=None, index=True)
    decision: dict[str, Any] | None = _json(nullable=True)
    attempt_log: list[dict[str, Any]] | None = _json(nullable=True)
    started_at: datetime = _timestamp()
    finished_at: datetime | None = _timestamp(nullable=True)
