"""Releases as Celery tasks, for fleets: the ``turnout[celery]`` extra.

A producer anywhere enqueues the task ``turnout.release``; a Celery worker on any machine runs it
through the same Python API as ``turnout release``: it resolves the target's routing, claims the
idempotency key in the registry, runs exactly the chosen plugin version and records the outcome.
The registry (PostgreSQL for a fleet) is what keeps one key to one deploy, whichever worker runs
a message and however often the broker delivers it::

    TURNOUT_DATABASE_URL=postgresql://turnout@db/turnout \\
    TURNOUT_CELERY_BROKER_URL=redis://queue:6379/0 \\
        celery -A turnout.celery worker --loglevel INFO

A producer needs only Celery, not turnout::

    Celery(broker="redis://queue:6379/0").send_task(
        "turnout.release",
        kwargs={"target": "docs", "artifact": "s3://builds/4411.tgz", "key": "build-4411",
                "context": {"customer": "acme"}},
        queue="turnout",
    )

With turnout installed, :func:`enqueue` checks the key, artifact and context first.

Outcomes map onto Celery like this:

- deployed (or released before under the same key): the task succeeds and returns the release
  record as ``turnout release --json`` prints it;
- not decided yet — failed transiently after the target's own attempts (the next try resumes
  the same release with the same key and a fresh attempt budget), the key is held by a live
  runner elsewhere, the registry cannot be reached, the routing moved under every try, another
  runner took the release over, the plugin version is not installed on this machine (yet: a
  ``turnout plugin sync`` here, or another worker that has it, will run it): the task is
  retried with exponential backoff (:func:`turnout.retries.task_countdown`), up to
  ``max_retries``;
- decided — failed permanently, timed out (its last call was cut off and may have deployed),
  ``unknown`` (a human or the plugin's probe must say; ``turnout reconcile``), replayed, or
  refused for any other reason (unknown target, config rejected, key reused for another
  request): the task fails and is not retried.

Messages are acknowledged late and rejected back to the queue when the worker process dies
mid-task, so a killed worker's releases run again elsewhere; the registry's claim, lease and
takeover decide what that second run does (see docs/operating.md, "Leases and crashed runners").

Settings for the ready-made :data:`app` (a Celery app of your own takes :func:`register`):

``TURNOUT_CELERY_BROKER_URL`` (default ``redis://127.0.0.1:6379/0``),
``TURNOUT_CELERY_RESULT_BACKEND`` (default none), ``TURNOUT_CELERY_QUEUE`` (default ``turnout``),
``TURNOUT_CELERY_VISIBILITY_TIMEOUT`` (seconds before Redis hands an unacknowledged message to
another worker; default 3600), ``TURNOUT_CELERY_MAX_RETRIES`` (default 20, about 11 minutes of
backoff) and ``TURNOUT_CELERY_RECONCILE_EVERY`` (seconds between two ``turnout.reconcile`` tasks
while ``celery -A turnout.celery beat`` runs; default 60). The registry is
``TURNOUT_DATABASE_URL``, as for the CLI; each pool process sets up OpenTelemetry from the
standard ``OTEL_*`` variables, as the CLI does (``turnout[otel]``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, cast

from celery import Celery, Task, current_app, signals
from celery.result import AsyncResult

from turnout import runtime, telemetry
from turnout._settings import number
from turnout.errors import (
    EXIT_TEMPFAIL,
    PluginNotInstalledError,
    ReleaseFailedError,
    ReleaseUnknownError,
    TransientReleaseError,
    TurnoutError,
    UsageError,
)
from turnout.releases import Status, validate_context, validate_key
from turnout.retries import task_countdown

__all__ = ["RECONCILE_TASK_NAME", "TASK_NAME", "app", "decided", "enqueue", "register"]

TASK_NAME = "turnout.release"
RECONCILE_TASK_NAME = "turnout.reconcile"
DEFAULT_BROKER = "redis://127.0.0.1:6379/0"
DEFAULT_QUEUE = "turnout"
DEFAULT_MAX_RETRIES = 20
DEFAULT_RECONCILE_EVERY = 60.0


def decided(exc: TurnoutError) -> bool:
    """Whether asking again about the release that raised ``exc`` would give the same answer.

    Not decided, so worth a retry later: a transient failure this call recorded (asking again
    with the same key resumes it), and the other temporary failures (in progress elsewhere,
    registry unavailable, routing moved, lease lost), and a plugin version this machine does
    not have: in a fleet, machines install a newly routed version with ``turnout plugin sync``
    one after another, and until then another worker, or this one later, can run it.
    Decided: every other recorded outcome (permanent failure, timed out, ``unknown``, a
    failure found recorded and not resumed) and every other refusal.
    """
    if isinstance(exc, TransientReleaseError) and not isinstance(exc, ReleaseUnknownError):
        record = exc.release
        return record.reused or record.status is not Status.FAILED
    if isinstance(exc, PluginNotInstalledError):
        return False
    return isinstance(exc, ReleaseFailedError) or exc.exit_code != EXIT_TEMPFAIL


def register(celery_app: Celery, *, max_retries: int | None = None) -> Task:  # type: ignore[type-arg]
    """Add the ``turnout.release`` and ``turnout.reconcile`` tasks to ``celery_app``; return
    the first.

    The release task acknowledges late and is rejected back to the queue when its worker
    process is lost; it releases with the process's default :class:`~turnout.Turnout` handle
    for ``db`` (else ``TURNOUT_DATABASE_URL``), kept warm across tasks. The reconcile task is
    ``turnout reconcile`` for a beat schedule: it takes over every release whose runner died
    mid-call and every ``unknown`` one, and returns what ``turnout reconcile --json`` prints.
    """
    if max_retries is None:
        max_retries = int(
            number("TURNOUT_CELERY_MAX_RETRIES", DEFAULT_MAX_RETRIES, integer=True, unit="retries")
        )

    @celery_app.task(
        name=TASK_NAME,
        bind=True,
        acks_late=True,
        reject_on_worker_lost=True,
        max_retries=max_retries,
    )
    def release(
        self: Task,  # type: ignore[type-arg]
        target: str,
        artifact: str,
        key: str,
        context: dict[str, str] | None = None,
        db: str | None = None,
    ) -> dict[str, Any]:
        """Release ``artifact`` to ``target`` once for ``key``; see :func:`turnout.release`."""
        try:
            record = runtime.release(target, artifact, key=key, context=context, db=db)
        except TurnoutError as exc:
            if decided(exc):
                raise
            raise self.retry(exc=exc, countdown=task_countdown(self.request.retries)) from exc
        return record.to_dict()

    @celery_app.task(name=RECONCILE_TASK_NAME)
    def reconcile(target: str | None = None, db: str | None = None) -> list[dict[str, Any]]:
        """Settle abandoned and ``unknown`` releases; see :meth:`turnout.Turnout.reconcile`."""
        results = runtime.default_handle(db).reconcile(target=target)
        return [result.to_dict() for result in results]

    return release


def enqueue(
    target: str,
    artifact: str,
    *,
    key: str,
    context: Mapping[str, str] | None = None,
    celery_app: Celery | None = None,
) -> AsyncResult:  # type: ignore[type-arg]
    """Enqueue a release for the fleet's workers, after checking what a worker would refuse.

    A malformed key, artifact or context raises :class:`~turnout.errors.UsageError` here, in
    the producer, instead of failing later in a worker. ``celery_app`` defaults to :data:`app`
    (its broker and queue come from ``TURNOUT_CELERY_*``).
    """
    key = validate_key(key)
    if not isinstance(artifact, str) or not artifact:
        raise UsageError("artifact must be a non-empty path or URL")
    kwargs: dict[str, Any] = {"target": target, "artifact": artifact, "key": key}
    if context:
        kwargs["context"] = validate_context(context)
    return (celery_app or app).send_task(TASK_NAME, kwargs=kwargs)


def _app_from_environment() -> Celery:
    celery_app = Celery(
        "turnout",
        broker=os.environ.get("TURNOUT_CELERY_BROKER_URL") or DEFAULT_BROKER,
        backend=os.environ.get("TURNOUT_CELERY_RESULT_BACKEND") or None,
    )
    queue = os.environ.get("TURNOUT_CELERY_QUEUE") or DEFAULT_QUEUE
    visibility = number("TURNOUT_CELERY_VISIBILITY_TIMEOUT", 3600)
    celery_app.conf.update(
        task_default_queue=queue,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # One message at a time per process: a prefetched message waits behind a slow deploy,
        # and is only redelivered after the visibility timeout if this worker dies.
        worker_prefetch_multiplier=1,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_extended=True,
        broker_transport_options={
            "visibility_timeout": visibility,
            # Redis hands a dead worker's messages to another once visibility_timeout has
            # passed, but only sweeps for them every interval x throttle seconds (100 s by
            # default); sweep every quarter of the timeout, at most every 10 s.
            "unacked_restore_interval": max(1.0, min(10.0, visibility / 4)),
            "unacked_restore_throttle": 1,
        },
        broker_connection_retry_on_startup=True,
    )
    register(celery_app)
    every = number("TURNOUT_CELERY_RECONCILE_EVERY", DEFAULT_RECONCILE_EVERY)
    celery_app.conf.beat_schedule = {
        "turnout-reconcile": {"task": RECONCILE_TASK_NAME, "schedule": every},
    }

    @signals.worker_process_init.connect(weak=False)
    def _telemetry(**_: Any) -> None:
        # In each pool process, after the fork (the SDK's export threads do not survive one),
        # and only for workers of this app: an app of your own sets up its own telemetry.
        if cast(Any, current_app)._get_current_object() is celery_app:
            shutdown = telemetry.configure()
            if shutdown is not None:
                signals.worker_process_shutdown.connect(lambda **_: shutdown(), weak=False)

    return celery_app


app = _app_from_environment()
"""A Celery app configured from ``TURNOUT_CELERY_*``, with the task registered:
``celery -A turnout.celery worker``."""
