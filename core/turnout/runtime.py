"""The release path and the checked registry edits that the CLI and the Python API share.

One release: validate the request, read the target, load exactly its plugin version, claim the
idempotency key (committed before any plugin code runs), call ``turnout_release`` under the
retry policy with the same key every attempt, and record the outcome.
"""

from __future__ import annotations

import getpass
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy.engine import URL

from turnout import _db, _secrets, environment, retries
from turnout.errors import (
    ConfigRejectedError,
    ConfigurationError,
    UnknownTargetError,
    UsageError,
)
from turnout.refs import PluginRef
from turnout.registry import Registry, TargetChange, TargetSpec
from turnout.releaser import MalformedResultError, PluggyReleaser
from turnout.releases import (
    Ledger,
    ReleaseRecord,
    Status,
    fingerprint,
    validate_context,
    validate_key,
)

log = logging.getLogger("turnout")

ACTOR_ENV = "TURNOUT_ACTOR"


def default_actor() -> str:
    """Who is making a change: ``TURNOUT_ACTOR``, else the OS user."""
    actor = os.environ.get(ACTOR_ENV)
    if actor:
        return actor
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "unknown"


class Turnout:
    """A handle on one registry: releases and checked edits of its targets.

    Args:
        db: A database URL or a SQLite file path; defaults to ``TURNOUT_DATABASE_URL``, then
            ``sqlite:///registry.db``.
        sleep: How to wait between attempts (tests inject a fake).
    """

    def __init__(
        self,
        db: URL | str | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.registry = Registry(db)
        self.ledger = Ledger(self.registry.engine)
        self._sleep = sleep
        self._releasers: dict[PluginRef, PluggyReleaser] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        """Release the database connections."""
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
    ) -> ReleaseRecord:
        """Release ``artifact`` to ``target`` exactly once for ``key``.

        Returns:
            The succeeded release; ``reused`` is true when an earlier call with the same key and
            the same request had already done it, and nothing ran.

        Raises:
            ReleaseFailedError: The releaser failed permanently (``TransientReleaseError``: it
                failed transiently on every attempt); the failure is recorded.
            KeyMismatchError: ``key`` was used before for a different request; nothing ran.
            ReleaseInProgressError: ``key``'s release is running elsewhere; nothing ran.
            ConfigurationError: Unknown target, plugin version not installed or not loadable,
                config rejected; nothing ran and nothing was recorded.
            UsageError: A malformed key or context.
        """
        key = validate_key(key)
        if not isinstance(artifact, str) or not artifact:
            raise UsageError("artifact must be a non-empty path or URL")
        ctx = validate_context(context)
        spec = self.registry.get_target(target)
        print_ = fingerprint(spec.name, artifact, spec.plugin_ref, spec.config, ctx)
        try:
            releaser = self._releaser(spec.plugin_ref)
            self._validate(releaser, spec.plugin_ref, spec.config, spec.name)
            config, secrets = _secrets.resolve(spec.config)
        except ConfigurationError:
            # A key that was already released still answers with its outcome.
            earlier = self.ledger.find(spec.name, key)
            if earlier is not None and earlier.status is not Status.RUNNING:
                if earlier.fingerprint != print_:
                    raise
                return earlier.raise_for_status()
            raise
        release_id, earlier = self.ledger.claim(
            target=spec.name,
            key=key,
            fingerprint=print_,
            plugin_ref=spec.plugin_ref,
            artifact=artifact,
            context=ctx,
        )
        if earlier is not None:
            log.info("release %s: key %r already released; nothing ran", release_id, key)
            return earlier.raise_for_status()
        self._run(release_id, spec, releaser, artifact, config, secrets, ctx, key)
        record = self.ledger.get(release_id)
        assert record is not None  # noqa: S101 - claimed above
        return record.raise_for_status()

    def _run(
        self,
        release_id: str,
        spec: TargetSpec,
        releaser: PluggyReleaser,
        artifact: str,
        config: dict[str, Any],
        secrets: list[str],
        ctx: dict[str, str],
        key: str,
    ) -> None:
        attempts = 0

        def attempt() -> dict[str, Any]:
            nonlocal attempts
            attempts += 1
            return releaser.release(
                artifact=artifact,
                target=spec.name,
                config=config,
                context=ctx,
                idempotency_key=key,
                attempt=attempts,
            )

        policy = retries.release_policy(
            max_attempts=spec.max_attempts,
            deadline=spec.timeout * spec.max_attempts,
            sleep=self._sleep,
        )
        try:
            result = policy(attempt)
        except BaseException as exc:
            transient = retries.is_transient(exc)
            if isinstance(exc, MalformedResultError):
                transient = False
            message = _secrets.redact(f"{type(exc).__name__}: {exc}", secrets)
            self.ledger.finish(
                release_id,
                status=Status.FAILED,
                attempts=attempts,
                error=message,
                error_type=_qualified_name(type(exc)),
                retryable=transient,
            )
            log.warning("release %s failed after %d attempt(s): %s", release_id, attempts, message)
            if not isinstance(exc, Exception):
                raise  # KeyboardInterrupt, SystemExit: recorded, then honoured
            return
        self.ledger.finish(release_id, status=Status.SUCCEEDED, attempts=attempts, result=result)
        log.info("release %s succeeded after %d attempt(s)", release_id, attempts)

    def _releaser(self, ref: PluginRef) -> PluggyReleaser:
        with self._lock:
            releaser = self._releasers.get(ref)
            if releaser is None:
                row = self.registry.find_plugin_version(ref, environment.SOURCE)
                if row is None:
                    found = self._record(environment.find(ref))
                    distribution, entry_point = found.distribution, found.entry_point
                else:
                    distribution, entry_point = row.distribution, row.entry_point
                releaser = environment.load(ref, distribution, entry_point)
                self._releasers[ref] = releaser
            return releaser

    def _record(self, plugin: environment.EnvironmentPlugin) -> environment.EnvironmentPlugin:
        self.registry.record_plugin_version(
            plugin.ref,
            source=environment.SOURCE,
            distribution=plugin.distribution,
            entry_point=plugin.entry_point,
            location=plugin.location,
        )
        return plugin

    @staticmethod
    def _validate(
        releaser: PluggyReleaser, ref: PluginRef, config: Mapping[str, Any], target: str
    ) -> None:
        try:
            releaser.validate_config(config)
        except ValueError as exc:
            raise ConfigRejectedError(str(ref), str(exc), target) from exc

    # Registry edits ----------------------------------------------------------------------

    def set_target(
        self,
        name: str,
        plugin: str | PluginRef,
        *,
        config: dict[str, Any] | None = None,
        max_attempts: int | None = None,
        timeout: float | None = None,
        actor: str | None = None,
        reason: str = "",
    ) -> TargetChange:
        """Point a target at an installed plugin version, after the plugin accepts its config.

        Refused, with the row left as it was, when the ref is not an exact pin, the version is
        not installed, or the plugin's ``turnout_validate_config`` rejects the config.
        """
        ref = plugin if isinstance(plugin, PluginRef) else PluginRef.parse(plugin)
        if max_attempts is not None and max_attempts < 1:
            raise UsageError("max attempts must be at least 1")
        if timeout is not None and timeout <= 0:
            raise UsageError("timeout must be a positive number of seconds")
        if not name or len(name) > 200 or not name.isprintable() or name.strip() != name:
            raise UsageError(f"invalid target name {name!r}")
        found = self._record(environment.find(ref))
        releaser = environment.load(ref, found.distribution, found.entry_point)
        try:
            current: TargetSpec | None = self.registry.get_target(name)
        except UnknownTargetError:
            current = None
        effective = config if config is not None else (current.config if current else {})
        self._validate(releaser, ref, effective, name)
        return self.registry.set_target(
            name,
            ref,
            config=config,
            max_attempts=max_attempts,
            timeout=timeout,
            actor=actor or default_actor(),
            reason=reason,
        )


def _qualified_name(cls: type) -> str:
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


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

    Keeps one :class:`Turnout` per database for the life of the process, so that loaded
    plugins and pooled connections are reused across calls.
    """
    name = str(_db.database_url(db))
    with _default_lock:
        handle = _default.get(name)
        if handle is None:
            handle = _default[name] = Turnout(db)
    return handle.release(target, artifact, key=key, context=context)
