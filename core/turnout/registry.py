"""The registry: targets, their revision history and the plugin versions turnout knows.

Every change to a target writes a new :class:`~turnout.models.TargetRevision` in the same
transaction, and nothing in that history is ever updated or deleted. Callers validate a change
(plugin installed, config accepted) before asking the registry to write it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import URL
from sqlmodel import Session, col, select
from sqlmodel.sql.expression import SelectOfScalar

from turnout import _db
from turnout.errors import StaleRevisionError, UnknownTargetError
from turnout.models import PluginVersion, Target, TargetRevision, utcnow
from turnout.refs import PluginRef
from turnout.routing import Move, Route, all_refs, parse_routes, route_dicts

ENVIRONMENT_SOURCE = "environment"
"""``PluginVersion.source`` of a plugin installed in turnout's own environment."""

DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_TIMEOUT = 60.0
MAX_ATTEMPTS_LIMIT = 100
"""The most attempts a target may allow one release."""
TIMEOUT_LIMIT = 86400.0
"""The longest deadline of one attempt, in seconds (a day)."""
DEFAULT_ISOLATION = "process"
ISOLATIONS = ("process", "inline")

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class TargetSpec:
    """What a release needs of a target, read in one query."""

    name: str
    plugin_ref: PluginRef
    config: dict[str, Any]
    max_attempts: int
    timeout: float
    isolation: str
    revision: int
    idempotent: bool = False
    routes: tuple[Route, ...] = ()

    @classmethod
    def from_snapshot(cls, name: str, revision: int, snapshot: Mapping[str, Any]) -> TargetSpec:
        """The target that a revision history entry (:meth:`snapshot`) describes."""
        return cls(
            name=name,
            plugin_ref=PluginRef.parse(snapshot["plugin"]),
            config=dict(snapshot["config"]),
            max_attempts=snapshot["max_attempts"],
            timeout=snapshot["timeout"],
            isolation=snapshot.get("isolation", DEFAULT_ISOLATION),
            idempotent=bool(snapshot.get("idempotent")),
            revision=revision,
            routes=parse_routes(snapshot.get("routes")),
        )

    def snapshot(self) -> dict[str, Any]:
        """The target as stored in its revision history: its whole routing."""
        return {
            "plugin": str(self.plugin_ref),
            "config": self.config,
            "max_attempts": self.max_attempts,
            "timeout": self.timeout,
            "isolation": self.isolation,
            "idempotent": self.idempotent,
            "routes": route_dicts(self.routes),
        }


@dataclass(frozen=True, slots=True)
class TargetChange:
    """The outcome of an edit: the target now, and what it was (``None`` if new).

    For a dry run, ``target`` is what the edit would write, nothing was written, and ``moves``
    is its blast radius: who, seen in recent releases, would get another plugin version.
    """

    target: TargetSpec
    before: TargetSpec | None
    changed: bool = field(default=True)
    moves: list[Move] | None = None
    dry_run: bool = False


_TARGETS = Target.__table__  # type: ignore[attr-defined]
_TARGET_BY_NAME = sa.select(_TARGETS).where(_TARGETS.c.name == sa.bindparam("name"))
_TARGETS_BY_NAME = sa.select(_TARGETS).order_by(_TARGETS.c.name)
_VERSIONS = PluginVersion.__table__  # type: ignore[attr-defined]
_VERSION_BY_REF = sa.select(_VERSIONS).where(
    _VERSIONS.c.plugin_id == sa.bindparam("plugin_id"),
    _VERSIONS.c.version == sa.bindparam("version"),
    _VERSIONS.c.source == sa.bindparam("source"),
)


def changes(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, list[Any]]:
    """What a revision changed: ``{field: [before, after]}``.

    Config keys read as ``config.KEY`` and routes as ``route.ID``, described in words.
    """

    def flat(snapshot: dict[str, Any] | None) -> dict[str, Any]:
        if snapshot is None:
            return {}
        fields = {k: v for k, v in snapshot.items() if k not in ("config", "routes")}
        fields |= {f"config.{k}": v for k, v in (snapshot.get("config") or {}).items()}
        fields |= {f"route.{r.id}": r.describe() for r in parse_routes(snapshot.get("routes"))}
        return fields

    old, new = flat(before), flat(after)
    return {
        field: [old.get(field), new.get(field)]
        for field in sorted(old.keys() | new.keys())
        if old.get(field) != new.get(field)
    }


