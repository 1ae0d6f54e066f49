r"""turnout releaser ``s3``: upload a static site to a bucket and switch a pointer object.

The artifact (a directory, a ``.tar.gz``/``.tgz`` or a ``.zip``) is checked entry by entry,
every file is uploaded under ``<prefix>/releases/<release-id>/`` with its Content-Type, a
manifest ``<prefix>/manifests/<release-id>.json`` records that the upload is complete, and
then one PUT of ``<prefix>/current.json`` points readers at the new release. Releases beyond
``keep`` are deleted, never the live one. The same idempotency key never uploads twice.

The result of :func:`turnout_release` (and of :func:`turnout_probe` once done) is::

    {
        "release_id": "<20 hex digits>",          # sha256(target + "\0" + key)[:20]
        "bucket": "www-example",
        "prefix": "site/releases/<release-id>/",  # where the files are
        "pointer": "site/current.json",           # what readers read first
        "url": "s3://www-example/site/releases/<release-id>/",
        "files": 12,
        "bytes": 48213,
        "idempotency_key": "<key>",
        "reused": False,                          # True when the key was already released
    }
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

from turnout_s3 import _release
from turnout_s3._config import parse_config
from turnout_s3._errors import (
    S3ConnectionError,
    S3ReleaseError,
    S3ServiceError,
    S3TimeoutError,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "S3ConnectionError",
    "S3ReleaseError",
    "S3ServiceError",
    "S3TimeoutError",
    "hookimpl",
    "turnout_probe",
    "turnout_release",
    "turnout_validate_config",
]

hookimpl = pluggy.HookimplMarker("turnout")

# turnout records an error's type by its qualified name: give the public one, as httpx does.
for _error in (S3ConnectionError, S3ReleaseError, S3ServiceError, S3TimeoutError):
    _error.__module__ = __name__


@hookimpl
def turnout_validate_config(config: Mapping[str, Any]) -> None:
    """Check the config as stored, secret references unresolved, before any release runs.

    Args:
        config: ``bucket`` (required), ``prefix``, ``endpoint_url``, ``region``, ``keep``
            (integer >= 1, default 5), and ``access_key_id`` / ``secret_access_key``
            (required, each a secret reference such as ``env:S3_SECRET_ACCESS_KEY``).

    Raises:
        ValueError: Naming the offending key and how to fix it; never showing a credential.
    """
    parse_config(config, resolved=False)


@hookimpl
def turnout_release(
    artifact: str, target: str, config: Mapping[str, Any], idempotency_key: str
) -> dict[str, Any]:
    """Upload ``artifact`` as a new release and point ``current.json`` at it.

    Calling again with the same ``target`` and ``idempotency_key`` uploads nothing: a
    finished release returns its stored result with ``reused=True``; one whose upload
    finished but whose switch did not is switched now.

    Args:
        artifact: Path of a directory, a ``.tar.gz``/``.tgz`` file or a ``.zip`` file.
        target: The target name.
        config: The resolved config.
        idempotency_key: The key identifying this release.

    Returns:
        The JSON-serialisable result described in the module docstring.

    Raises:
        FileNotFoundError: When the artifact is missing (permanent).
        ValueError: For a bad config, an artifact of another kind, an unsafe or empty
            artifact, or a damaged manifest (permanent).
        S3ServiceError: S3 answered with an error; ``retryable`` for throttling, request
            timeouts and 5xx, permanent for ``NoSuchBucket``, ``AccessDenied`` and the like.
        S3TimeoutError: The server took too long (transient).
        S3ConnectionError: The server could not be reached (transient).
    """
    return _release.release(artifact, target, parse_config(config), idempotency_key)


@hookimpl
def turnout_probe(
    target: str, config: Mapping[str, Any], idempotency_key: str
) -> dict[str, Any] | None:
    """Tell whether the release with this key happened, without writing anything.

    Args:
        target: The target name.
        config: The resolved config.
        idempotency_key: The key identifying the release.

    Returns:
        The stored result (with ``reused=True``) when the release's manifest exists and the
        pointer names it (or named it once), otherwise None.

    Raises:
        ValueError: For a bad config or a damaged manifest.
        S3ReleaseError: When S3 refuses or cannot be reached; see ``retryable``.
    """
    return _release.probe(target, parse_config(config), idempotency_key)
