from __future__ import annotations

from typing import Any

import pytest

import turnout_s3
from turnout_s3._config import parse_config

REFS = {"access_key_id": "env:S3_ACCESS_KEY_ID", "secret_access_key": "env:S3_SECRET"}
GOOD = {"bucket": "www-example", **REFS}
CANARY = "canary-plain-secret-0b9e"


@pytest.mark.parametrize(
    "config",
    [
        GOOD,
        {**GOOD, "secret_access_key": "file:/run/secrets/s3"},
        {**GOOD, "prefix": "sites/www", "keep": 1},
        {**GOOD, "prefix": "/sites/www/", "keep": 30},
        {**GOOD, "endpoint_url": "http://127.0.0.1:9000", "region": "eu-central-1"},
        {**GOOD, "endpoint_url": "https://s3.example.com", "bucket": "Legacy_Bucket.2"},
    ],
)
def test_validate_config_accepts_good_config(config: dict[str, Any]) -> None:
    assert turnout_s3.turnout_validate_config(config=config) is None


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        (REFS, "config 'bucket' is required"),
        ({**GOOD, "bucket": 5}, "config 'bucket' must be a string, got int"),
        ({**GOOD, "bucket": ""}, "config 'bucket' must be a bucket name"),
        ({**GOOD, "bucket": "a/b"}, "config 'bucket' must be a bucket name"),
        ({**GOOD, "prefix": "a/../b"}, "config 'prefix' must be '/'-separated names"),
        ({**GOOD, "prefix": "a//b"}, "config 'prefix' must be '/'-separated names"),
        ({**GOOD, "prefix": "a\\b"}, "config 'prefix' must be '/'-separated names"),
        ({**GOOD, "prefix": 3}, "config 'prefix' must be a string, got int"),
        ({**GOOD, "endpoint_url": "s3.example.com"}, "must be an http:// or https:// URL"),
        ({**GOOD, "endpoint_url": "ftp://host"}, "must be an http:// or https:// URL"),
        ({**GOOD, "endpoint_url": "https://host:99999"}, "has an invalid port"),
        ({**GOOD, "region": "EU Central"}, "config 'region' must be a region name"),
        ({**GOOD, "region": 1}, "config 'region' must be a region name such as"),
        ({**GOOD, "keep": 0}, "config 'keep' must be an integer >= 1, got 0"),
        ({**GOOD, "keep": -2}, "config 'keep' must be an integer >= 1, got -2"),
        ({**GOOD, "keep": "3"}, "config 'keep' must be an integer >= 1, got str"),
        ({**GOOD, "keep": 2.5}, "config 'keep' must be an integer >= 1, got float"),
        ({**GOOD, "keep": True}, "config 'keep' must be an integer >= 1, got bool"),
        ({"bucket": "bkt", "secret_access_key": "env:S"}, "config 'access_key_id' is required"),
        ({"bucket": "bkt", "access_key_id": "env:A"}, "config 'secret_access_key' is required"),
        ({**GOOD, "access_key_id": 7}, "config 'access_key_id' must be a string, got int"),
        ({**GOOD, "secret_access_key": "env:"}, "must be a secret reference"),
        ({**GOOD, "buckt": "x"}, "unknown config key(s) 'buckt'; known keys: 'access_key_id'"),
        (["bucket", "b"], "config must be a mapping, got list"),
    ],
)
def test_validate_config_refuses_bad_config(config: Any, fragment: str) -> None:
    with pytest.raises(ValueError, match=r"^s3: ") as caught:
        turnout_s3.turnout_validate_config(config=config)
    assert fragment in str(caught.value)


@pytest.mark.parametrize("key", ["access_key_id", "secret_access_key"])
@pytest.mark.parametrize("literal", [CANARY, "AKIA0123456789ABCDEF", "envy:thing", ""])
def test_validate_config_refuses_plain_credentials_without_showing_them(
    key: str, literal: str
) -> None:
    with pytest.raises(ValueError, match=f"config '{key}' must be a secret reference") as caught:
        turnout_s3.turnout_validate_config(config={**GOOD, key: literal})
    message = str(caught.value)
    assert "env:NAME or file:/path" in message
    assert "the value given is not shown" in message
    if literal:
        assert literal not in message


def test_validate_config_never_shows_endpoint_credentials() -> None:
    config = {**GOOD, "endpoint_url": f"https://user:{CANARY}@s3.example.com"}
    with pytest.raises(ValueError, match="must not carry a user name or password") as caught:
        turnout_s3.turnout_validate_config(config=config)
    assert CANARY not in str(caught.value)


def test_validate_config_lists_every_unknown_key_without_values() -> None:
    config = {**GOOD, "token": CANARY, "password": "hunter2"}
    with pytest.raises(ValueError, match="unknown config key") as caught:
        turnout_s3.turnout_validate_config(config=config)
    message = str(caught.value)
    assert "'password'" in message
    assert "'token'" in message
    assert CANARY not in message
    assert "hunter2" not in message


def test_parse_config_applies_defaults_and_hides_credentials_from_repr() -> None:
    settings = parse_config({"bucket": "bkt", "access_key_id": CANARY, "secret_access_key": CANARY})

    assert settings.keep == 5
    assert settings.prefix == ""
    assert settings.region == "us-east-1"
    assert settings.endpoint_url is None
    assert settings.key("current.json") == "current.json"
    assert CANARY not in repr(settings)


def test_parse_config_normalises_prefix() -> None:
    settings = parse_config({**GOOD, "prefix": "/sites/www/"}, resolved=False)

    assert settings.prefix == "sites/www"
    assert settings.key("releases", "x") == "sites/www/releases/x"
