"""turnout releaser ``template``: record each release as one JSON line in a file.

A small but complete releaser to grow into a real one: it checks its config, does its work
once per idempotency key, and tells turnout which failures are worth retrying. Replace the
body of :func:`turnout_release` with what ships your artifact; keep the shape.

Each release appends one line to the file named by config ``path``::

    {"artifact": "...", "context": {...}, "idempotency_key": "...", "plugin": "template",
     "released_at": "2026-01-31T12:00:00+00:00", "target": "..."}

and returns ``{"path": ..., "line": N, "idempotency_key": ..., "reused": false}``. A second
call with the same target and key appends nothing and returns the first line's result with
``reused`` true.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pluggy

__all__ = [
    "PLUGIN_ID",
    "ReleaseError",
    "TransientReleaseError",
    "hookimpl",
    "turnout_release",
    "turnout_validate_config",
]

PLUGIN_ID = "template"
"""The entry-point name in ``pyproject.toml``; messages start with it."""

hookimpl = pluggy.HookimplMarker("turnout")

_KNOWN_KEYS = frozenset({"path"})


class ReleaseError(Exception):
    """The release failed for good: turnout records it and never retries it."""

    retryable = False


class TransientReleaseError(ReleaseError):
    """The release failed for now: turnout retries it later with the same idempotency key.

    turnout needs no import to see this: any exception whose ``retryable`` attribute is true
    (or a ``TimeoutError`` / ``ConnectionError``) is transient.
    """

    retryable = True


@hookimpl
def turnout_validate_config(config: Mapping[str, Any]) -> None:
    """Check a target's config before the target is pointed at this plugin.

    Args:
        config: The target's config, secret references not yet resolved.

    Raises:
        ValueError: Naming the offending key; never echoing a value, which may be a secret.
    """
    _log_path(config)


@hookimpl
def turnout_release(
    artifact: str,
    target: str,
    config: Mapping[str, Any],
    context: Mapping[str, str],
    idempotency_key: str,
) -> dict[str, Any]:
    """Record the release as one JSON line, once per target and idempotency key.

    Args:
        artifact: The build artifact, a local path or a URL.
        target: The name of the release target being served.
        config: The target's config, secret references resolved.
        context: Attributes of the request (customer, plan, project, channel, ...).
        idempotency_key: The caller's key for this release, the same on every attempt.

    Returns:
        ``path``, ``line`` (1-based), ``idempotency_key`` and ``reused`` (true when this key
        had been released before and nothing was written).

    Raises:
        TransientReleaseError: Another release holds the file (retried by turnout).
        ReleaseError: The file holds a line that is not JSON (permanent).
        ValueError: The config is not valid (permanent).
    """
    path = _log_path(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+", encoding="utf-8") as log:
        try:
            # Never wait: a busy destination is exactly what a transient error is for.
            fcntl.flock(log, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TransientReleaseError(
                f"{PLUGIN_ID}: {path} is being written by another release; try again"
            ) from None
        log.seek(0)
        lines = log.read().splitlines()
        found = _find(lines, path, target, idempotency_key)
        if found is not None:
            return found
        entry = {
            "artifact": artifact,
            "context": dict(context),
            "idempotency_key": idempotency_key,
            "plugin": PLUGIN_ID,
            "released_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "target": target,
        }
        log.write(json.dumps(entry, sort_keys=True) + "\n")
        log.flush()
        os.fsync(log.fileno())
    return _result(path, len(lines) + 1, idempotency_key, reused=False)


# Optional: uncomment to let turnout ask, after a runner died mid-call, whether the release
# with this key already happened. Return its result, or None when it did not happen (turnout
# then releases again with the same key); raise when you cannot tell. Change nothing here.
#
# @hookimpl
# def turnout_probe(
#     target: str, config: Mapping[str, Any], idempotency_key: str
# ) -> dict[str, Any] | None:
#     path = _log_path(config)
#     if not path.exists():
#         return None
#     return _find(path.read_text(encoding="utf-8").splitlines(), path, target, idempotency_key)


def _log_path(config: Mapping[str, Any]) -> Path:
    unknown = sorted(set(config) - _KNOWN_KEYS)
    if unknown:
        known = ", ".join(repr(key) for key in sorted(_KNOWN_KEYS))
        names = ", ".join(repr(key) for key in unknown)
        raise ValueError(f"{PLUGIN_ID}: unknown config key(s) {names}; known keys: {known}")
    value = config.get("path")
    if not isinstance(value, str) or not os.path.isabs(value):
        raise ValueError(
            f"{PLUGIN_ID}: config 'path' is required and must be an absolute file path, "
            "e.g. --config path=/var/lib/releases.jsonl"
        )
    return Path(value)


def _find(lines: Iterable[str], path: Path, target: str, key: str) -> dict[str, Any] | None:
    """The result of the line that released ``key`` to ``target``, or None if none did."""
    for number, line in enumerate(lines, start=1):
        try:
            entry = json.loads(line)
        except ValueError:
            entry = None
        if not isinstance(entry, dict):
            raise ReleaseError(
                f"{PLUGIN_ID}: line {number} of {path} is not a JSON object; repair or move "
                "the file"
            )
        if entry.get("target") == target and entry.get("idempotency_key") == key:
            return _result(path, number, key, reused=True)
    return None


def _result(path: Path, line: int, key: str, *, reused: bool) -> dict[str, Any]:
    return {"path": str(path), "line": line, "idempotency_key": key, "reused": reused}
