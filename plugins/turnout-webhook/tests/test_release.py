from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import respx

import turnout_webhook
from turnout_webhook import WebhookError, WebhookStatusError

URL = "https://hooks.example.com/turnout"
Verify = Callable[[str, bytes], bool]
Transient = Callable[[BaseException], bool]


def release(config: dict[str, Any], key: str = "build-42", attempt: int = 1) -> Any:
    return turnout_webhook.turnout_release(
        artifact="https://ci.example.com/site.tgz",
        target="prod",
        config=config,
        context={"customer": "acme", "plan": "pro"},
        idempotency_key=key,
        attempt=attempt,
    )


def test_release_posts_signed_notification(
    router: respx.MockRouter, config: dict[str, Any], verify: Verify, secret: str
) -> None:
    route = router.post(URL).respond(202, headers={"X-Request-Id": "req_123"})
    before = int(time.time())

    result = release(config)

    assert route.call_count == 1
    request = route.calls.last.request
    body = json.loads(request.content)
    assert body == {
        "artifact": "https://ci.example.com/site.tgz",
        "target": "prod",
        "context": {"customer": "acme", "plan": "pro"},
        "idempotency_key": "build-42",
        "attempt": 1,
        "timestamp": body["timestamp"],
    }
    assert before <= body["timestamp"] <= int(time.time())
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Idempotency-Key"] == "build-42"
    assert request.headers["User-Agent"].startswith("turnout-webhook/")
    signature = request.headers["X-Turnout-Signature"]
    assert signature.startswith(f"t={body['timestamp']},v1=")
    assert verify(signature, request.content)
    # A signature is bound to the body: any other body fails the check.
    assert not verify(signature, request.content.replace(b"build-42", b"build-43"))
    assert result == {
        "status_code": 202,
        "url": URL,
        "idempotency_key": "build-42",
        "request_id": "req_123",
    }
    assert secret not in json.dumps(result)
    assert secret.encode() not in request.content


def test_release_repeated_attempt_sends_same_key_and_signs_anew(
    router: respx.MockRouter, config: dict[str, Any], verify: Verify
) -> None:
    route = router.post(URL).respond(200)

    first = release(config, attempt=1)
    again = release(config, attempt=2)

    assert first == again == {**first, "request_id": None}
    bodies = [json.loads(call.request.content) for call in route.calls]
    assert [b["attempt"] for b in bodies] == [1, 2]
    assert {call.request.headers["Idempotency-Key"] for call in route.calls} == {"build-42"}
    assert all(
        verify(call.request.headers["X-Turnout-Signature"], call.request.content)
        for call in route.calls
    )


@pytest.mark.parametrize("status", [200, 201, 202, 204])
def test_release_accepts_any_2xx(
    router: respx.MockRouter, config: dict[str, Any], status: int
) -> None:
    router.post(URL).respond(status)
    assert release(config)["status_code"] == status


def test_release_sends_extra_headers_and_passes_timeout(
    router: respx.MockRouter, config: dict[str, Any]
) -> None:
    route = router.post(URL).respond(202)
    config = {**config, "timeout": 2.5, "headers": {"X-Team": "web", "User-Agent": "ours/1"}}

    release(config)

    request = route.calls.last.request
    assert request.headers["X-Team"] == "web"
    assert request.headers["User-Agent"] == "ours/1"
    assert request.headers["Idempotency-Key"] == "build-42"
    assert request.extensions["timeout"] == {
        "connect": 2.5,
        "read": 2.5,
        "write": 2.5,
        "pool": 2.5,
    }


@pytest.mark.parametrize("status", [500, 502, 503, 504, 429, 408, 409])
def test_release_server_errors_and_rate_limits_are_retryable(
    router: respx.MockRouter, config: dict[str, Any], transient: Transient, status: int
) -> None:
    router.post(URL).respond(status, text="busy")

    with pytest.raises(WebhookStatusError) as caught:
        release(config)

    assert transient(caught.value)
    assert caught.value.status_code == status
    assert caught.value.url == URL
    message = str(caught.value)
    assert message.startswith(f"webhook: POST {URL} answered {status} ")
    assert message.endswith("turnout retries it with the same key")
    assert "'busy'" in message


def test_release_mentions_retry_after(router: respx.MockRouter, config: dict[str, Any]) -> None:
    router.post(URL).respond(429, headers={"Retry-After": "30"})

    with pytest.raises(WebhookStatusError, match=r"429 Too Many Requests \(Retry-After: 30\)"):
        release(config)


