from __future__ import annotations

import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import turnout_s3
from turnout_s3 import _client


def release(artifact: Path | str, config: dict[str, Any], key: str = "k1") -> Any:
    return turnout_s3.turnout_release(
        artifact=str(artifact), target="prod", config=config, idempotency_key=key
    )


@pytest.fixture
def one_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    """botocore tries once, so the fault is seen without its backoff."""
    monkeypatch.setattr(_client, "MAX_ATTEMPTS", 1)


def everything_said(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)) + repr(exc) + repr(vars(exc))


def test_release_to_missing_bucket_is_permanent(
    config: dict[str, Any], make_tree: Any, transient: Callable[[BaseException], bool]
) -> None:
    config["bucket"] = "no-such-bucket-here"

    with pytest.raises(turnout_s3.S3ServiceError) as caught:
        release(make_tree("v1", {"index.html": "one"}), config)

    assert caught.value.code == "NoSuchBucket"
    assert caught.value.status_code == 404
    assert not transient(caught.value)
    assert "create the bucket or fix config 'bucket'" in str(caught.value)
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


def test_release_with_server_stopped_is_a_retryable_connection_error(
    config: dict[str, Any],
    make_tree: Any,
    proxy: Any,
    transient: Callable[[BaseException], bool],
    one_attempt: None,
) -> None:
    proxy.stop()

    with pytest.raises(turnout_s3.S3ConnectionError) as caught:
        release(make_tree("v1", {"index.html": "one"}), config)

    assert isinstance(caught.value, ConnectionError)
    assert transient(caught.value)
    assert proxy.endpoint in str(caught.value)


def test_probe_with_server_stopped_raises_rather_than_guessing(
    config: dict[str, Any],
    proxy: Any,
    transient: Callable[[BaseException], bool],
    one_attempt: None,
) -> None:
    proxy.stop()

    with pytest.raises(ConnectionError) as caught:
        turnout_s3.turnout_probe(target="prod", config=config, idempotency_key="k1")

    assert transient(caught.value)


def test_release_dropped_connection_is_retryable(
    config: dict[str, Any],
    make_tree: Any,
    proxy: Any,
    transient: Callable[[BaseException], bool],
    one_attempt: None,
) -> None:
    proxy.fault = lambda method, path: "drop" if method == "PUT" else None

    with pytest.raises(turnout_s3.S3ReleaseError) as caught:
        release(make_tree("v1", {"index.html": "one"}), config)

    assert isinstance(caught.value, ConnectionError)
    assert transient(caught.value)


def test_release_slow_server_is_a_retryable_timeout(
    config: dict[str, Any],
    make_tree: Any,
    proxy: Any,
    monkeypatch: pytest.MonkeyPatch,
    transient: Callable[[BaseException], bool],
    one_attempt: None,
) -> None:
    monkeypatch.setattr(_client, "READ_TIMEOUT", 0.3)
    proxy.fault = lambda method, path: "slow"

    with pytest.raises(turnout_s3.S3TimeoutError) as caught:
        release(make_tree("v1", {"index.html": "one"}), config)

    assert isinstance(caught.value, TimeoutError)
    assert transient(caught.value)


@pytest.mark.parametrize(
    ("status", "code", "retryable"),
    [
        (503, "SlowDown", True),
        (503, "ServiceUnavailable", True),
        (500, "InternalError", True),
        (400, "RequestTimeout", True),
        (502, "BadGateway", True),
        (429, "TooManyRequests", True),
        (403, "AccessDenied", False),
        (403, "InvalidAccessKeyId", False),
        (403, "SignatureDoesNotMatch", False),
        (400, "InvalidRequest", False),
    ],
)
def test_release_error_answers_are_classified(
    status: int,
    code: str,
    retryable: bool,
    config: dict[str, Any],
    make_tree: Any,
    proxy: Any,
    objects: Any,
    transient: Callable[[BaseException], bool],
    one_attempt: None,
) -> None:
    proxy.fault = lambda method, path: (status, code, "refused") if method == "PUT" else None

    with pytest.raises(turnout_s3.S3ServiceError) as caught:
        release(make_tree("v1", {"index.html": "one"}), config)

    assert caught.value.code == code
    assert caught.value.status_code == status
    assert caught.value.operation == "PutObject"
    assert caught.value.retryable is retryable
    assert transient(caught.value) is retryable
    assert objects("www/current.json") == {}


def test_botocore_retries_at_most_once(config: dict[str, Any], make_tree: Any, proxy: Any) -> None:
    proxy.fault = lambda method, path: (500, "InternalError", "x") if method == "PUT" else None

    with pytest.raises(turnout_s3.S3ServiceError):
        release(make_tree("v1", {"index.html": "one"}), config)

    assert len(proxy.writes()) == _client.MAX_ATTEMPTS == 2


def test_credentials_never_appear_in_errors_even_when_the_server_echoes_them(
    config: dict[str, Any],
    make_tree: Any,
    proxy: Any,
    credentials: tuple[str, str],
    one_attempt: None,
) -> None:
    access_key_id, secret = credentials
    echo = f"Signature mismatch; AWSAccessKeyId={access_key_id} secret={secret}"
    proxy.fault = lambda method, path: (403, "SignatureDoesNotMatch", echo)

    with pytest.raises(turnout_s3.S3ServiceError) as caught:
        release(make_tree("v1", {"index.html": "one"}), config)

    said = everything_said(caught.value)
    assert access_key_id not in said
    assert secret not in said
    assert "AWSAccessKeyId=***" in str(caught.value)
    assert "check the credentials the secret references point to" in str(caught.value)


def test_credentials_never_appear_in_results_or_objects(
    config: dict[str, Any],
    make_tree: Any,
    s3: Any,
    bucket: str,
    objects: Any,
    credentials: tuple[str, str],
) -> None:
    result = release(make_tree("v1", {"index.html": "one"}), config)
    probed = turnout_s3.turnout_probe(target="prod", config=config, idempotency_key="k1")

    stored = b"".join(
        s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        for key in objects("")
        if not key.startswith("www/releases/")
    )
    for credential in credentials:
        assert credential not in repr(result)
        assert credential not in repr(probed)
        assert credential.encode() not in stored


@pytest.mark.parametrize("key", ["access_key_id", "secret_access_key"])
def test_release_refuses_credential_that_resolved_to_nothing(
    key: str, config: dict[str, Any], make_tree: Any, proxy: Any
) -> None:
    config[key] = ""

    with pytest.raises(ValueError, match=f"config '{key}' resolved to an empty value"):
        release(make_tree("v1", {"index.html": "one"}), config)

    assert proxy.requests == []
