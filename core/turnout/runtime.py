"""The release path and the checked registry edits that the CLI and the Python API share.

One release: validate the request, read the target, get exactly its plugin version (a warm
worker process, or the inline copy), claim the idempotency key (committed before any hook
runs), call ``turnout_release`` under the retry policy with the same key every attempt, and
record the outcome.
"""

from __future__ import annotations

import contextlib
import dataclasses
import getpass
import logging
import os
import random
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import URL

from turnout import _db, _secrets, _settings
from turnout.errors import (
    ConfigRejectedError,
    ConfigurationError,
    Interrupted,
    KeyMismatchError,
    LeaseLostError,
    PluginInstallError,
    PluginNotInstalledError,
    RegistryUnavailableError,
    RelativeArtifactError,
    StaleRevisionError,
    TurnoutError,
    UnknownTargetError,
    UsageError,
    WorkerTimeoutError,
)
from turnout.models import PluginVersion
from turnout.refs import PluginRef
from turnout.registry import (
    DEFAULT_ISOLATION,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_TIMEOUT,
    ENVIRONMENT_SOURCE,
    ISOLATIONS,
    MAX_ATTEMPTS_LIMIT,
    TIMEOUT_LIMIT,
    Registry,
    TargetChange,
    TargetSpec,
)
from turnout.releases import (
    DEFAULT_LEASE,
    Claim,
    Ledger,
    ReleaseRecord,
    RoutedSinceError,
    RoutingMovedError,
    Status,
    fingerprint,
    validate_context,
    validate_key,
)
from turnout.routing import (
    DEFAULT_SPLIT_KEY,
    PLAIN_TEXT,
    Decision,
    Move,
    Route,
    Router,
    all_refs,
    blast_radius,
    find_route,
    plain_text,
    split_salt,
    with_route,
    without_route,
)
from turnout.store import InstallRequest, Store, StorePlugin

if TYPE_CHECKING:
    # Imported where they are used instead: a command that releases nothing (turnout target
    # list, say) then loads neither OpenTelemetry, tenacity, pluggy nor the worker code.
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

    from turnout import environment
    from turnout.releaser import Releaser
    from turnout.telemetry import Telemetry
    from turnout.worker import WorkerReleaser

log = logging.getLogger("turnout")

REPLAY_STATUSES = (Status.FAILED, Status.TIMED_OUT, Status.UNKNOWN)
ACTOR_ENV = "TURNOUT_ACTOR"
LEASE_ENV = "TURNOUT_LEASE_SECONDS"
OUTPUT_LIMIT = 64 << 10
ROUTING_RETRIES = 20
"""How often a release resolves again when its target changed between reading and claiming:
as often as an edit retries (EDIT_RETRIES), so a release racing a burst of edits (8 runners
setting one target at once: up to 7 land under it) gets through instead of answering 75."""
EDIT_RETRIES = 20
PLAN_HISTORY = timedelta(days=30)


def default_actor() -> str:
    """Who is making a change: ``TURNOUT_ACTOR``, else the OS user."""
    actor = os.environ.get(ACTOR_ENV)
    if actor:
        return actor
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "unknown"


@dataclass(frozen=True, slots=True)
class InstallOutcome:
    """One releaser an install provided, and whether it was new to the registry."""

    plugin: StorePlugin
    digest: str
    status: str  # "installed" | "unchanged"


