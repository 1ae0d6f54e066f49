from __future__ import annotations

from typing import Any

import pytest

import turnout_webhook
from turnout_webhook import WebhookStatusError


def test_release_and_probe_against_a_real_receiver(receiver: Any, secret: str) -> None:
    """Real sockets on 127.0.0.1: the receiver verifies every signature itself."""
    config = {"url": receiver.url, "secret": secret, "probe_url": receiver.probe_url}
    arguments = {
        "artifact": "/builds/site.tgz",
        "target": "prod",
        "context": {"customer": "acme"},
        "idempotency_key": "build-7",
    }

    assert turnout_webhook.turnout_probe(config=config, idempotency_key="build-7") is None
    first = turnout_webhook.turnout_release(config=config, attempt=1, **arguments)
    again = turnout_webhook.turnout_release(config=config, attempt=2, **arguments)

    assert (
        first
        == again
        == {
            "status_code": 202,
            "url": receiver.url,
            "idempotency_key": "build-7",
            "request_id": "delivery-1",
        }
    )
    assert [(d["key"], d["verified"], d["body"]["attempt"]) for d in receiver.deliveries] == [
        ("build-7", True, 1),
        ("build-7", True, 2),
    ]
    assert receiver.seen == ["build-7"]
    assert turnout_webhook.turnout_probe(config=config, idempotency_key="build-7") == {
        "seen": True,
        "status_code": 200,
        "url": receiver.probe_url,
        "idempotency_key": "build-7",
        "request_id": "probe",
    }

    # The receiver really checks: a wrong secret is refused, and nothing is recorded as seen.
    with pytest.raises(WebhookStatusError, match="answered 401") as caught:
        turnout_webhook.turnout_release(
            config={**config, "secret": "not-the-secret"},
            attempt=1,
            **{**arguments, "idempotency_key": "build-8"},
        )
    assert caught.value.retryable is False
    assert receiver.deliveries[-1] == {**receiver.deliveries[-1], "verified": False}
    assert receiver.seen == ["build-7"]
    assert turnout_webhook.turnout_probe(config=config, idempotency_key="build-8") is None
