"""Parse and check the releaser's configuration.

turnout checks a target's config twice: ``turnout_validate_config`` sees it as stored, with
secret references (``env:NAME``, ``file:/path``) unresolved, and the release and probe hooks
see it resolved. :func:`parse_config` serves both; ``resolved`` says which one it is looking
at. No message ever shows a value of ``secret``, ``url``, ``probe_url`` or ``headers``: any of
them may carry a credential.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

#: Every key the releaser understands; anything else is refused so typos do not pass silently.
KNOWN_KEYS = ("headers", "probe_url", "secret", "timeout", "url")

#: Seconds each network step (connect, write, read) may take when ``timeout`` is not set.
DEFAULT_TIMEOUT = 10.0

#: The prefixes turnout resolves as secret references (``turnout._secrets``).
REFERENCE_PREFIXES = ("env:", "file:")

#: Headers the releaser sets itself or that belong to HTTP framing; ``headers`` may not set them.
RESERVED_HEADERS = frozenset(
    {
        "connection",
        "content-length",
        "content-type",
        "host",
        "idempotency-key",
        "transfer-encoding",
        "x-turnout-signature",
    }
)

# RFC 9110 token: the characters a header name may have.
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_URL_EXAMPLE = "e.g. https://hooks.example.com/turnout"


@dataclass(frozen=True)
class Settings:
    """Checked configuration.

    Attributes:
        url: Where release notifications are POSTed (http or https).
        secret: The HMAC-SHA256 key; kept out of ``repr`` so it never lands in a log.
        timeout: Seconds each network step may take.
        probe_url: Where ``turnout_probe`` asks whether a key was seen, or None.
        headers: Extra static headers sent with every request.
    """

    url: str
    secret: str = field(repr=False)
    timeout: float = DEFAULT_TIMEOUT
    probe_url: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


def is_reference(value: object) -> bool:
    """Whether ``value`` is a secret reference turnout resolves before a call.

    Args:
        value: A config value.

    Returns:
        True for a string starting with ``env:`` or ``file:``.
    """
    return isinstance(value, str) and value.startswith(REFERENCE_PREFIXES)


def parse_config(config: object, *, resolved: bool = True) -> Settings:
    """Check a config mapping and return it as :class:`Settings`.

    Args:
        config: The config as turnout passes it.
        resolved: False for the config as stored (``turnout_validate_config``): ``secret``
            must then be a secret reference, and ``url`` / ``probe_url`` may be one, whose
            value is checked when it is resolved. True for the resolved config of a release
            or a probe.

    Returns:
        The checked settings. With ``resolved=False`` they may hold unresolved references.

    Raises:
        ValueError: Naming the offending key and saying how to fix it.
    """
    if not isinstance(config, Mapping):
        raise ValueError(f"webhook: config must be a mapping, got {type(config).__name__}")
    unknown = sorted(str(key) for key in config if key not in KNOWN_KEYS)
    if unknown:
        names = ", ".join(repr(name) for name in unknown)
        known = ", ".join(repr(name) for name in KNOWN_KEYS)
        raise ValueError(f"webhook: unknown config key(s) {names}; known keys: {known}")

    if "url" not in config:
        raise ValueError(
            "webhook: config 'url' is required (the http:// or https:// address that receives "
            f"release notifications, {_URL_EXAMPLE})"
        )
    url = _check_url("url", config["url"], resolved=resolved)
    probe_url = config.get("probe_url")
    if probe_url is not None:
        probe_url = _check_url("probe_url", probe_url, resolved=resolved)
    secret = _check_secret(config.get("secret"), resolved=resolved)
    timeout = _check_timeout(config.get("timeout", DEFAULT_TIMEOUT))
    headers = _check_headers(config.get("headers", {}), resolved=resolved)
    return Settings(url=url, secret=secret, timeout=timeout, probe_url=probe_url, headers=headers)


def _check_url(key: str, value: object, *, resolved: bool) -> str:
    if not isinstance(value, str):
        raise ValueError(
            f"webhook: config {key!r} must be a string URL, got {type(value).__name__}"
        )
    if not resolved and is_reference(value):
        return value  # a URL with a token in it; its shape is checked once resolved
    if not value or any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise ValueError(
            f"webhook: config {key!r} must be an http:// or https:// URL without spaces or "
            f"control characters, {_URL_EXAMPLE}"
        )
    parts = urlsplit(value)
    if parts.scheme.lower() not in ("http", "https"):
        got = f"scheme {parts.scheme!r}" if parts.scheme else "no scheme"
        raise ValueError(
            f"webhook: config {key!r} must start with http:// or https://, got {got} "
            f"({_URL_EXAMPLE})"
        )
    if not parts.hostname:
        raise ValueError(f"webhook: config {key!r} must name a host, {_URL_EXAMPLE}")
    if "@" in parts.netloc:
        raise ValueError(
            f"webhook: config {key!r} must not carry a user name or password: requests are "
            "authenticated by the signature made with 'secret'; put any other credential in "
            "'headers'"
        )
    try:
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError:
        raise ValueError(
            f"webhook: config {key!r} has an invalid port; use a number from 1 to 65535"
        ) from None
    return value


def _check_secret(value: object, *, resolved: bool) -> str:
    hint = "e.g. secret=env:HOOK_SECRET, with HOOK_SECRET exported for turnout"
    if value is None:
        raise ValueError(
            "webhook: config 'secret' is required (the key the receiver verifies signatures "
            f"with), written as a secret reference, {hint}"
        )
    if not isinstance(value, str):
        raise ValueError(
            f"webhook: config 'secret' must be a string, got {type(value).__name__}; "
            f"write it as a secret reference, {hint}"
        )
    if resolved:
        if not value:
            raise ValueError(
                "webhook: config 'secret' resolved to an empty value; set the variable or "
                "file it refers to"
            )
        return value
    if not is_reference(value) or not value.partition(":")[2]:
        # Never echo the value: it is most likely the key itself.
        raise ValueError(
            "webhook: config 'secret' must be a secret reference, env:NAME or file:/path "
            f"({hint}), so the key is never stored in the registry; the value given is not "
            "shown"
        )
    return value


def _check_timeout(value: object) -> float:
    # bool is an int subclass; "timeout: true" is a mistake, not 1 second.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(
            f"webhook: config 'timeout' must be a number of seconds > 0, got {type(value).__name__}"
        )
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"webhook: config 'timeout' must be a number of seconds > 0, got {value}")
    return float(value)


def _check_headers(value: object, *, resolved: bool) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise ValueError(
            "webhook: config 'headers' must be an object of header names to string values, "
            f'e.g. {{"X-Team": "web"}}, got {type(value).__name__}'
        )
    headers: dict[str, str] = {}
    for name, header in value.items():
        if not isinstance(name, str) or not _TOKEN.match(name):
            raise ValueError(
                "webhook: config 'headers' has an invalid header name; use letters, digits "
                "and - only, e.g. X-Team"
            )
        if name.lower() in RESERVED_HEADERS:
            raise ValueError(
                f"webhook: config 'headers' may not set {name!r}: the releaser sets it (or "
                "HTTP framing does); remove it"
            )
        # Values are never shown: an Authorization header is a credential.
        if not isinstance(header, str):
            raise ValueError(
                f"webhook: config 'headers' value of {name!r} must be a string, got "
                f"{type(header).__name__}"
            )
        if any(ch in header for ch in "\r\n\0"):
            raise ValueError(
                f"webhook: config 'headers' value of {name!r} must be one line, without CR, "
                "LF or NUL"
            )
        if resolved and is_reference(header):
            # An older turnout resolved references only at the top level of config.
            raise ValueError(
                f"webhook: config 'headers' value of {name!r} is a secret reference that "
                "turnout did not resolve, so it would be sent as written; upgrade turnout to "
                "a version that resolves references at any depth of config"
            )
        headers[name] = header
    return headers
