"""turnout releaser ``webhook``: POST a signed release notification to an HTTP endpoint.

Each attempt POSTs a JSON body to the configured ``url``::

    {"artifact": "...", "attempt": 1, "context": {...}, "idempotency_key": "...",
     "target": "...", "timestamp": 1764115200}

with ``Idempotency-Key: <key>`` and ``X-Turnout-Signature: t=<unix seconds>,v1=<hex>``, the
HMAC-SHA256 of ``f"{t}.{body}"`` keyed with the configured ``secret``. The receiver verifies
the signature and treats a key it has seen as done. With ``probe_url``, a signed GET asks the
receiver whether it saw a key (200 yes, 404 no), for turnout's crash reconciliation.

The result of :func:`turnout_release` is::

    {
        "status_code": 202,                       # the receiver's 2xx answer
        "url": "https://hooks.example.com/turnout",
        "idempotency_key": "<key>",
        "request_id": "req_123",                  # the answer's X-Request-Id, or None
    }

:func:`turnout_probe` returns the same fields (``url`` is then the probe URL) plus
``"seen": True``, or None.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

from turnout_webhook import _delivery
from turnout_webhook._config import parse_config
from turnout_webhook._errors import (
    ProbeUnavailableError,
    WebhookConnectionError,
    WebhookError,
    WebhookStatusError,
    WebhookTimeoutError,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "ProbeUnavailableError",
    "WebhookConnectionError",
    "WebhookError",
    "WebhookStatusError",
    "WebhookTimeoutError",
    "hookimpl",
    "turnout_probe",
    "turnout_release",
    "turnout_validate_config",
]

hookimpl = pluggy.HookimplMarker("turnout")

# turnout records an error's type by its qualified name: give the public one, as httpx does.
for _error in (
    ProbeUnavailableError,
    WebhookConnectionError,
    WebhookError,
    WebhookStatusError,
    WebhookTimeoutError,
):
    _error.__module__ = __name__


@hookimpl
def turnout_validate_config(config: Mapping[str, Any]) -> None:
    """Check the config as stored, secret references unresolved, before any release runs.

    Args:
        config: ``url`` (http or https, required), ``secret`` (a secret reference such as
            ``env:HOOK_SECRET``, required), ``timeout`` (seconds > 0, default 10),
            ``probe_url`` (http or https, optional) and ``headers`` (optional).

    Raises:
        ValueError: Naming the offending key and how to fix it; never showing a value.
    """
    parse_config(config, resolved=False)


@hookimpl
def turnout_release(
    artifact: str,
    target: str,
    config: Mapping[str, Any],
    context: Mapping[str, str],
    idempotency_key: str,
    attempt: int,
) -> dict[str, Any]:
    """POST the signed release notification to ``url``.

    Every attempt sends the same key; the body's ``attempt`` and ``timestamp`` change, so a
    receiver recognises a repeat by the ``Idempotency-Key`` header, not by the body.

    Args:
        artifact: The artifact, a local path or a URL; sent as it is.
        target: The target name.
        config: The resolved config.
        context: The release's context attributes.
        idempotency_key: The key identifying this release.
        attempt: Which call this is for this release, starting at 1.

    Returns:
        The JSON-serialisable result described in the module docstring.

    Raises:
        ValueError: For a bad config or an empty key (permanent).
        WebhookStatusError: A status other than 2xx; ``retryable`` for 5xx, 408, 409 and
            429, permanent for a redirect and any other 4xx.
        WebhookTimeoutError: A network step took longer than ``timeout`` (transient).
        WebhookConnectionError: The receiver could not be reached (transient).
        WebhookError: The request could not be sent at all (permanent).
    """
    settings = parse_config(config)
    _check_key(idempotency_key)
    return _delivery.release(
        settings,
        artifact=artifact,
        target=target,
        context=context,
        idempotency_key=idempotency_key,
        attempt=attempt,
    )


@hookimpl
def turnout_probe(config: Mapping[str, Any], idempotency_key: str) -> dict[str, Any] | None:
    """Ask ``probe_url`` whether the receiver saw this key; change nothing.

    Without ``probe_url`` the plugin cannot tell, and says so by raising: returning None
    would tell turnout "not delivered" and make it send again.

    Args:
        config: The resolved config.
        idempotency_key: The key of the release being reconciled.

    Returns:
        ``{"seen": True, ...}`` when the receiver answers 200, None when it answers 404.

    Raises:
        ValueError: For a bad config or an empty key.
        ProbeUnavailableError: No ``probe_url`` is configured; turnout leaves the release
            ``unknown`` for a person to settle.
        WebhookStatusError: Any status but 200 and 404; ``retryable`` for 5xx, 408, 409
            and 429.
        WebhookTimeoutError: A network step took longer than ``timeout`` (transient).
        WebhookConnectionError: The receiver could not be reached (transient).
    """
    settings = parse_config(config)
    _check_key(idempotency_key)
    return _delivery.probe(settings, idempotency_key=idempotency_key)


def _check_key(idempotency_key: object) -> None:
    if not isinstance(idempotency_key, str) or not idempotency_key:
        raise ValueError("webhook: the idempotency key must be a non-empty string")
