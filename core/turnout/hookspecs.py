"""The releaser contract: every hook a releaser plugin may implement.

A releaser is a distribution that declares an entry point in group ``turnout.releasers``; the
entry-point name is the plugin id and the object it names (a module or an instance) holds hook
implementations marked with ``pluggy.HookimplMarker("turnout")``. Plugins depend on pluggy only.

An implementation may accept any subset of a hook's arguments, by name: that is how new
arguments are added without breaking old plugins.

Errors follow one rule. An exception whose ``retryable`` attribute is true, or a
``TimeoutError`` / ``ConnectionError``, is transient and may be retried with the same
idempotency key; any other exception is permanent and is never retried.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pluggy

PROJECT = "turnout"
"""The pluggy project name shared by the hook specs and every plugin's ``HookimplMarker``."""

ENTRY_POINT_GROUP = "turnout.releasers"
"""The entry-point group a releaser distribution declares; the entry-point name is the plugin id."""

hookspec = pluggy.HookspecMarker(PROJECT)


@hookspec(firstresult=True)
def turnout_release(
    artifact: str,
    target: str,
    config: Mapping[str, Any],
    context: Mapping[str, str],
    idempotency_key: str,
    attempt: int,
) -> dict[str, Any]:
    """Called once per attempt of a release; ships the artifact and returns what it made.

    Required. Must be safe to call again with the same idempotency key: pass the key to the
    destination where it accepts one, and return the earlier result when the key was seen.

    Args:
        artifact: The build artifact, a local path or a URL.
        target: The name of the release target being served.
        config: The target's configuration, secret references already resolved.
        context: Attributes of the request (customer, plan, project, channel, ...).
        idempotency_key: The release's key, the same on every attempt, and one release per
            target: the caller's key, with ``!`` and a digest of the customer appended when the
            release has one (two customers may use the same key on one target).
        attempt: Which call this is for this release, starting at 1.

    Returns:
        A JSON-serialisable mapping describing the release (deployment id, URL, ...).
    """
    raise NotImplementedError


@hookspec
def turnout_validate_config(config: Mapping[str, Any]) -> None:
    """Called before a target is pointed at this plugin, and before it first releases with it.

    Optional. Check the target's configuration and raise ``ValueError`` with a message that
    names the offending field; never echo a value, which may be a secret.

    Args:
        config: The target's configuration, secret references not yet resolved.
    """


@hookspec(firstresult=True)
def turnout_probe(
    artifact: str,
    target: str,
    config: Mapping[str, Any],
    idempotency_key: str,
) -> dict[str, Any] | None:
    """Called to reconcile a release whose outcome was lost (a runner died mid-call).

    Optional. Answers "did the release with this key already happen?".

    Args:
        artifact: The build artifact of the release being reconciled.
        target: The name of the release target.
        config: The target's configuration, secret references already resolved.
        idempotency_key: The key of the release being reconciled.

    Returns:
        The release's result if it happened, or ``None`` if it did not (turnout then calls
        ``turnout_release`` again with the same key).

    Raises:
        Exception: Any, when the plugin cannot tell: the release is left ``unknown`` for an
            operator to settle, never guessed.
    """
