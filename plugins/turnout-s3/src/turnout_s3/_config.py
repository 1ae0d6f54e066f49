"""Parse and check the releaser's configuration.

turnout checks a target's config twice: ``turnout_validate_config`` sees it as stored, with
secret references (``env:NAME``, ``file:/path``) unresolved, and the release and probe hooks
see it resolved. :func:`parse_config` serves both; ``resolved`` says which one it is looking
at. No message ever shows a value of ``access_key_id`` or ``secret_access_key``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

#: Every key the releaser understands; anything else is refused so typos do not pass silently.
KNOWN_KEYS = (
    "access_key_id",
    "bucket",
    "endpoint_url",
    "keep",
    "prefix",
    "region",
    "secret_access_key",
)

#: How many releases stay in the bucket when ``keep`` is not set.
DEFAULT_KEEP = 5

#: The region signed for when none is given; S3-compatible servers mostly ignore it.
DEFAULT_REGION = "us-east-1"

#: The prefixes turnout resolves as secret references.
REFERENCE_PREFIXES = ("env:", "file:")

# Loose on purpose: S3-compatible servers accept names AWS would refuse (upper case, '_').
_BUCKET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,254}$")
_REGION = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


@dataclass(frozen=True)
class Settings:
    """Checked configuration.

    Attributes:
        bucket: The bucket releases are uploaded to.
        prefix: Key prefix every object goes under, without slashes at either end; may be "".
        endpoint_url: The S3-compatible server's URL, or None for AWS.
        region: The region requests are signed for.
        access_key_id: The access key id; kept out of ``repr``.
        secret_access_key: The secret key; kept out of ``repr``.
        keep: How many releases to keep (the live one is always kept).
    """

    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    region: str = DEFAULT_REGION
    access_key_id: str = field(default="", repr=False)
    secret_access_key: str = field(default="", repr=False)
    keep: int = DEFAULT_KEEP

    def key(self, *parts: str) -> str:
        """Join ``parts`` under the configured prefix into an object key."""
        return "/".join([self.prefix, *parts] if self.prefix else parts)


def is_reference(value: object) -> bool:
    """Whether ``value`` is a secret reference turnout resolves before a call.

    Args:
        value: A config value.

    Returns:
        True for a string starting with ``env:`` or ``file:`` followed by something.
    """
    return (
        isinstance(value, str)
        and value.startswith(REFERENCE_PREFIXES)
        and bool(value.partition(":")[2])
    )


def parse_config(config: object, *, resolved: bool = True) -> Settings:
    """Check a config mapping and return it as :class:`Settings`.

    Args:
        config: The config as turnout passes it.
        resolved: False for the config as stored (``turnout_validate_config``): the two
            credentials must then be secret references. True for the resolved config of a
            release or a probe: they must then be non-empty.

    Returns:
        The checked settings. With ``resolved=False`` the credentials are the references.

    Raises:
        ValueError: Naming the offending key and saying how to fix it.
    """
    if not isinstance(config, Mapping):
        raise ValueError(f"s3: config must be a mapping, got {type(config).__name__}")
    unknown = sorted(str(key) for key in config if key not in KNOWN_KEYS)
    if unknown:
        names = ", ".join(repr(name) for name in unknown)
        known = ", ".join(repr(name) for name in KNOWN_KEYS)
        raise ValueError(f"s3: unknown config key(s) {names}; known keys: {known}")

    return Settings(
        bucket=_check_bucket(config.get("bucket")),
        prefix=_check_prefix(config.get("prefix", "")),
        endpoint_url=_check_endpoint(config.get("endpoint_url")),
        region=_check_region(config.get("region", DEFAULT_REGION)),
        access_key_id=_check_credential("access_key_id", config, resolved=resolved),
        secret_access_key=_check_credential("secret_access_key", config, resolved=resolved),
        keep=_check_keep(config.get("keep", DEFAULT_KEEP)),
    )


def _check_bucket(value: object) -> str:
    if value is None:
        raise ValueError("s3: config 'bucket' is required (the bucket releases are uploaded to)")
    if not isinstance(value, str):
        raise ValueError(f"s3: config 'bucket' must be a string, got {type(value).__name__}")
    if not _BUCKET.match(value):
        raise ValueError(
            f"s3: config 'bucket' must be a bucket name (letters, digits, '.', '-', '_'; "
            f"3 to 255 characters), got {value!r}"
        )
    return value


def _check_prefix(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"s3: config 'prefix' must be a string, got {type(value).__name__}")
    parts = value.strip("/").split("/") if value.strip("/") else []
    # Keys are not paths, but '..' or '//' in them breaks every tool that maps keys to files.
    if any(part in ("", ".", "..") for part in parts) or any(
        ord(ch) < 0x20 or ch in "\\\x7f" for ch in value
    ):
        raise ValueError(
            "s3: config 'prefix' must be '/'-separated names without '.', '..', empty parts, "
            f"backslashes or control characters, e.g. 'sites/www', got {value!r}"
        )
    return "/".join(parts)


def _check_endpoint(value: object) -> str | None:
    if value is None:
        return None
    example = "e.g. https://s3.eu-central-1.example.com or http://127.0.0.1:9000"
    if not isinstance(value, str):
        raise ValueError(
            f"s3: config 'endpoint_url' must be a string URL, got {type(value).__name__}"
        )
    parts = urlsplit(value)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError(f"s3: config 'endpoint_url' must be an http:// or https:// URL, {example}")
    if "@" in parts.netloc:
        # Never echo the value: it carries a credential.
        raise ValueError(
            "s3: config 'endpoint_url' must not carry a user name or password; give the "
            "credentials as 'access_key_id' and 'secret_access_key'"
        )
    try:
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError:
        raise ValueError(
            "s3: config 'endpoint_url' has an invalid port; use a number from 1 to 65535"
        ) from None
    return value


def _check_region(value: object) -> str:
    if not isinstance(value, str) or not _REGION.match(value):
        got = repr(value) if isinstance(value, str) else type(value).__name__
        raise ValueError(
            f"s3: config 'region' must be a region name such as 'eu-central-1', got {got}"
        )
    return value


def _check_credential(key: str, config: Mapping[object, object], *, resolved: bool) -> str:
    hint = f"e.g. {key}=env:S3_{key.upper()}, with S3_{key.upper()} exported for turnout"
    value = config.get(key)
    if value is None:
        raise ValueError(f"s3: config {key!r} is required, written as a secret reference, {hint}")
    if not isinstance(value, str):
        raise ValueError(
            f"s3: config {key!r} must be a string, got {type(value).__name__}; write it as a "
            f"secret reference, {hint}"
        )
    if resolved:
        if not value:
            raise ValueError(
                f"s3: config {key!r} resolved to an empty value; set the variable or file "
                "it refers to"
            )
        return value
    if not is_reference(value):
        # Never echo the value: it is most likely the credential itself.
        raise ValueError(
            f"s3: config {key!r} must be a secret reference, env:NAME or file:/path ({hint}), "
            "so the credential is never stored in the registry; the value given is not shown"
        )
    return value


def _check_keep(value: object) -> int:
    # bool is an int subclass; "keep: true" is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"s3: config 'keep' must be an integer >= 1, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"s3: config 'keep' must be an integer >= 1, got {value}")
    return value