@pytest.mark.parametrize(
    ("status", "advice"),
    [
        (400, "the receiver refused the notification; not retried"),
        (401, "verifies signatures with the same key as 'secret'"),
        (403, "verifies signatures with the same key as 'secret'"),
        (404, "check 'url'; not retried"),
        (410, "check 'url'; not retried"),
        (422, "the receiver refused the notification; not retried"),
    ],
)
def test_release_other_client_errors_are_permanent(
    router: respx.MockRouter, config: dict[str, Any], transient: Transient, status: int, advice: str
) -> None:
    router.post(URL).respond(status, json={"error": "no such hook"})

    with pytest.raises(WebhookStatusError) as caught:
        release(config)

    assert not transient(caught.value)
    assert caught.value.status_code == status
    assert f"answered {status} " in str(caught.value)
    assert advice in str(caught.value)
    assert "no such hook" in str(caught.value)


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_release_does_not_follow_redirects(
    router: respx.MockRouter, config: dict[str, Any], transient: Transient, status: int
) -> None:
    moved = "https://elsewhere.example.net/hook"
    router.post(URL).respond(status, headers={"Location": moved})
    elsewhere = router.route(host="elsewhere.example.net").respond(200)

    with pytest.raises(WebhookStatusError) as caught:
        release(config)

    assert not elsewhere.called
    assert not transient(caught.value)
    assert f"redirects are not followed (to '{moved}')" in str(caught.value)
    assert "set 'url' to the address that answers" in str(caught.value)


@pytest.mark.parametrize(
    "error",
    [httpx.ConnectTimeout, httpx.ReadTimeout, httpx.WriteTimeout, httpx.PoolTimeout],
)
def test_release_timeouts_are_transient(
    router: respx.MockRouter,
    config: dict[str, Any],
    transient: Transient,
    error: type[httpx.TimeoutException],
) -> None:
    router.post(URL).mock(side_effect=error)

    with pytest.raises(TimeoutError) as caught:
        release({**config, "timeout": 3})

    assert isinstance(caught.value, WebhookError)
    assert transient(caught.value)
    assert f"POST {URL} timed out ({error.__name__}, 'timeout' is 3 s)" in str(caught.value)
    assert isinstance(caught.value.__cause__, error)  # kept for a traceback, never raised


@pytest.mark.parametrize(
    "error", [httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError, httpx.ProxyError]
)
def test_release_connection_errors_are_transient(
    router: respx.MockRouter,
    config: dict[str, Any],
    transient: Transient,
    error: type[httpx.TransportError],
) -> None:
    router.post(URL).mock(side_effect=error("[Errno 111] Connection refused"))

    with pytest.raises(ConnectionError) as caught:
        release(config)

    assert isinstance(caught.value, WebhookError)
    assert transient(caught.value)
    assert f"failed: {error.__name__}: [Errno 111] Connection refused" in str(caught.value)


def test_release_request_that_cannot_be_built_is_permanent(
    router: respx.MockRouter, config: dict[str, Any], transient: Transient
) -> None:
    router.post(URL).mock(side_effect=httpx.LocalProtocolError("illegal header"))

    with pytest.raises(WebhookError, match="could not be sent: LocalProtocolError") as caught:
        release(config)

    assert not transient(caught.value)


def test_release_error_shows_only_the_start_of_a_long_body(
    router: respx.MockRouter, config: dict[str, Any]
) -> None:
    router.post(URL).respond(400, text="field 'artifact'\n  is bad " + "x" * 10_000)

    with pytest.raises(WebhookStatusError) as caught:
        release(config)

    message = str(caught.value)
    assert "'field 'artifact' is bad xxx" in message.replace('"', "'")
    assert "x" * 300 not in message
    assert len(message) < 600


@pytest.mark.parametrize(
    "answer",
    [
        {"status_code": 400, "text": "expected secret canary-s3cret-8f2b1e"},
        {"status_code": 503, "headers": {"Retry-After": "canary-s3cret-8f2b1e"}},
        {"status_code": 302, "headers": {"Location": "https://x/?k=canary-s3cret-8f2b1e"}},
        # Echoed right where the message cuts the body: no piece of it may survive the cut.
        {"status_code": 400, "text": "x" * 190 + "canary-s3cret-8f2b1e"},
        {
            "status_code": 301,
            "headers": {"Location": "https://x/" + "y" * 180 + "canary-s3cret-8f2b1e"},
        },
    ],
)
def test_release_secret_never_in_errors_even_when_echoed(
    router: respx.MockRouter, config: dict[str, Any], secret: str, answer: dict[str, Any]
) -> None:
    router.post(URL).mock(return_value=httpx.Response(**answer))

    with pytest.raises(WebhookStatusError) as caught:
        release(config)

    assert secret not in str(caught.value)
    assert secret not in repr(caught.value)
    assert secret[:8] not in str(caught.value)
    assert "***" in str(caught.value)


@pytest.mark.parametrize("error", [httpx.ConnectError, httpx.ReadTimeout, httpx.DecodingError])
def test_release_secret_never_in_transport_errors(
    router: respx.MockRouter, config: dict[str, Any], secret: str, error: type[Exception]
) -> None:
    router.post(URL).mock(side_effect=error(f"something mentions {secret}"))

    with pytest.raises(WebhookError) as caught:
        release(config)

    assert secret not in str(caught.value)
