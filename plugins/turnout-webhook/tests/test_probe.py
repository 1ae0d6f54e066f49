from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import respx

import turnout_webhook
from turnout_webhook import ProbeUnavailableError, WebhookStatusError

PROBE_URL = "https://hooks.example.com/turnout/seen"
Verify = Callable[[str, bytes], bool]
Transient = Callable[[BaseException], bool]


def probe(config: dict[str, Any], key: str = "build-42") -> Any:
    return turnout_webhook.turnout_probe(config=config, idempotency_key=key)


def test_probe_200_returns_seen_result(
    router: respx.MockRouter, config: dict[str, Any], verify: Verify, secret: str
) -> None:
    route = router.get(PROBE_URL).respond(200, headers={"X-Request-Id": "req_9"})

    result = probe(config)

    assert result == {
        "seen": True,
        "status_code": 200,
        "url": PROBE_URL,
        "idempotency_key": "build-42",
        "request_id": "req_9",
    }
    assert secret not in json.dumps(result)
    request = route.calls.last.request
    assert request.method == "GET"
    assert request.content == b""
    assert request.headers["Idempotency-Key"] == "build-42"
    # A probe has no body: its signature covers the key instead.
    assert verify(request.headers["X-Turnout-Signature"], b"build-42")
    assert not verify(request.headers["X-Turnout-Signature"], b"build-43")


def test_probe_404_returns_none(router: respx.MockRouter, config: dict[str, Any]) -> None:
    route = router.get(PROBE_URL).respond(404)

    assert probe(config) is None
    assert route.call_count == 1


def test_probe_sends_nothing_to_the_release_url(
    router: respx.MockRouter, config: dict[str, Any]
) -> None:
    posted = router.post(config["url"]).respond(202)
    router.get(PROBE_URL).respond(404)

    probe(config)

    assert not posted.called


@pytest.mark.parametrize("status", [500, 502, 503, 429])
def test_probe_server_errors_are_retryable(
    router: respx.MockRouter, config: dict[str, Any], transient: Transient, status: int
) -> None:
    router.get(PROBE_URL).respond(status)

    with pytest.raises(WebhookStatusError) as caught:
        probe(config)

    assert transient(caught.value)
    assert f"webhook: GET {PROBE_URL} answered {status}" in str(caught.value)


@pytest.mark.parametrize(
    ("status", "advice"),
    [
        (204, "a probe answers 200 (seen) or 404 (not seen)"),
        (400, "a probe answers 200 (seen) or 404 (not seen)"),
        (401, "the same key as 'secret'"),
        (410, "check 'probe_url'"),
        (307, "set 'probe_url' to the address that answers"),
    ],
)
def test_probe_other_answers_are_permanent(
    router: respx.MockRouter, config: dict[str, Any], transient: Transient, status: int, advice: str
) -> None:
    router.get(PROBE_URL).respond(status, headers={"Location": "https://elsewhere/"})

    with pytest.raises(WebhookStatusError) as caught:
        probe(config)

    assert not transient(caught.value)
    assert advice in str(caught.value)


@pytest.mark.parametrize(
    ("error", "kind"), [(httpx.ConnectTimeout, TimeoutError), (httpx.ConnectError, ConnectionError)]
)
def test_probe_network_failures_are_transient(
    router: respx.MockRouter,
    config: dict[str, Any],
    transient: Transient,
    error: type[Exception],
    kind: type[Exception],
) -> None:
    router.get(PROBE_URL).mock(side_effect=error)

    with pytest.raises(kind) as caught:
        probe(config)

    assert transient(caught.value)


def test_probe_without_probe_url_cannot_tell_and_sends_nothing(
    router: respx.MockRouter, config: dict[str, Any], transient: Transient
) -> None:
    del config["probe_url"]

    # None would tell turnout "not delivered", and it would send again: so it raises.
    with pytest.raises(ProbeUnavailableError) as caught:
        probe(config)

    assert not transient(caught.value)
    message = str(caught.value)
    assert "cannot tell whether the release with key 'build-42' was delivered" in message
    assert "no 'probe_url' is configured" in message
    assert "turnout reconcile RELEASE_ID --as succeeded" in message
    assert not router.calls


def test_probe_secret_never_in_errors(
    router: respx.MockRouter, config: dict[str, Any], secret: str
) -> None:
    router.get(PROBE_URL).respond(500, text=f"wrong key, want {secret}")

    with pytest.raises(WebhookStatusError) as caught:
        probe(config)

    assert secret not in str(caught.value)
