"""Send a signed release notification, and ask a receiver whether it has seen a key.

One short-lived ``httpx.Client`` per call, redirects never followed: a signed request goes
to the configured address or nowhere. httpx errors are translated here, at the boundary,
into :mod:`turnout_webhook._errors`, so turnout sees ``TimeoutError``, ``ConnectionError`` or
an error whose ``retryable`` attribute says what to do.
"""

from __future__ import annotations

import functools
import json
import ssl
import time
from collections.abc import Callable, Mapping
from importlib import metadata
from typing import TYPE_CHECKING, Any

import httpx

from turnout_webhook._errors import (
    ProbeUnavailableError,
    WebhookConnectionError,
    WebhookError,
    WebhookStatusError,
    WebhookTimeoutError,
)
from turnout_webhook._signing import IDEMPOTENCY_HEADER, SIGNATURE_HEADER, signature

if TYPE_CHECKING:
    from turnout_webhook._config import Settings


def _version() -> str:
    try:
        return metadata.version("turnout-webhook")
    except metadata.PackageNotFoundError:  # a source tree that is not installed
        return "0+unknown"


#: Sent with every request so a receiver can tell which releaser version called it.
USER_AGENT = f"turnout-webhook/{_version()}"

#: 4xx statuses worth another attempt with the same key: a request timeout, the same key
#: still being handled (409 in the IETF Idempotency-Key draft), and rate limiting. Every 5xx
#: is retryable too.
RETRYABLE_4XX = frozenset({408, 409, 429})

#: Bytes of an error answer read for the message, and characters of it shown.
READ_LIMIT = 4096
SNIPPET_LIMIT = 200

REDACTED = "***"

Clock = Callable[[], float]


def release(
    settings: Settings,
    *,
    artifact: str,
    target: str,
    context: Mapping[str, str],
    idempotency_key: str,
    attempt: int,
    clock: Clock = time.time,
) -> dict[str, Any]:
    """POST the signed notification to ``settings.url``.

    Args:
        settings: The checked :class:`~turnout_webhook._config.Settings`.
        artifact: The artifact, as turnout passed it.
        target: The target name.
        context: The release's context attributes.
        idempotency_key: The key, sent in ``Idempotency-Key`` and in the body.
        attempt: Which call this is for the release, starting at 1.
        clock: Where the signature's timestamp comes from.

    Returns:
        ``{"status_code", "url", "idempotency_key", "request_id"}``.

    Raises:
        WebhookStatusError: A status other than 2xx (retryable for 5xx, 408, 409, 429).
        WebhookTimeoutError: A network step took longer than ``timeout`` (transient).
        WebhookConnectionError: The receiver could not be reached (transient).
        WebhookError: The request could not be sent at all (permanent).
    """
    timestamp = int(clock())
    payload = {
        "artifact": artifact,
        "target": target,
        "context": dict(context),
        "idempotency_key": idempotency_key,
        "attempt": attempt,
        "timestamp": timestamp,
    }
    body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    headers = {
        "User-Agent": USER_AGENT,
        **settings.headers,
        "Content-Type": "application/json",
        IDEMPOTENCY_HEADER: idempotency_key,
        SIGNATURE_HEADER: signature(settings.secret, timestamp, body),
    }
    response, snippet = _exchange(settings, "POST", settings.url, headers, body)
    if not response.is_success:
        raise _status_error(settings, "POST", "url", settings.url, response, snippet)
    return _result(settings.url, idempotency_key, response)


def probe(
    settings: Settings, *, idempotency_key: str, clock: Clock = time.time
) -> dict[str, Any] | None:
    """GET ``settings.probe_url`` with the key, and tell whether the receiver saw it.

    Args:
        settings: The checked :class:`~turnout_webhook._config.Settings`.
        idempotency_key: The key of the release being reconciled.
        clock: Where the signature's timestamp comes from.

    Returns:
        ``{"seen": True, ...}`` for 200, None for 404.

    Raises:
        ProbeUnavailableError: No ``probe_url`` is configured (permanent: cannot tell).
        WebhookStatusError: Any other status (retryable for 5xx, 408, 409, 429).
        WebhookTimeoutError: A network step took longer than ``timeout`` (transient).
        WebhookConnectionError: The receiver could not be reached (transient).
        WebhookError: The request could not be sent at all (permanent).
    """
    if settings.probe_url is None:
        raise ProbeUnavailableError(
            f"webhook: cannot tell whether the release with key {idempotency_key!r} was "
            "delivered: no 'probe_url' is configured; ask the receiver, then settle the "
            "release with: turnout reconcile RELEASE_ID --as succeeded (or --as failed); "
            "or configure 'probe_url'",
            url=settings.url,
        )
    timestamp = int(clock())
    headers = {
        "User-Agent": USER_AGENT,
        **settings.headers,
        IDEMPOTENCY_HEADER: idempotency_key,
        SIGNATURE_HEADER: signature(settings.secret, timestamp, idempotency_key.encode()),
    }
    url = settings.probe_url
    response, snippet = _exchange(settings, "GET", url, headers, None)
    if response.status_code == httpx.codes.OK:
        return {"seen": True, **_result(url, idempotency_key, response)}
    if response.status_code == httpx.codes.NOT_FOUND:
        return None
    raise _status_error(settings, "GET", "probe_url", url, response, snippet)