class Turnout:
    """A handle on one registry and one plugin store: releases and checked edits.

    Args:
        db: A database URL or a SQLite file path; defaults to ``TURNOUT_DATABASE_URL``, then
            ``sqlite:///registry.db``.
        home: The plugin store's folder; defaults to ``TURNOUT_HOME``, then the platform's user
            data folder.
        sleep: How to wait between attempts (tests inject a fake).
        lease: Seconds a claim stays valid without a heartbeat; default
            ``TURNOUT_LEASE_SECONDS``, else 60.
        tracer_provider: Where release spans go (:mod:`turnout.telemetry`); default the
            global OpenTelemetry provider.
        meter_provider: Where release metrics go; default the global provider.
    """

    def __init__(
        self,
        db: URL | str | None = None,
        *,
        home: str | os.PathLike[str] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        lease: float | None = None,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        if lease is None:
            lease = _settings.number(LEASE_ENV, DEFAULT_LEASE)
        self.registry = Registry(db)
        self.ledger = Ledger(self.registry.engine, lease=lease)
        self.store = Store(home)
        self._sleep = sleep
        self._providers = (tracer_provider, meter_provider)
        self._telemetry: Telemetry | None = None
        self._releasers: dict[tuple[PluginRef, str], Releaser] = {}
        self._validated: set[tuple[str, int, PluginRef]] = set()
        self._routing: dict[str, Router] = {}
        self._lock = threading.Lock()

    @property
    def telemetry(self) -> Telemetry:
        """Where this handle's release spans and metrics go. Made on first use, so that a
        command that releases nothing does not import OpenTelemetry."""
        if self._telemetry is None:
            from turnout.telemetry import Telemetry

            self._telemetry = Telemetry(*self._providers)
        return self._telemetry

    @telemetry.setter
    def telemetry(self, value: Telemetry) -> None:
        self._telemetry = value

    def close(self) -> None:
        """Stop this handle's worker processes and release the database connections."""
        with self._lock:
            releasers, self._releasers = list(self._releasers.values()), {}
        for releaser in releasers:
            close = getattr(releaser, "close", None)  # a WorkerReleaser's processes
            if close is not None:
                close()
        self.ledger.close()
        self.registry.close()

    def __enter__(self) -> Turnout:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # Releasing ---------------------------------------------------------------------------

    def release(
        self,
        target: str,
        artifact: str,
        *,
        key: str,
        context: Mapping[str, str] | None = None,
        replay_of: str | None = None,
    ) -> ReleaseRecord:
        """Release ``artifact`` to ``target`` exactly once for ``key``.

        Returns:
            The succeeded release; ``reused`` is true when an earlier call with the same key and
            the same request had already done it, and nothing ran.

        Raises:
            ReleaseFailedError: The releaser failed permanently (``TransientReleaseError``: it
                failed transiently on every attempt, or timed out); the failure is recorded.
                Asking again with the same key resumes a transient failure (more attempts);
                it answers a permanent or timed-out one with its record.
            KeyMismatchError: ``key`` was used before for a different request; nothing ran.
            ReleaseInProgressError: ``key``'s release is running elsewhere; nothing ran.
            ReleaseUnknownError: An earlier runner died mid-call and nothing can tell whether
                it deployed; a human must check (the message says what).
            LeaseLostError: This call's lease expired and another runner took over.
            ConfigurationError: Unknown target, plugin version not installed or not loadable,
                config rejected; nothing ran and nothing was recorded.
            UsageError: A malformed key or context.
        """
        key = validate_key(key)
        if not isinstance(artifact, str) or not artifact:
            raise UsageError("artifact must be a non-empty path or URL")
        as_given = artifact
        # A path is recorded absolute: a replay or a reconciliation run from another folder
        # must find the same file, not one of the same name there.
        artifact = os.path.abspath(artifact) if _relative(artifact) else artifact
        ctx = validate_context(context)
        record: ReleaseRecord | None = None
        refused: ConfigurationError | None = None
        observed = self.telemetry
        try:
            with observed.release_span(target, key, ctx) as span:
                try:
                    try:
                        record = self._release(target, artifact, key, ctx, replay_of)
                    except KeyMismatchError as mismatch:
                        if not self._recorded_as_given(mismatch, as_given):
                            raise
                        record = self._release(target, as_given, key, ctx, replay_of)
                except TurnoutError as exc:
                    record = _record_of(exc)
                    if record is None and isinstance(exc, ConfigurationError):
                        refused = exc
                    observed.observe(span, record, exc)
                    raise
                observed.observe(span, record, None)
                return record
        finally:
            # Counted once the span has ended: inside it, the SDK would sample an exemplar
            # for each measurement, which costs more than the measurement itself.
            if record is not None and not record.reused:
                observed.count(record)
            elif refused is not None:  # the setup is wrong here: worth an alert
                observed.count_refused(target, refused.plugin_ref or "")

    def _recorded_as_given(self, mismatch: KeyMismatchError, as_given: str) -> bool:
        """Whether the key's release recorded the artifact as the relative path ``as_given``
        (claimed before paths were recorded absolute): it goes on as recorded, so that an
        upgrade does not turn a release under way, or one left to reconcile, into a mismatch.
        """
        if mismatch.differs != ["artifact"] or not _relative(as_given):
            return False
        earlier = self.ledger.get(mismatch.release_id)
        return earlier is not None and earlier.artifact == as_given

    def _release(
        self,
        target: str,
        artifact: str,
        key: str,
        ctx: dict[str, str],
        replay_of: str | None,
    ) -> ReleaseRecord:
        for _ in range(ROUTING_RETRIES):
            router = self._router(target)
            spec, decision = router.spec, router.resolve(ctx)
            ref = decision.plugin_ref
            print_ = fingerprint(spec.name, artifact, ref, spec.config, ctx)
            try:
                call = self._prepare(spec, ref)
            except ConfigurationError:
                # A key that was already released still answers with its outcome.
                earlier = self.ledger.find(spec.name, key, ctx.get("customer"))
                if earlier is None or not earlier.status.terminal or earlier.fingerprint != print_:
                    raise
                return earlier.raise_for_status()
            try:
                outcome = self.ledger.claim(
                    target=spec.name,
                    key=key,
                    fingerprint=print_,
                    plugin_ref=ref,
                    artifact=artifact,
                    context=ctx,
                    replay_of=replay_of,
                    decision=decision.record(),
                    revision=spec.revision,
                )
            except RoutingMovedError as moved:
                self._routing.pop(spec.name, None)  # resolve again under the new revision
                if moved.revision is None:
                    raise UnknownTargetError(spec.name) from None
                stale = StaleRevisionError(spec.name, spec.revision, moved.revision)
                continue
            except RoutedSinceError as since:
                return self._release_as_claimed(since.record, artifact, key, ctx)
            break
        else:
            raise stale  # the routing changed under every try: let the runner retry later
        return self._go_on(outcome, call, artifact, ctx, key)

    def _prepare(self, spec: TargetSpec, ref: PluginRef) -> _Call:
        """The releaser of ``ref`` for ``spec``, the config checked (once per target revision,
        ref and process: a revision fixes the config) and its secrets resolved.

        Raises:
            ConfigurationError: Naming ``ref`` (``plugin_ref``) whatever the cause.
        """
        try:
            releaser = self._releaser(ref, spec.isolation)
            if (spec.name, spec.revision, ref) not in self._validated:
                self._validate(releaser, spec, ref)
                self._validated.add((spec.name, spec.revision, ref))
            config, secrets = _secrets.resolve(spec.config)
        except ConfigurationError as refused:
            if refused.plugin_ref is None:  # a secret, say: the version is still this one
                refused.plugin_ref = str(ref)
            raise
        return _Call(spec, ref, releaser, config, secrets)

    def _release_as_claimed(
        self, record: ReleaseRecord, artifact: str, key: str, ctx: dict[str, str]
    ) -> ReleaseRecord:
        """Go on with a release claimed under routing that has changed since (a transient
        failure asked again, or a takeover), on the version and the target revision its claim
        recorded: a release keeps the version it claimed, whatever the routing says now.
        ``turnout replay`` is what moves a release to the version in force."""
        revision = (record.decision or {}).get("revision")
        spec = None if revision is None else self.registry.target_at(record.target, revision)
        ref = PluginRef.parse(record.plugin_ref)
        if spec is None or fingerprint(spec.name, artifact, ref, spec.config, ctx) != (
            record.fingerprint
        ):
            raise KeyMismatchError(
                record.target, key, record.id, [f"routing, whose revision {revision} is gone"]
            )
        call = self._prepare(spec, ref)
        outcome = self.ledger.claim(
            target=spec.name,
            key=key,
            fingerprint=record.fingerprint,
            plugin_ref=ref,
            artifact=artifact,
            context=ctx,
            decision=record.decision,
        )
        return self._go_on(outcome, call, artifact, ctx, key)

    def _go_on(
        self,
        outcome: Claim | ReleaseRecord,
        call: _Call,
        artifact: str,
        ctx: dict[str, str],
        key: str,
    ) -> ReleaseRecord:
        """What a claim answered: a record (nothing runs), or a release to run or take over."""
        spec, ref = call.spec, call.ref
        if isinstance(outcome, ReleaseRecord):
            log.info(
                "release %s: key %r already released; nothing ran",
                outcome.id,
                key,
                extra=_fields(outcome.id, spec.name, ref),
            )
            return outcome.raise_for_status()
        run = _Attempts(self, outcome, call, artifact, ctx, key)
        with self.ledger.hold(outcome):
            if outcome.takeover:
                record = run.reconcile()
            elif outcome.resumed:  # failed transiently before: more attempts, same key
                log.info(
                    "release %s: asked again after a transient failure; resuming at attempt %d",
                    outcome.id,
                    outcome.attempts + 1,
                    extra=_fields(outcome.id, spec.name, ref),
                )
                record = run.run(first_attempt=outcome.attempts + 1)
            else:
                record = run.run()
        return record.raise_for_status()

    def _router(self, name: str) -> Router:
        """The routing snapshot's entry for ``name``, read from the registry on first use.

        The ledger's claim checks the entry's revision in its own transaction, and the entry
        is dropped and read again when the target moved on: a release never loads routes
        through the ORM, and never records a decision under superseded routing.
        """
        router = self._routing.get(name)
        if router is None:
            router = self._routing[name] = Router(self.registry.get_target(name))
        return router

    def resolve(self, target: str, context: Mapping[str, str] | None = None) -> Decision:
        """The plugin ref a release to ``target`` with ``context`` gets now, and why.

        Reads the target's current revision from the registry (and refreshes the snapshot).
        """
        ctx = validate_context(context)
        self._routing.pop(target, None)
        return self._router(target).resolve(ctx)

    def _releaser(self, ref: PluginRef, isolation: str) -> Releaser:
        """The loaded releaser for ``ref``: found through the registry, never by a scan."""
        with self._lock:
            releaser = self._releasers.get((ref, isolation))
            if releaser is None:
                releaser = self._load(ref, isolation)
                self._releasers[(ref, isolation)] = releaser
            return releaser

    def _load(self, ref: PluginRef, isolation: str) -> Releaser:
        if isolation == "process":
            stored = self.registry.find_plugin_version(ref, "store")
            if stored is not None:
                if not self.store.has(stored.location):
                    raise PluginNotInstalledError(
                        str(ref),
                        f"{ref} is in the registry's store but not on this machine "
                        f"(environment {stored.location} is missing from {self.store.envs})",
                        f"run: turnout plugin install '{stored.requirement}'",
                    )
                env = str(self.store.path(stored.location))
                return self._start_worker(ref, stored, (env,))
        try:
            row = self._environment_row(ref, isolation)
        except PluginNotInstalledError:
            if isolation == "process":
                self._explain_missing_from_store(ref)
            raise
        if isolation == "inline":
            from turnout import environment

            return environment.load(ref, row.distribution, row.entry_point)
        # Only turnout's environment has this version: it still runs in its own process (with
        # deadlines and crash containment), on turnout's own path, which is its environment.
        turnout_path = tuple(p for p in sys.path if p)
        return self._start_worker(ref, row, turnout_path, own_environment=False)

    def _explain_missing_from_store(self, ref: PluginRef) -> None:
        """Raise a refusal naming the versions of ``ref``'s plugin that the store does have."""
        others = [r for r in self.registry.plugin_versions("store") if r.plugin_id == ref.plugin_id]
        if others:
            have = ", ".join(f"{r.plugin_id}@{r.version}" for r in others)
            raise PluginNotInstalledError(
                str(ref),
                f"{ref} is not installed: the store has {have}",
                f"run: turnout plugin install '{others[-1].distribution}=={ref.version}'",
            )

    def _environment_row(self, ref: PluginRef, isolation: str) -> PluginVersion:
        row = self.registry.find_plugin_version(ref, ENVIRONMENT_SOURCE)
        if row is not None:
            return row
        from turnout import environment

        try:
            return self._record(environment.find(ref))
        except PluginNotInstalledError:
            if isolation == "inline" and self.registry.find_plugin_version(ref, "store"):
                raise PluginNotInstalledError(
                    str(ref),
                    f"{ref} is only in the store, and inline isolation runs plugins installed "
                    "in turnout's own environment",
                    "use --isolation process, or pip install it beside turnout",
                ) from None
            raise

    def _start_worker(
        self,
        ref: PluginRef,
        row: PluginVersion,
        path: tuple[str, ...],
        *,
        own_environment: bool = True,
    ) -> WorkerReleaser:
        from turnout.worker import WorkerReleaser, WorkerSpec

        spec = WorkerSpec(
            ref.plugin_id, ref.version, row.distribution, row.entry_point, path, own_environment
        )
        self.store.workers.mkdir(parents=True, exist_ok=True)
        # The start timeout is the worker's own: one version's worker serves many targets.
        releaser = WorkerReleaser(spec, home=self.store.workers)
        releaser.ensure_started()
        return releaser

    def _record(self, plugin: environment.EnvironmentPlugin) -> PluginVersion:
        return self.registry.record_plugin_version(
            plugin.ref,
            source=ENVIRONMENT_SOURCE,
            distribution=plugin.distribution,
            entry_point=plugin.entry_point,
            location=plugin.location,
        )

    @staticmethod
    def _validate(releaser: Releaser, spec: TargetSpec, ref: PluginRef) -> None:
        try:
            releaser.validate_config(spec.config, timeout=spec.timeout)
        except ValueError as exc:
            raise ConfigRejectedError(str(ref), str(exc), spec.name) from exc

    # Reconciling and replaying -------------------------------------------------------------

    def reconcile(
        self,
        *,
        target: str | None = None,
        progress: Callable[[Reconciliation], None] | None = None,
    ) -> list[Reconciliation]:
        """Settle every release whose runner died mid-call, and retry every ``unknown`` one.

        Each goes through :meth:`release` with its own key and request, which takes it over
        and asks the plugin's probe, re-invokes it (idempotent targets), or leaves it unknown.
        ``progress`` is called after each.
        """
        results = []
        for record in self.ledger.abandoned(target=target):
            try:
                after = self.release(
                    record.target,
                    record.artifact,
                    key=record.idempotency_key,
                    context=record.context,
                )
                results.append(Reconciliation(record, after, None))
            except TurnoutError as exc:
                results.append(Reconciliation(record, _record_of(exc), exc))
            if progress is not None:
                progress(results[-1])
        return results

    def settle(
        self, release_id: str, verdict: str, *, actor: str | None = None, reason: str = ""
    ) -> ReleaseRecord:
        """Record a human's verdict on an ``unknown`` release: ``succeeded`` or ``failed``."""
        status = {"succeeded": Status.RECONCILED, "failed": Status.FAILED}.get(verdict)
        if status is None:
            raise UsageError("a verdict is 'succeeded' (it deployed) or 'failed' (it did not)")
        self.registry.ensure_schema()
        return self.ledger.settle(release_id, status, actor=actor or default_actor(), reason=reason)

    def replay_candidates(
        self,
        *,
        since: timedelta,
        target: str | None = None,
        statuses: Sequence[Status] = REPLAY_STATUSES,
        customer: str | None = None,
    ) -> list[ReleaseRecord]:
        """Original releases (not replays) of the window that match, oldest first."""
        self.registry.ensure_schema()
        records = self.ledger.recent(
            target=target,
            since=self.ledger.clock() - since,
            statuses=statuses,
            originals_only=True,
            limit=None,
            oldest_first=True,
        )
        if customer is not None:
            records = [r for r in records if r.context.get("customer") == customer]
        return records

    def replay(
        self,
        originals: Sequence[ReleaseRecord],
        *,
        dry_run: bool = False,
        progress: Callable[[Replay], None] | None = None,
    ) -> list[Replay]:
        """Release each original again under the mapping in force now, as a new release.

        The new release links to its original (``replay_of``) and its key is derived from the
        original's id and the target's current revision: replaying one window twice runs each
        release once, and replaying after another fix (a new revision) runs it again.
        """
        replays = []
        for target in {original.target for original in originals}:
            self._routing.pop(target, None)  # the mapping in force now, read once per target
        for original in originals:
            try:
                if _relative(original.artifact):
                    raise RelativeArtifactError(original.id, original.artifact)
                router = self._router(original.target)
            except (UnknownTargetError, RelativeArtifactError) as exc:
                item = Replay(original, None, None, None, exc)
            else:
                key = f"replay.{original.id}.r{router.spec.revision}"
                ref = router.resolve(original.context).plugin_ref
                item = Replay(original, key, str(ref), None, None)
                if not dry_run:
                    try:
                        item.record = self.release(
                            original.target,
                            original.artifact,
                            key=key,
                            context=original.context,
                            replay_of=original.id,
                        )
                    except TurnoutError as exc:
                        item.record, item.error = _record_of(exc), exc
            replays.append(item)
            if progress is not None:
                progress(item)
        return replays

    # Registry edits ----------------------------------------------------------------------

    def set_target(
        self,
        name: str,
        plugin: str | PluginRef,
        *,
        config: dict[str, Any] | None = None,
        max_attempts: int | None = None,
        timeout: float | None = None,
        isolation: str | None = None,
        idempotent: bool | None = None,
        **edit: Any,
    ) -> TargetChange:
        """Point a target at an installed plugin version, after the plugin accepts its config.

        Refused, with the row left as it was, when the ref is not an exact pin, the version is
        not installed (in the store, or in turnout's environment for inline isolation), its
        code does not load, or its ``turnout_validate_config`` rejects the config (checked
        with every version the target's routes name, when the config or isolation changes).
        Takes the keyword arguments of :meth:`edit_target`.
        """
        ref = plugin if isinstance(plugin, PluginRef) else PluginRef.parse(plugin)
        if max_attempts is not None and not 1 <= max_attempts <= MAX_ATTEMPTS_LIMIT:
            raise UsageError(f"max attempts must be from 1 to {MAX_ATTEMPTS_LIMIT}")
        if timeout is not None and not 0 < timeout <= TIMEOUT_LIMIT:  # NaN and inf too
            raise UsageError(
                f"timeout must be a number of seconds above 0 and at most {TIMEOUT_LIMIT:g} (a day)"
            )
        if isolation is not None and isolation not in ISOLATIONS:
            raise UsageError(f"isolation must be one of {', '.join(ISOLATIONS)}")
        if not plain_text(name):
            raise UsageError(f"invalid target name {name!r}: {PLAIN_TEXT}")

        def change(current: TargetSpec | None) -> TargetSpec:
            return TargetSpec(
                name=name,
                plugin_ref=ref,
                config=config if config is not None else (current.config if current else {}),
                max_attempts=max_attempts
                or (current.max_attempts if current else DEFAULT_MAX_ATTEMPTS),
                timeout=timeout or (current.timeout if current else DEFAULT_TIMEOUT),
                isolation=isolation or (current.isolation if current else DEFAULT_ISOLATION),
                idempotent=idempotent
                if idempotent is not None
                else (current.idempotent if current else False),
                revision=current.revision if current else 0,
                routes=current.routes if current else (),
            )

        return self.edit_target(name, change, **edit)

    def add_route(
        self,
        name: str,
        selector: str,
        values: str | Sequence[str],
        plugin: str | PluginRef,
        **edit: Any,
    ) -> TargetChange:
        """Send releases whose context has ``selector`` in ``values`` to ``plugin``.

        The same selector with the same values re-points that route; a value another route
        already selects is refused. Takes the keyword arguments of :meth:`edit_target`.
        """
        ref = plugin if isinstance(plugin, PluginRef) else PluginRef.parse(plugin)
        values = (values,) if isinstance(values, str) else tuple(values)
        change = _routes_edit(
            name, lambda now: with_route(now.routes, selector, values, to=ref, target=name)
        )
        return self.edit_target(name, change, **edit)

    def split(
        self,
        name: str,
        weights: Sequence[tuple[str | PluginRef, float]] | Mapping[str, float],
        *,
        key: str = DEFAULT_SPLIT_KEY,
        selector: str | None = None,
        values: str | Sequence[str] = (),
        **edit: Any,
    ) -> TargetChange:
        """Split releases between refs by weight (percentages adding up to 100), sticky on ``key``.

        Without a selector the split applies to everyone no pin or rule matched; with one, to
        what it selects. Changing the weights of an existing split keeps its salt, so keys only
        move from refs that shrink to refs that grow. Takes the keyword arguments of
        :meth:`edit_target`.
        """
        pairs = weights.items() if isinstance(weights, Mapping) else weights
        parsed = [
            (ref if isinstance(ref, PluginRef) else PluginRef.parse(ref), weight)
            for ref, weight in pairs
        ]
        values = (values,) if isinstance(values, str) else tuple(values)

        def split(now: TargetSpec) -> tuple[Route, ...]:
            salt = split_salt(name, now.revision + 1)  # the revision this edit writes
            return with_route(
                now.routes, selector, values, weights=parsed, key=key, salt=salt, target=name
            )

        return self.edit_target(name, _routes_edit(name, split), **edit)

    def remove_route(
        self,
        name: str,
        route_id: str | None = None,
        *,
        selector: str | None = None,
        value: str | None = None,
        **edit: Any,
    ) -> TargetChange:
        """Remove a route, named by its id or by what it selects (no selector: the split).

        Takes the keyword arguments of :meth:`edit_target`.
        """

        def remove(now: TargetSpec) -> tuple[Route, ...]:
            routes = now.routes
            wanted = route_id or find_route(routes, selector, value, target=name).id
            return without_route(routes, wanted)

        return self.edit_target(name, _routes_edit(name, remove), **edit)

    def remove_target(
        self,
        name: str,
        *,
        expect_revision: int | None = None,
        actor: str | None = None,
        reason: str = "",
        dry_run: bool = False,
        history: timedelta = PLAN_HISTORY,
    ) -> TargetChange:
        """Remove a target; its history and its releases stay (see :meth:`edit_target`).

        A dry run writes nothing; its ``moves`` say who, seen in recent releases, would be
        left without a version.
        """
        current = self.registry.get_target(name)
        if expect_revision is not None and expect_revision != current.revision:
            raise StaleRevisionError(name, expect_revision, current.revision)
        if dry_run:
            moves = self._moves(current, None, history)
            return TargetChange(current, current, moves=moves, dry_run=True)
        removed = self.registry.remove_target(
            name,
            actor=actor or default_actor(),
            reason=reason,
            expect_revision=expect_revision,
        )
        self._routing.pop(name, None)
        return TargetChange(removed, removed)

    def rollback(self, name: str, *, to_revision: int | None = None, **edit: Any) -> TargetChange:
        """Write a new revision of ``name`` that copies an earlier one (default: the previous).

        The copy includes the routes (and each split's salt, so the same keys land where they
        did). It goes through the same checks as any edit (every version it names must be
        installed and accept the config). Takes the keyword arguments of :meth:`edit_target`;
        the reason defaults to "rollback to revision N".

        Raises:
            UsageError: No such revision, or nothing earlier to roll back to.
        """
        history = self.registry.target_history(name)
        if not history:
            raise UnknownTargetError(name)
        current = history[-1].revision
        wanted = to_revision if to_revision is not None else current - 1
        earlier = next((r for r in history if r.revision == wanted), None)
        if earlier is None or wanted >= current:
            raise UsageError(
                f"target {name!r} has no earlier revision {wanted}; see: turnout history {name}"
            )
        if earlier.snapshot is None:
            raise UsageError(f"revision {wanted} of {name!r} removed the target; pick another")
        snapshot = earlier.snapshot

        def restore(now: TargetSpec | None) -> TargetSpec:
            return TargetSpec.from_snapshot(name, now.revision if now else 0, snapshot)

        if edit.get("expect_revision") is None:
            # The revision whose history was read: an edit landing since refuses the rollback
            # (the CLI passes expect_revision=None when --expect-revision is not given).
            edit["expect_revision"] = current
        if not edit.get("reason"):
            edit["reason"] = f"rollback to revision {wanted}"
        return self.edit_target(name, restore, **edit)

    def edit_target(
        self,
        name: str,
        change: Callable[[TargetSpec | None], TargetSpec],
        *,
        expect_revision: int | None = None,
        actor: str | None = None,
        reason: str = "",
        dry_run: bool = False,
        history: timedelta = PLAN_HISTORY,
    ) -> TargetChange:
        """Apply ``change`` (the target now, or ``None``, to the target wanted) as one revision.

        Every plugin version the change newly points at (all of them, when the config or the
        isolation changes) must be installed and accept the target's config, checked through
        its own worker when isolated; otherwise the edit is refused and nothing is written.

        Args:
            expect_revision: Refuse unless the target is at this revision (0: never existed).
                Without it, the edit is applied to the latest revision, read again if another
                edit lands in between.
            actor: Who (default ``TURNOUT_ACTOR``, else the OS user); kept in the history.
            reason: Why; kept in the history.
            dry_run: Check and preview only: the returned change holds the blast radius
                (``moves``) and nothing is written.
            history: How far back the blast radius looks for the customers and projects that
                released to the target.

        Raises:
            StaleRevisionError: The target is not at ``expect_revision``.
        """
        for attempt in range(1, EDIT_RETRIES + 1):
            try:
                current: TargetSpec | None = self.registry.get_target(name)
            except UnknownTargetError:
                current = None
            # A target that does not exist (or was removed) is checked by the registry, which
            # knows the revision its removal wrote.
            at = current.revision if current else expect_revision
            if current is not None and expect_revision not in (None, at):
                raise StaleRevisionError(name, expect_revision, current.revision)
            proposed = change(current)
            self._preflight(current, proposed)
            if dry_run:
                return self._plan(current, proposed, history)
            try:
                written = self.registry.set_target(
                    name,
                    proposed.plugin_ref,
                    config=proposed.config,
                    max_attempts=proposed.max_attempts,
                    timeout=proposed.timeout,
                    isolation=proposed.isolation,
                    idempotent=proposed.idempotent,
                    routes=proposed.routes,
                    expect_revision=at,
                    actor=actor or default_actor(),
                    reason=reason,
                )
            except StaleRevisionError:
                if expect_revision is not None or attempt == EDIT_RETRIES:
                    raise
                # Another edit landed since the read: apply this one to it, after a pause
                # that spreads out writers racing for the same target.
                self._sleep(random.uniform(0, 0.005 * attempt))  # noqa: S311 - jitter only
                continue
            self._routing.pop(name, None)
            return written
        raise AssertionError("unreachable")  # pragma: no cover

    def _preflight(self, current: TargetSpec | None, proposed: TargetSpec) -> None:
        """Check every version ``proposed`` newly relies on; raise if one refuses."""
        refs = all_refs(proposed)
        if (
            current is not None
            and current.config == proposed.config
            and current.isolation == proposed.isolation
        ):
            known = set(all_refs(current))
            refs = [ref for ref in refs if ref not in known]
        for ref in refs:
            self._validate(self._releaser(ref, proposed.isolation), proposed, ref)

    def _plan(
        self, current: TargetSpec | None, proposed: TargetSpec, history: timedelta
    ) -> TargetChange:
        """The change ``proposed`` would make, and who it would move; nothing is written."""
        changed = current is None or current.snapshot() != proposed.snapshot()
        revision = (current.revision if current else 0) + (1 if changed else 0)
        proposed = dataclasses.replace(proposed, revision=revision)
        moves = self._moves(current, proposed, history)
        return TargetChange(proposed, current, changed, moves=moves, dry_run=True)

    def _moves(
        self, before: TargetSpec | None, after: TargetSpec | None, history: timedelta
    ) -> list[Move]:
        """Who, among the contexts released to the target within ``history``, would move."""
        target = after if after is not None else before
        assert target is not None  # noqa: S101 - one side exists
        contexts = self.ledger.contexts(target.name, since=self.ledger.clock() - history)
        return blast_radius(
            Router(before) if before else None, Router(after) if after else None, contexts
        )

    # The store ---------------------------------------------------------------------------

    def install_plugin(self, request: InstallRequest) -> list[InstallOutcome]:
        """Install a plugin version into the store and record it in the registry.

        Installing what is already installed does nothing. A version already in the store
        with other content is refused: a pin names one set of files, forever.

        Raises:
            PluginInstallError: The install failed or conflicts with the store; nothing changed.
        """
        request = request.absolute()
        already = self._already_installed(request)
        if already:
            return already
        # The registry's first connection, its schema check and the read of what the store
        # holds happen while the installer runs.
        known: list[PluginVersion] = []
        installed = self.store.install(
            request, meanwhile=lambda: known.extend(self.registry.plugin_versions("store"))
        )
        before = self.registry.add_store_versions(
            {plugin.ref: (plugin.distribution, plugin.entry_point) for plugin in installed.plugins},
            location=installed.digest,
            hashes=installed.hashes,
            requirement=installed.requirement,
            known=known,
        )
        for ref, row in before.items():
            if row is not None and row.location != installed.digest:
                if installed.created and not self._digest_in_use(installed.digest):
                    self.store.remove(installed.digest)
                raise PluginInstallError(
                    f"{ref} is already in the store with other content (environment "
                    f"{row.location}, from {row.requirement!r}); nothing was installed. A pin "
                    f"names one set of files: remove it first: turnout plugin remove {ref}"
                )
        return [
            InstallOutcome(
                plugin,
                installed.digest,
                "installed" if before[plugin.ref] is None else "unchanged",
            )
            for plugin in installed.plugins
        ]

    def _already_installed(self, request: InstallRequest) -> list[InstallOutcome]:
        """For ``name==version``: the recorded versions of that distribution, if on this machine."""
        if not request.spec or request.requirements is not None:
            return []
        from packaging.requirements import InvalidRequirement, Requirement
        from packaging.utils import canonicalize_name
        from packaging.version import InvalidVersion, Version

        try:
            requirement = Requirement(request.spec)
        except InvalidRequirement:
            return []
        pins = [s.version for s in requirement.specifier if s.operator in ("==", "===")]
        if len(pins) != 1 or "*" in pins[0]:
            return []
        name = canonicalize_name(requirement.name)
        try:
            version = str(Version(pins[0]))
        except InvalidVersion:
            return []
        rows = [
            row
            for row in self.registry.plugin_versions("store")
            if canonicalize_name(row.distribution) == name and row.version == version
        ]
        if not rows or not all(self.store.has(row.location) for row in rows):
            return []
        return [
            InstallOutcome(
                StorePlugin(PluginRef(r.plugin_id, r.version), r.distribution, r.entry_point),
                r.location,
                "unchanged",
            )
            for r in rows
        ]

    def _digest_in_use(self, digest: str) -> bool:
        return any(row.location == digest for row in self.registry.plugin_versions("store"))

    def remove_plugin(self, plugin: str | PluginRef, *, force: bool = False) -> PluginVersion:
        """Remove a store plugin version: its record, and its files unless another uses them.

        Raises:
            PluginNotInstalledError: It is not in the store.
            UsageError: A target points to it (pass ``force`` to remove it anyway).
        """
        ref = plugin if isinstance(plugin, PluginRef) else PluginRef.parse(plugin)
        row = self.registry.find_plugin_version(ref, "store")
        if row is None:
            raise PluginNotInstalledError(
                str(ref), f"{ref} is not in the store", "see: turnout plugin list"
            )
        users = self.registry.targets_by_plugin().get(str(ref), [])
        if users and not force:
            raise UsageError(
                f"{ref} is used by target(s) {', '.join(users)}; point them elsewhere first, "
                "or pass --force"
            )
        self.registry.forget_plugin_version(ref, "store")
        if not self._digest_in_use(row.location):
            self.store.remove(row.location)
        return row

    def verify_plugins(self, plugin: str | PluginRef | None = None) -> dict[str, list[str]]:
        """Re-hash store environments against the hashes recorded at install.

        Returns:
            Problems per plugin ref; an empty list means the files are as installed.
        """
        ref = plugin if isinstance(plugin, PluginRef) or plugin is None else PluginRef.parse(plugin)
        rows = [
            row
            for row in self.registry.plugin_versions("store")
            if ref is None or (row.plugin_id, row.version) == (ref.plugin_id, ref.version)
        ]
        if ref is not None and not rows:
            raise PluginNotInstalledError(
                str(ref), f"{ref} is not in the store", "see: turnout plugin list"
            )
        return {
            f"{row.plugin_id}@{row.version}": self.store.verify(row.location, row.hashes)
            for row in rows
        }

    def sync_plugins(
        self,
        *,
        check: bool = False,
        find_links: Sequence[str] = (),
        index_url: str | None = None,
    ) -> list[SyncResult]:
        """Install on this machine every store plugin version a target or a route references.

        Each version is installed from the requirement recorded when it was first installed,
        and must give the very environment recorded then (the same digest, so the same file
        hashes); one that gives other files is removed again and reported ``mismatch``, and
        nothing is recorded. With ``find_links`` and no ``index_url``, only those folders are
        searched. ``check`` installs nothing and reports what is ``missing``. Versions of
        turnout's own environment are reported ``environment``; a referenced version the
        registry has no record of is ``unknown``. Running it again installs nothing.

        Returns:
            One result per referenced plugin ref, by ref.
        """
        self.registry.ensure_schema()
        users = self.registry.targets_by_plugin()
        refs = sorted(
            (PluginRef.parse(text) for text in users), key=lambda r: (r.plugin_id, r.version)
        )
        done: dict[str, SyncResult] = {}  # environment digest -> the outcome of installing it
        return [
            self._sync_one(ref, tuple(users[str(ref)]), check, find_links, index_url, done)
            for ref in refs
        ]

    def _sync_one(
        self,
        ref: PluginRef,
        targets: tuple[str, ...],
        check: bool,
        find_links: Sequence[str],
        index_url: str | None,
        done: dict[str, SyncResult],
    ) -> SyncResult:
        row = self.registry.find_plugin_version(ref, "store")
        if row is None:
            own = self.registry.find_plugin_version(ref, ENVIRONMENT_SOURCE)
            if own is not None:
                detail = (
                    "runs from turnout's own environment; install it beside turnout: "
                    f"pip install '{own.distribution}=={ref.version}'"
                )
                return SyncResult(ref, "environment", targets, detail=detail)
            detail = (
                "the registry has no record of installing it; run: turnout plugin install "
                f"'DISTRIBUTION=={ref.version}' on one machine, then turnout plugin sync here"
            )
            return SyncResult(ref, "unknown", targets, detail=detail)
        result = SyncResult(ref, "present", targets, row.location, row.requirement)
        if self.store.has(row.location):
            return result
        if row.location in done:
            return dataclasses.replace(done[row.location], ref=ref, targets=targets)
        if check:
            detail = f"environment {row.location} is missing; run: turnout plugin sync"
            return dataclasses.replace(result, status="missing", detail=detail)
        outcome = self._sync_install(row, find_links, index_url)
        done[row.location] = outcome = dataclasses.replace(outcome, ref=ref, targets=targets)
        return outcome

    def _sync_install(
        self, row: PluginVersion, find_links: Sequence[str], index_url: str | None
    ) -> SyncResult:
        ref = PluginRef(row.plugin_id, row.version)
        result = SyncResult(ref, "installed", (), row.location, row.requirement)
        if not row.requirement:
            detail = (
                "no requirement was recorded for it; run: turnout plugin install on this machine"
            )
            return dataclasses.replace(result, status="failed", detail=detail)
        request = _sync_request(row.requirement, find_links, index_url)
        try:
            installed = self.store.install(request)
        except PluginInstallError as exc:
            return dataclasses.replace(result, status="failed", detail=str(exc))
        if installed.digest != row.location:
            if installed.created and not self._digest_in_use(installed.digest):
                self.store.remove(installed.digest)
            changed = sum(
                1
                for name in installed.hashes.keys() | row.hashes.keys()
                if installed.hashes.get(name) != row.hashes.get(name)
            )
            detail = (
                f"installing {request.describe()} gave environment {installed.digest}, not the "
                f"recorded {row.location} ({changed} file(s) differ from the hashes recorded at "
                "the first install: a changed or tampered wheel, or other dependency versions); "
                "refused, nothing was installed"
            )
            return dataclasses.replace(result, status="mismatch", detail=detail)
        return result


@dataclass(slots=True)
class Reconciliation:
    """One abandoned release and what reconciling it gave."""

    original: ReleaseRecord
    record: ReleaseRecord | None
    error: TurnoutError | None

    def to_dict(self) -> dict[str, Any]:
        """What ``turnout reconcile --json`` prints for it."""
        return {
            "release": self.original.id,
            "target": self.original.target,
            "was": self.original.status.value,
            "now": self.record.status.value if self.record else None,
            "error": str(self.error) if self.error else None,
        }


@dataclass(slots=True)
class Replay:
    """One original release, the replay's key and plugin ref, and what the replay gave."""

    original: ReleaseRecord
    key: str | None
    plugin_ref: str | None
    record: ReleaseRecord | None
    error: TurnoutError | None


@dataclass(frozen=True, slots=True)
class SyncResult:
    """One plugin ref a target or route references, and what ``plugin sync`` found or did.

    ``status``: ``present`` (its environment is here), ``installed`` (now it is), ``missing``
    (a check: it is not), ``mismatch`` (the install gave other files than recorded; refused),
    ``failed`` (the install failed), ``environment`` (turnout's own environment provides it),
    ``unknown`` (no record of it at all).
    """

    ref: PluginRef
    status: str
    targets: tuple[str, ...]
    digest: str | None = None
    requirement: str | None = None
    detail: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """What ``turnout plugin sync --json`` prints for it."""
        return {
            "plugin": self.ref.plugin_id,
            "version": self.ref.version,
            "status": self.status,
            "targets": list(self.targets),
            "digest": self.digest,
            "requirement": self.requirement,
            "detail": self.detail,
        }


def _sync_request(
    requirement: str, find_links: Sequence[str], index_url: str | None
) -> InstallRequest:
    """The install request that repeats a recorded ``requirement`` (``InstallRequest.describe``).

    A wheel file recorded by path that is not on this machine is looked up by its name and
    version instead (in ``find_links`` or the index); a lock file with hashes is hash-checked.
    """
    spec, _, lockfile = f" {requirement}".partition(" -r ")
    spec = spec.strip()
    requirements = Path(lockfile.strip()) if lockfile.strip() else None
    if spec.endswith(".whl") and not Path(spec).exists():
        from packaging.utils import InvalidWheelFilename, parse_wheel_filename
        from packaging.version import InvalidVersion

        with contextlib.suppress(InvalidWheelFilename, InvalidVersion):
            name, version, _build, _tags = parse_wheel_filename(Path(spec).name)
            spec = f"{name}=={version}"
    hashed = False
    if requirements is not None:
        with contextlib.suppress(OSError, UnicodeDecodeError):
            hashed = "--hash" in requirements.read_text()
    return InstallRequest(
        spec=spec or None,
        find_links=tuple(find_links),
        index_url=index_url,
        no_index=bool(find_links) and not index_url,
        requirements=requirements,
        require_hashes=hashed,
    )


def _routes_edit(
    name: str, edit: Callable[[TargetSpec], tuple[Route, ...]]
) -> Callable[[TargetSpec | None], TargetSpec]:
    """A target change that replaces only the routes of an existing target."""

    def change(current: TargetSpec | None) -> TargetSpec:
        if current is None:
            raise UnknownTargetError(name)
        return dataclasses.replace(current, routes=edit(current))

    return change


def _record_of(exc: TurnoutError) -> ReleaseRecord | None:
    record: ReleaseRecord | None = getattr(exc, "release", None)
    return record


def _fields(release_id: str, target: str, ref: PluginRef) -> dict[str, str]:
    """The ``extra`` of a log record about one release (JSON log lines carry them)."""
    return {"release_id": release_id, "target": target, "plugin": str(ref)}


@dataclass(frozen=True, slots=True)
class _Call:
    """What a release calls: ``ref``'s releaser for a target revision, with the revision's
    config, its secrets resolved (held for the call only, never stored)."""

    spec: TargetSpec
    ref: PluginRef
    releaser: Releaser
    config: dict[str, Any]
    secrets: list[str]


class _Attempts:
    """What one claim of a release does: reconcile a takeover, run attempts, record the outcome."""

    def __init__(
        self,
        turnout: Turnout,
        claim: Claim,
        call: _Call,
        artifact: str,
        context: dict[str, str],
        key: str,
    ) -> None:
        self.turnout = turnout
        self.ledger = turnout.ledger
        self.claim = claim
        self.spec = call.spec
        self.releaser = call.releaser
        self.secrets = call.secrets
        # A worker runs in a private folder: a path is the caller's (Turnout.release makes it
        # absolute; a release recorded before may hold a relative one).
        self.artifact = os.path.abspath(artifact) if _relative(artifact) else artifact
        self.config = call.config
        self.context = context
        self.key = key
        self.plugin_key = claim.plugin_key
        self.ref = call.ref
        self.outputs: list[str] = []
        self.attempt_log: list[dict[str, Any]] = list(claim.values.get("attempt_log") or ())
        self.extra = _fields(claim.id, call.spec.name, call.ref)

    def reconcile(self) -> ReleaseRecord:
        """A takeover: the previous runner died mid-call. Ask, re-invoke, or say "unknown".

        The plugin's ``turnout_probe`` answers whether the release with this key happened;
        without one, a target marked idempotent is called again with the same key; otherwise
        the release is recorded ``unknown`` for a human to decide. A new key is never made up.
        """
        log.warning(
            "release %s: its runner stopped mid-call; reconciling", self.claim.id, extra=self.extra
        )
        try:
            implemented, result = self.releaser.probe(
                artifact=self.artifact,
                target=self.spec.name,
                config=self.config,
                idempotency_key=self.plugin_key,
                timeout=self.spec.timeout,
            )
        except Interrupted as exc:  # told to stop while asking: it is still not known
            self.ledger.move(
                self.claim,
                Status.UNKNOWN,
                error=f"interrupted: {exc} (while asking the plugin's probe)",
                error_type=_error_type(exc),
                retryable=True,
            )
            raise
        except Exception as exc:  # noqa: BLE001 - a failed probe answers nothing
            return self.ledger.move(
                self.claim, Status.UNKNOWN, error=self._message(exc), retryable=True
            )
        if implemented and result is not None:
            return self.ledger.move(
                self.claim, Status.RECONCILED, result=self._redacted(result), error=None
            )
        if implemented or self.spec.idempotent:
            return self.run(first_attempt=self.claim.attempts + 1)
        return self.ledger.move(
            self.claim,
            Status.UNKNOWN,
            error="its runner stopped mid-call; the plugin has no turnout_probe and the target "
            "is not marked idempotent, so turnout will not call it again on its own",
            retryable=True,
        )

    def run(self, first_attempt: int = 1) -> ReleaseRecord:
        """The attempts, under the retry policy and the same key, then the recorded outcome."""
        count = first_attempt - 1
        spans = self.turnout.telemetry

        def attempt() -> dict[str, Any]:
            nonlocal count
            count += 1
            if count > 1 or self.claim.takeover:
                self.ledger.move(
                    self.claim, Status.RUNNING, attempts=count, attempt_log=list(self.attempt_log)
                )
            started, clock = self.ledger.clock(), time.perf_counter()
            with spans.attempt_span(count) as span:
                try:
                    result = self.releaser.release(
                        artifact=self.artifact,
                        target=self.spec.name,
                        config=self.config,
                        context=self.context,
                        idempotency_key=self.plugin_key,
                        attempt=count,
                        timeout=self.spec.timeout,
                    )
                except BaseException as exc:
                    entry = self._note(count, started, clock, exc)
                    fail(span, entry["error_type"], entry["error"])
                    raise
                finally:
                    self._keep_output(count)
                self._note(count, started, clock, None)
                return result

        from turnout.retries import release_policy
        from turnout.telemetry import fail

        policy = release_policy(
            max_attempts=self.spec.max_attempts,
            deadline=self.spec.timeout * self.spec.max_attempts,
            sleep=self.turnout._sleep,
        )
        try:
            result = policy(attempt)
        except LeaseLostError:
            raise  # another runner owns the release now; this one records nothing
        except Interrupted as exc:
            # Told to stop mid-release: the call may have deployed. Whoever asks again with
            # the key (or turnout reconcile) takes it over and asks the plugin's probe.
            record = self.ledger.move(
                self.claim,
                Status.UNKNOWN,
                error=f"interrupted: {exc} (during attempt {count}); it may have deployed",
                error_type=_error_type(exc),
                retryable=True,
                output=self._output(),
                attempt_log=self.attempt_log,
            )
            log.warning("release %s: %s", record.id, record.error, extra=self.extra)
            raise
        except BaseException as exc:
            record = self._settle(
                count,
                Status.TIMED_OUT if isinstance(exc, WorkerTimeoutError) else Status.FAILED,
                error=self._message(exc),
                error_type=_error_type(exc),
                retryable=_retryable(exc),
                output=self._output(),
                attempt_log=self.attempt_log,
            )
            log.warning(
                "release %s failed after %d attempt(s): %s",
                record.id,
                count,
                record.error,
                extra=self.extra,
            )
            if not isinstance(exc, Exception):
                # KeyboardInterrupt, SystemExit: recorded, then honoured, without the secrets
                # an inline plugin may have put in them (SystemExit's message is printed).
                exc.args = tuple(_secrets.redact_values(list(exc.args), self.secrets))
                if isinstance(exc, SystemExit):
                    if not exc.code:  # sys.exit(0) without a result: the runner must not
                        exc.code = record.exit_code  # exit 0, as if it had released
                    elif not isinstance(exc.code, int):
                        exc.code = _secrets.redact(str(exc.code), self.secrets)
                raise
            return record
        record = self._settle(
            count,
            Status.SUCCEEDED,
            result=self._redacted(result),
            error=None,
            output=self._output(),
            attempt_log=self.attempt_log,
        )
        log.info("release %s succeeded after %d attempt(s)", record.id, count, extra=self.extra)
        return record

    def _settle(self, count: int, to: Status, **values: Any) -> ReleaseRecord:
        """Record the outcome of the attempts. A registry that cannot take it (down, read-only,
        disk full) leaves the claim as it was: the error says the release ran, and how it is
        settled later."""
        try:
            return self.ledger.move(self.claim, to, **values)
        except RegistryUnavailableError as exc:
            message = (
                f"release {self.claim.id} ran ({to.value} after {count} attempt(s)) but its "
                f"outcome could not be recorded: {exc}. It stays claimed until its lease ends; "
                "then the same key again, or turnout reconcile, settles it"
            )
            log.error("%s", message, extra=self.extra)
            raise RegistryUnavailableError(message) from exc

    def _note(
        self, number: int, started: datetime, clock: float, exc: BaseException | None
    ) -> dict[str, Any]:
        """Add one attempt to the release's attempt log and return its entry."""
        entry: dict[str, Any] = {
            "attempt": number,
            "started_at": started.isoformat(),
            "duration": round(time.perf_counter() - clock, 6),
        }
        if exc is None:
            entry["outcome"] = Status.SUCCEEDED.value
        else:
            entry["outcome"] = (
                Status.TIMED_OUT.value if isinstance(exc, WorkerTimeoutError) else "error"
            )
            entry["error_type"] = _error_type(exc)
            entry["error"] = self._message(exc)
            entry["retryable"] = _retryable(exc)
        self.attempt_log.append(entry)
        return entry

    def _keep_output(self, number: int) -> None:
        output = self.releaser.output
        if not output:
            return
        self.outputs.append(f"--- attempt {number} ---\n{output}")
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "release %s attempt %d: plugin output %s",
                self.claim.id,
                number,
                _secrets.escape(_secrets.redact(output, self.secrets)),
                extra={**self.extra, "escaped": True},
            )

    def _message(self, exc: BaseException) -> str:
        from turnout.worker import WorkerError

        text = str(exc) if isinstance(exc, WorkerError) else f"{type(exc).__name__}: {exc}"
        return _secrets.redact(text, self.secrets)

    def _redacted(self, result: dict[str, Any]) -> dict[str, Any]:
        """The plugin's result with every secret value replaced, wherever it is nested."""
        return _secrets.redact_values(result, self.secrets) if self.secrets else result

    def _output(self) -> str | None:
        if not self.outputs:
            return None
        return _secrets.redact("\n".join(self.outputs), self.secrets)[-OUTPUT_LIMIT:]