def _plugin_version(ref: PluginRef, source: str) -> SelectOfScalar[PluginVersion]:
    return select(PluginVersion).where(
        PluginVersion.plugin_id == ref.plugin_id,
        PluginVersion.version == ref.version,
        PluginVersion.source == source,
    )


def _version_by_ref(conn: sa.Connection, ref: PluginRef, source: str) -> PluginVersion | None:
    params = {"plugin_id": ref.plugin_id, "version": ref.version, "source": source}
    row = conn.execute(_VERSION_BY_REF, params).one_or_none()
    return None if row is None else PluginVersion.model_validate(row._mapping)


def _spec(row: Target) -> TargetSpec:
    return TargetSpec(
        name=row.name,
        plugin_ref=PluginRef(row.plugin_id, row.plugin_version),
        config=dict(row.config),
        max_attempts=row.max_attempts,
        timeout=row.timeout,
        isolation=row.isolation,
        revision=row.revision,
        idempotent=row.idempotent,
        routes=parse_routes(row.routes),
    )


class Registry:
    """One registry database: its engine and the operations on its tables."""

    def __init__(self, url: URL | str | None = None) -> None:
        self.url = url if isinstance(url, URL) else _db.database_url(url)
        self.engine = _db.create_engine(self.url)
        self._schema_checked = False

    @property
    def display_url(self) -> str:
        return _db.display_url(self.url)

    def close(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()

    def upgrade(self) -> tuple[str | None, str | None]:
        """Apply the shipped migrations; return the revisions before and after."""
        result = _db.upgrade(self.engine)
        self._schema_checked = True
        return result

    def ensure_schema(self) -> None:
        """Refuse to go on when the database is not at the code's migration (checked once)."""
        if not self._schema_checked:
            _db.check_schema(self.engine)
            self._schema_checked = True

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """An ORM session in one write transaction, committed on success."""
        self.ensure_schema()
        with (
            _db.translate_errors(self.url),
            Session(self.engine, expire_on_commit=False) as s,
            s.begin(),
        ):
            yield s

    def _write(self, work: Callable[[Session], _T]) -> _T:
        """Run ``work`` in one write transaction, and once more if it lost a race to insert.

        Two callers that both find no row and both insert it: on SQLite, ``BEGIN IMMEDIATE``
        queues them, but on PostgreSQL the second insert fails on the unique key once the
        first commits. Run again, ``work`` finds the row the first one committed and changes
        it instead; any other failure, or a second conflict, raises as usual.
        """
        self.ensure_schema()
        with _db.translate_errors(self.url):
            try:
                with Session(self.engine, expire_on_commit=False) as s, s.begin():
                    return work(s)
            except sa.exc.IntegrityError:
                pass
            with Session(self.engine, expire_on_commit=False) as s, s.begin():
                return work(s)

    # Targets -----------------------------------------------------------------------------

    def get_target(self, name: str) -> TargetSpec:
        """The target called ``name``.

        Raises:
            UnknownTargetError: There is none.
        """
        self.ensure_schema()
        with _db.reader(self.engine) as conn:
            row = conn.execute(_TARGET_BY_NAME, {"name": name}).one_or_none()
        if row is None:
            raise UnknownTargetError(name)
        return _spec(row)  # type: ignore[arg-type]

    def list_targets(self) -> list[TargetSpec]:
        """Every target, by name (one Core query, as :meth:`get_target` reads one)."""
        self.ensure_schema()
        with _db.reader(self.engine) as conn:
            rows = conn.execute(_TARGETS_BY_NAME).all()
        return [_spec(row) for row in rows]  # type: ignore[arg-type]

    def set_target(
        self,
        name: str,
        plugin_ref: PluginRef,
        *,
        config: dict[str, Any] | None = None,
        max_attempts: int | None = None,
        timeout: float | None = None,
        isolation: str | None = None,
        idempotent: bool | None = None,
        routes: tuple[Route, ...] | None = None,
        expect_revision: int | None = None,
        actor: str,
        reason: str,
    ) -> TargetChange:
        """Create or change a target or its routes and record the new revision.

        Options left as ``None`` keep the target's current value (or the default for a new
        target). A change that alters nothing writes nothing. ``expect_revision`` makes it a
        compare-and-set: the edit is refused unless the target is at that revision (0 for a
        target that never existed).

        Raises:
            StaleRevisionError: ``expect_revision`` is not the current revision.
        """
        now = utcnow()

        def change(s: Session) -> TargetChange:
            row = s.get(Target, name, with_for_update=True)
            before = _spec(row) if row else None
            last = None
            if row is None:
                last = s.exec(
                    select(sa.func.max(TargetRevision.revision)).where(
                        TargetRevision.target == name
                    )
                ).one()
            current = row.revision if row is not None else (last or 0)
            if expect_revision is not None and expect_revision != current:
                raise StaleRevisionError(name, expect_revision, current)
            if row is None:
                row = Target(
                    name=name,
                    plugin_id=plugin_ref.plugin_id,
                    plugin_version=plugin_ref.version,
                    config=config or {},
                    max_attempts=max_attempts or DEFAULT_MAX_ATTEMPTS,
                    timeout=timeout or DEFAULT_TIMEOUT,
                    isolation=isolation or DEFAULT_ISOLATION,
                    idempotent=bool(idempotent),
                    routes=route_dicts(routes or ()),
                    revision=(last or 0) + 1,
                    created_at=now,
                    updated_at=now,
                )
            else:
                assert before is not None  # noqa: S101 - set from row above
                new_config = before.config if config is None else config
                new_attempts = before.max_attempts if max_attempts is None else max_attempts
                new_timeout = before.timeout if timeout is None else timeout
                new_isolation = before.isolation if isolation is None else isolation
                new_idempotent = before.idempotent if idempotent is None else idempotent
                new_routes = route_dicts(before.routes if routes is None else routes)
                proposed = {
                    "plugin": str(plugin_ref),
                    "config": new_config,
                    "max_attempts": new_attempts,
                    "timeout": new_timeout,
                    "isolation": new_isolation,
                    "idempotent": new_idempotent,
                    "routes": new_routes,
                }
                if proposed == before.snapshot():
                    return TargetChange(before, before, changed=False)
                row.plugin_id = plugin_ref.plugin_id
                row.plugin_version = plugin_ref.version
                row.config = new_config
                row.max_attempts = new_attempts
                row.timeout = new_timeout
                row.isolation = new_isolation
                row.idempotent = new_idempotent
                row.routes = new_routes
                row.revision += 1
                row.updated_at = now
            s.add(row)
            spec = _spec(row)
            s.add(
                TargetRevision(
                    target=name,
                    revision=spec.revision,
                    actor=actor,
                    reason=reason,
                    snapshot=spec.snapshot(),
                    created_at=now,
                )
            )
            return TargetChange(spec, before)

        return self._write(change)

    def remove_target(
        self, name: str, *, actor: str, reason: str, expect_revision: int | None = None
    ) -> TargetSpec:
        """Remove a target; its history and its releases stay.

        Raises:
            UnknownTargetError: There is none.
            StaleRevisionError: ``expect_revision`` is not the current revision.
        """
        with self.session() as s:
            row = s.get(Target, name, with_for_update=True)
            if row is None:
                raise UnknownTargetError(name)
            if expect_revision is not None and expect_revision != row.revision:
                raise StaleRevisionError(name, expect_revision, row.revision)
            spec = _spec(row)
            s.delete(row)
            s.add(
                TargetRevision(
                    target=name,
                    revision=spec.revision + 1,
                    actor=actor,
                    reason=reason,
                    snapshot=None,
                    created_at=utcnow(),
                )
            )
        return spec

    def target_at(self, name: str, revision: int) -> TargetSpec | None:
        """The target as it was at ``revision`` (``None``: no such revision, or it removed the
        target)."""
        with self.session() as s:
            query = select(TargetRevision).where(
                TargetRevision.target == name, TargetRevision.revision == revision
            )
            row = s.exec(query).first()
        if row is None or row.snapshot is None:
            return None
        return TargetSpec.from_snapshot(name, revision, row.snapshot)

    def target_history(self, name: str) -> list[TargetRevision]:
        """Every revision of a target, oldest first."""
        with self.session() as s:
            query = (
                select(TargetRevision)
                .where(TargetRevision.target == name)
                .order_by(col(TargetRevision.revision))
            )
            return list(s.exec(query))

    # Plugin versions ---------------------------------------------------------------------

    def find_plugin_version(self, ref: PluginRef, source: str) -> PluginVersion | None:
        """The recorded provider of exactly ``ref`` from ``source``, if any (one indexed query)."""
        self.ensure_schema()
        with _db.reader(self.engine) as conn:
            return _version_by_ref(conn, ref, source)

    def record_plugin_version(
        self,
        ref: PluginRef,
        *,
        source: str,
        distribution: str,
        entry_point: str,
        location: str,
        hashes: dict[str, str] | None = None,
        requirement: str | None = None,
    ) -> PluginVersion:
        """Record (or refresh) where ``ref`` from ``source`` lives."""

        def record(s: Session) -> PluginVersion:
            row = s.exec(_plugin_version(ref, source)).one_or_none()
            if row is None:
                row = PluginVersion(
                    plugin_id=ref.plugin_id,
                    version=ref.version,
                    source=source,
                    distribution=distribution,
                    entry_point=entry_point,
                    location=location,
                )
            row.distribution = distribution
            row.entry_point = entry_point
            row.location = location
            row.hashes = hashes or {}
            row.requirement = requirement
            row.recorded_at = utcnow()
            s.add(row)
            return row

        return self._write(record)

    def add_store_versions(
        self,
        plugins: Mapping[PluginRef, tuple[str, str]],
        *,
        location: str,
        hashes: dict[str, str],
        requirement: str,
        known: Sequence[PluginVersion] | None = None,
    ) -> dict[PluginRef, PluginVersion | None]:
        """Record the store plugin versions of one environment, all of them or none.

        ``plugins`` maps each ref to its distribution and entry point. Returns each ref's row
        as it was before (``None``: there was none). When every existing row names this
        ``location``, the missing ones are inserted; when one names another, nothing is
        written and the caller refuses the install. ``known``: the store's rows as read a
        moment ago (``plugin_versions("store")``), which spares reading them again; a row
        another installer added since fails the insert on the unique key, and then the rows are
        read again in a second transaction.
        """
        self.ensure_schema()
        was = {PluginRef(row.plugin_id, row.version): row for row in known or ()}

        def add(conn: sa.Connection, read: bool) -> dict[PluginRef, PluginVersion | None]:
            before = {
                ref: _version_by_ref(conn, ref, "store") if read else was.get(ref)
                for ref in plugins
            }
            if any(row is not None and row.location != location for row in before.values()):
                return before
            now = utcnow()
            missing = [
                {
                    "plugin_id": ref.plugin_id,
                    "version": ref.version,
                    "source": "store",
                    "distribution": distribution,
                    "entry_point": entry_point,
                    "location": location,
                    "hashes": hashes,
                    "requirement": requirement,
                    "recorded_at": now,
                }
                for ref, (distribution, entry_point) in plugins.items()
                if before[ref] is None
            ]
            if missing:
                conn.execute(_VERSIONS.insert(), missing)
            return before

        with _db.translate_errors(self.url):
            try:
                with self.engine.begin() as conn:
                    return add(conn, read=known is None)
            except sa.exc.IntegrityError:
                pass
            with self.engine.begin() as conn:
                return add(conn, read=True)

    def plugin_versions(self, source: str | None = None) -> list[PluginVersion]:
        """Every recorded plugin version (of one source), by id and version."""
        with self.session() as s:
            query = select(PluginVersion).order_by(
                col(PluginVersion.plugin_id), col(PluginVersion.version), col(PluginVersion.source)
            )
            if source is not None:
                query = query.where(PluginVersion.source == source)
            return list(s.exec(query))

    def forget_plugin_version(self, ref: PluginRef, source: str) -> None:
        """Delete the record of ``ref`` from ``source`` (its files are the store's business)."""
        with self.session() as s:
            row = s.exec(_plugin_version(ref, source)).one_or_none()
            if row is not None:
                s.delete(row)

    def targets_by_plugin(self) -> dict[str, list[str]]:
        """Target names keyed by each plugin ref they point to, by default or in a route."""
        users: dict[str, list[str]] = {}
        for target in self.list_targets():
            for ref in all_refs(target):
                users.setdefault(str(ref), []).append(target.name)
        return users