@functools.cache
def _tls() -> ssl.SSLContext:
    """One TLS context per process: building one reads the CA bundle, about 40 ms each time."""
    return httpx.create_ssl_context()


def _result(url: str, idempotency_key: str, response: httpx.Response) -> dict[str, Any]:
    return {
        "status_code": response.status_code,
        "url": url,
        "idempotency_key": idempotency_key,
        "request_id": response.headers.get("X-Request-Id"),
    }


def _exchange(
    settings: Settings, method: str, url: str, headers: dict[str, str], content: bytes | None
) -> tuple[httpx.Response, str]:
    """Send one request; return the response (closed) and, for a failure, its body's start.

    Raises:
        WebhookTimeoutError: A network step took longer than ``settings.timeout``.
        WebhookConnectionError: The receiver could not be reached, or dropped the connection.
        WebhookError: Anything else httpx refused to send.
    """
    what = f"{method} {url}"
    try:
        with (
            httpx.Client(timeout=settings.timeout, follow_redirects=False, verify=_tls()) as client,
            client.stream(method, url, headers=headers, content=content) as response,
        ):
            snippet = "" if response.is_success else _snippet(response)
    except httpx.TimeoutException as exc:
        message = (
            f"webhook: {what} timed out ({type(exc).__name__}, 'timeout' is "
            f"{settings.timeout:g} s); turnout retries it with the same key"
        )
        raise WebhookTimeoutError(_redact(message, settings.secret), url=url) from exc
    except (httpx.NetworkError, httpx.RemoteProtocolError, httpx.ProxyError) as exc:
        message = (
            f"webhook: {what} failed: {type(exc).__name__}: {exc}; turnout retries it with "
            "the same key"
        )
        raise WebhookConnectionError(_redact(message, settings.secret), url=url) from exc
    except httpx.HTTPError as exc:
        message = f"webhook: {what} could not be sent: {type(exc).__name__}: {exc}"
        raise WebhookError(_redact(message, settings.secret), url=url) from exc
    return response, snippet


def _snippet(response: httpx.Response) -> str:
    """The start of an error answer's body, on one line; empty if unreadable."""
    data = bytearray()
    try:
        for chunk in response.iter_bytes():
            data += chunk
            if len(data) >= READ_LIMIT:
                break
    except httpx.HTTPError:
        pass  # the status says enough; a body that cannot be read adds nothing
    return " ".join(data[:READ_LIMIT].decode("utf-8", "replace").split())


def _status_error(
    settings: Settings,
    method: str,
    key: str,
    url: str,
    response: httpx.Response,
    snippet: str,
) -> WebhookStatusError:
    code = response.status_code
    retryable = code >= 500 or code in RETRYABLE_4XX
    message = f"webhook: {method} {url} answered {code} {response.reason_phrase}".rstrip()
    retry_after = response.headers.get("Retry-After")
    if retry_after:
        message += f" (Retry-After: {_shown(retry_after, settings.secret, 40)})"
    if snippet:
        message += f": {_shown(snippet, settings.secret, SNIPPET_LIMIT)!r}"
    if retryable:
        advice = "turnout retries it with the same key"
    elif 300 <= code < 400:
        location = _shown(response.headers.get("Location", ""), settings.secret, SNIPPET_LIMIT)
        advice = (
            f"redirects are not followed (to {location!r}): a signed request is only ever "
            f"sent to the configured address; set {key!r} to the address that answers"
        )
    elif code in (401, 403):
        advice = (
            "the receiver refused the request: check that it verifies signatures with the "
            "same key as 'secret', and any credentials in 'headers'; not retried"
        )
    elif code in (404, 410):
        advice = f"check {key!r}; not retried"
    elif key == "probe_url":
        advice = "a probe answers 200 (seen) or 404 (not seen); not retried"
    else:
        advice = "the receiver refused the notification; not retried"
    message += f"; {advice}"
    return WebhookStatusError(
        _redact(message, settings.secret), url=url, status_code=code, retryable=retryable
    )


def _shown(text: str, secret: str, limit: int) -> str:
    """What the receiver sent, secret replaced first (so no cut leaves a piece of it), cut."""
    text = _redact(text, secret)
    return text[:limit] + ("..." if len(text) > limit else "")


def _redact(text: str, secret: str) -> str:
    """``text`` with the secret replaced, in case a receiver echoed it back."""
    return text.replace(secret, REDACTED) if secret else text