def _relative(artifact: str) -> bool:
    """Whether an artifact is a relative local path (not a URL, not an absolute path)."""
    return "://" not in artifact and not os.path.isabs(artifact)


def _error_type(exc: BaseException) -> str:
    from turnout._serve import qualified_name
    from turnout.worker import WorkerError

    return exc.type_name if isinstance(exc, WorkerError) else qualified_name(type(exc))


def _retryable(exc: BaseException) -> bool:
    from turnout._serve import MalformedResultError
    from turnout.retries import is_transient

    return is_transient(exc) and not isinstance(exc, MalformedResultError)


_default: dict[str, Turnout] = {}
_default_lock = threading.Lock()


def release(
    target: str,
    artifact: str,
    *,
    key: str,
    context: Mapping[str, str] | None = None,
    db: str | None = None,
) -> ReleaseRecord:
    """Release ``artifact`` to ``target`` once for ``key``; see :meth:`Turnout.release`.

    Keeps one :class:`Turnout` per database for the life of the process, so that worker
    processes stay warm and connections pooled across calls.
    """
    return default_handle(db).release(target, artifact, key=key, context=context)


def default_handle(db: str | None = None) -> Turnout:
    """This process's :class:`Turnout` for ``db`` (else ``TURNOUT_DATABASE_URL``), made on
    first use and kept, with its warm workers and pooled connections, until the process ends."""
    name = str(_db.database_url(db))
    with _default_lock:
        handle = _default.get(name)
        if handle is None:
            handle = _default[name] = Turnout(db)
    return handle


__all__ = [
    "InstallOutcome",
    "Reconciliation",
    "Replay",
    "SyncResult",
    "Turnout",
    "default_actor",
    "default_handle",
    "release",
]
