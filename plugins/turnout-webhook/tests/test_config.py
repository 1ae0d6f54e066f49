from __future__ import annotations

from typing import Any

import pytest
import respx

import turnout_webhook
from turnout_webhook._config import parse_config

SECRET_REF = "env:HOOK_SECRET"


@pytest.mark.parametrize(
    "config",
    [
        {"url": "https://hooks.example.com/turnout", "secret": SECRET_REF},
        {"url": "http://127.0.0.1:8080/hook", "secret": "file:/run/secrets/hook"},
        {"url": "HTTPS://hooks.example.com", "secret": SECRET_REF, "timeout": 2},
        {"url": "https://hooks.example.com/t?team=web", "secret": SECRET_REF, "timeout": 0.5},
        {
            "url": "https://hooks.example.com/turnout",
            "secret": SECRET_REF,
            "probe_url": "https://hooks.example.com/turnout/seen",
            "headers": {"X-Team": "web", "Authorization": "Bearer abc"},
        },
        # A URL with a token in it may itself be a secret reference; checked once resolved.
        {"url": "env:HOOK_URL", "secret": SECRET_REF, "probe_url": "file:/run/secrets/probe"},
    ],
)
def test_validate_config_accepts_good_config(config: dict[str, Any]) -> None:
    assert turnout_webhook.turnout_validate_config(config=config) is None


GOOD = {"url": "https://hooks.example.com/turnout", "secret": SECRET_REF}


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ({"secret": SECRET_REF}, "config 'url' is required"),
        ({**GOOD, "url": 5}, "config 'url' must be a string URL, got int"),
        ({**GOOD, "url": ""}, "config 'url' must be an http:// or https:// URL"),
        ({**GOOD, "url": "https://a b"}, "without spaces or control characters"),
        ({**GOOD, "url": "ftp://host/x"}, "must start with http:// or https://, got scheme 'ftp'"),
        ({**GOOD, "url": "hooks.example.com/x"}, "must start with http:// or https://, got no"),
        ({**GOOD, "url": "https:///path"}, "config 'url' must name a host"),
        ({**GOOD, "url": "https://user:pw@host/x"}, "must not carry a user name or password"),
        ({**GOOD, "url": "https://host:99999/x"}, "config 'url' has an invalid port"),
        ({**GOOD, "probe_url": "mailto:x@y"}, "config 'probe_url' must start with http://"),
        ({"url": GOOD["url"]}, "config 'secret' is required"),
        ({**GOOD, "secret": 42}, "config 'secret' must be a string, got int"),
        ({**GOOD, "secret": "env:"}, "config 'secret' must be a secret reference"),
        ({**GOOD, "timeout": 0}, "config 'timeout' must be a number of seconds > 0, got 0"),
        ({**GOOD, "timeout": -1.5}, "must be a number of seconds > 0, got -1.5"),
        ({**GOOD, "timeout": float("inf")}, "must be a number of seconds > 0, got inf"),
        ({**GOOD, "timeout": "10"}, "must be a number of seconds > 0, got str"),
        ({**GOOD, "timeout": True}, "must be a number of seconds > 0, got bool"),
        ({**GOOD, "headers": ["X-A"]}, "config 'headers' must be an object"),
        ({**GOOD, "headers": {"X A": "1"}}, "config 'headers' has an invalid header name"),
        ({**GOOD, "headers": {"Idempotency-Key": "1"}}, "may not set 'Idempotency-Key'"),
        ({**GOOD, "headers": {"x-turnout-signature": "1"}}, "may not set 'x-turnout-signature'"),
        ({**GOOD, "headers": {"Content-Type": "text/plain"}}, "may not set 'Content-Type'"),
        ({**GOOD, "headers": {"X-A": 1}}, "value of 'X-A' must be a string, got int"),
        ({**GOOD, "headers": {"X-A": "a\r\nX-B: b"}}, "value of 'X-A' must be one line"),
        ({**GOOD, "secrte": SECRET_REF}, "unknown config key(s) 'secrte'; known keys: 'headers'"),
        (["url", GOOD["url"]], "config must be a mapping, got list"),
    ],
)
def test_validate_config_refuses_bad_config(config: Any, fragment: str) -> None:
    with pytest.raises(ValueError, match=r"^webhook: ") as caught:
        turnout_webhook.turnout_validate_config(config=config)
    assert fragment in str(caught.value)


@pytest.mark.parametrize("literal", ["canary-s3cret-8f2b1e", "s3cr3t:with-colon", ""])
def test_validate_config_refuses_literal_secret_without_showing_it(literal: str) -> None:
    with pytest.raises(ValueError, match="must be a secret reference, env:NAME or file:/path") as e:
        turnout_webhook.turnout_validate_config(config={**GOOD, "secret": literal})
    assert "secret=env:HOOK_SECRET" in str(e.value)
    if literal:
        assert literal not in str(e.value)


def test_validate_config_lists_every_unknown_key_without_values() -> None:
    config = {**GOOD, "token": "tok-value-1", "password": "hunter2"}
    with pytest.raises(ValueError, match="unknown config key") as caught:
        turnout_webhook.turnout_validate_config(config=config)
    message = str(caught.value)
    assert "'password'" in message
    assert "'token'" in message
    assert "tok-value-1" not in message
    assert "hunter2" not in message


@pytest.mark.parametrize(
    "config",
    [
        {**GOOD, "url": "gopher://tok-value-1@example.com"},
        {**GOOD, "url": "https://tok-value-1:pw@example.com"},
        {**GOOD, "url": "https://example.com:tok-value-1/"},
        {**GOOD, "headers": {"Authorization": "tok-value-1\n"}},
        {**GOOD, "headers": {"Authorization": 17, "X-Key": "tok-value-1"}},
    ],
)
def test_validate_config_never_shows_url_or_header_values(config: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"^webhook: ") as caught:
        turnout_webhook.turnout_validate_config(config=config)
    assert "tok-value-1" not in str(caught.value)


def test_release_checks_resolved_url_before_sending(
    router: respx.MockRouter, config: dict[str, Any], secret: str
) -> None:
    # Stored as env:HOOK_URL, which passed validation; it resolved to something unusable.
    resolved = {**config, "url": "ftp://files.example.com/drop"}

    with pytest.raises(ValueError, match="config 'url' must start with http") as caught:
        turnout_webhook.turnout_release(
            artifact="site.tgz",
            target="prod",
            config=resolved,
            context={},
            idempotency_key="k1",
            attempt=1,
        )

    assert secret not in str(caught.value)
    assert not router.calls


def test_release_refuses_secret_that_resolved_to_nothing(
    router: respx.MockRouter, config: dict[str, Any]
) -> None:
    with pytest.raises(ValueError, match="config 'secret' resolved to an empty value"):
        turnout_webhook.turnout_release(
            artifact="site.tgz",
            target="prod",
            config={**config, "secret": ""},
            context={},
            idempotency_key="k1",
            attempt=1,
        )
    assert not router.calls


def test_parse_config_applies_defaults_and_hides_secret_from_repr(
    config: dict[str, Any], secret: str
) -> None:
    settings = parse_config({"url": config["url"], "secret": secret})

    assert settings.timeout == 10.0
    assert settings.probe_url is None
    assert settings.headers == {}
    assert settings.secret == secret
    assert secret not in repr(settings)


def test_headers_may_hold_secret_references_resolved_before_the_call() -> None:
    # Stored as a reference (validated as such); sent only once turnout has resolved it.
    config = {**GOOD, "headers": {"Authorization": "env:HOOK_TOKEN"}}
    turnout_webhook.turnout_validate_config(config=config)
    with pytest.raises(ValueError, match="is a secret reference that turnout did not resolve"):
        parse_config({**config, "secret": "resolved-key"}, resolved=True)
