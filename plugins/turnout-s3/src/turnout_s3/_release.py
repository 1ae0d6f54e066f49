r"""Upload a release under its own prefix, then switch the pointer object with one PUT.

Layout under the configured prefix (see the README)::

    current.json                   the pointer: names the live release prefix; written last
    releases/<release-id>/...      the site's files, one prefix per release
    manifests/<release-id>.json    written after every file and before the switch

A release's id is ``sha256(target + "\0" + key)[:20]``, so a retry reuses its prefix. The
manifest is the proof that every file is there; ``switched`` in it records that the pointer
was written, so a finished key is answered from the manifest without writing anything.
"""

from __future__ import annotations

import hashlib
import logging
import mimetypes
import re
import tempfile
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from turnout_s3._artifact import ARCHIVE_ERRORS, SiteFile, open_artifact
from turnout_s3._client import Bucket
from turnout_s3._errors import S3ReleaseError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from turnout_s3._config import Settings

RELEASES = "releases"
MANIFESTS = "manifests"
POINTER = "current.json"
FORMAT = 1

#: Served with the pointer so that caches and CDNs ask again on every read.
POINTER_CACHE_CONTROL = "no-cache, max-age=0"
#: The Content-Type of a file whose type cannot be told from its name.
DEFAULT_CONTENT_TYPE = "application/octet-stream"
#: Files up to this size are read into memory; larger ones are spooled to a temporary file.
IN_MEMORY = 16 * 1024 * 1024
#: S3's limit on the length of a key, in UTF-8 bytes.
MAX_KEY_BYTES = 1024

# Types the standard table lacks or gets wrong for the web, whatever /etc/mime.types says.
_WEB_TYPES = {
    ".avif": "image/avif",
    ".ico": "image/vnd.microsoft.icon",
    ".js": "text/javascript",
    ".json": "application/json",
    ".map": "application/json",
    ".md": "text/markdown",
    ".mjs": "text/javascript",
    ".svg": "image/svg+xml",
    ".wasm": "application/wasm",
    ".webmanifest": "application/manifest+json",
    ".webp": "image/webp",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".xml": "application/xml",
}
# Text a browser must not guess the encoding of: static sites are built as UTF-8.
_UTF8_TYPES = frozenset(
    {
        "application/json",
        "application/manifest+json",
        "application/xml",
        "image/svg+xml",
        "text/css",
        "text/csv",
        "text/html",
        "text/javascript",
        "text/markdown",
        "text/plain",
    }
)
_COMPRESSED_TYPES = {
    "gzip": "application/gzip",
    "bzip2": "application/x-bzip2",
    "xz": "application/x-xz",
}
# Built from the standard library's own table only, so the result does not depend on the
# machine's /etc/mime.types.
_MIME = mimetypes.MimeTypes()
_RELEASE_ID = re.compile(r"^[0-9a-f]{20}$")
_log = logging.getLogger("turnout_s3")


def release_id(target: str, idempotency_key: str) -> str:
    r"""Derive the release's prefix name from the target and the idempotency key.

    Args:
        target: The target name.
        idempotency_key: The key turnout passes for this release.

    Returns:
        The first 20 hex digits of ``sha256(target + "\0" + idempotency_key)``.
    """
    return hashlib.sha256(f"{target}\0{idempotency_key}".encode()).hexdigest()[:20]


def content_type(name: str) -> str:
    """The ``Content-Type`` a file is served with, told from its name.

    Args:
        name: The file's path in the site.

    Returns:
        A media type, with ``; charset=utf-8`` for text; ``application/octet-stream`` when
        the name says nothing.
    """
    lowered = name.lower()
    suffix = lowered[lowered.rfind(".") :] if "." in lowered.rsplit("/", 1)[-1] else ""
    guessed, encoding = _MIME.guess_type(lowered, strict=False)
    if encoding:
        # "site.tar.gz" is a gzip file to download, not a tar to unpack on the fly.
        guessed = _COMPRESSED_TYPES.get(encoding, DEFAULT_CONTENT_TYPE)
    else:
        guessed = _WEB_TYPES.get(suffix, guessed)
    media = guessed or DEFAULT_CONTENT_TYPE
    return f"{media}; charset=utf-8" if media in _UTF8_TYPES else media


class Layout:
    """Keys of everything the releaser keeps under the configured prefix."""

    def __init__(self, settings: Settings) -> None:
        """Remember the prefix.

        Args:
            settings: The checked configuration.
        """
        self._settings = settings

    @property
    def pointer(self) -> str:
        """The pointer object readers follow."""
        return self._settings.key(POINTER)

    @property
    def releases(self) -> str:
        """The prefix holding one sub-prefix per release."""
        return self._settings.key(RELEASES) + "/"

    def release(self, rid: str) -> str:
        """The prefix of release ``rid``, ending in ``/``."""
        return f"{self.releases}{rid}/"

    def manifest(self, rid: str) -> str:
        """The manifest object of release ``rid``."""
        return self._settings.key(MANIFESTS, f"{rid}.json")


def _now() -> tuple[float, str]:
    now = time.time()
    return now, datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds")


def _require_text(name: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"s3: {name} must be a non-empty string")
    return value


def read_manifest(
    bucket: Bucket, layout: Layout, rid: str, target: str, idempotency_key: str
) -> dict[str, Any] | None:
    """Read the manifest of release ``rid`` and check it belongs to this key.

    Args:
        bucket: The bucket.
        layout: Where things are in it.
        rid: The release id derived from ``target`` and ``idempotency_key``.
        target: The target name, checked against the manifest.
        idempotency_key: The key, checked against the manifest.

    Returns:
        The manifest, or None when the release was never completely uploaded.

    Raises:
        ValueError: When the manifest is damaged or belongs to another key.
    """
    key = layout.manifest(rid)
    manifest = bucket.get_json(key)
    if manifest is None:
        return None
    where = f"s3://{bucket.name}/{key}"
    if not isinstance(manifest, dict) or not isinstance(manifest.get("result"), dict):
        # Manifests are only ever written whole: guessing could publish twice, so stop.
        raise ValueError(f"s3: manifest {where} holds no result; move it away to release again")
    if manifest.get("target") != target or manifest.get("idempotency_key") != idempotency_key:
        raise ValueError(f"s3: manifest {where} belongs to another target or key")
    return manifest


def read_pointer(bucket: Bucket, layout: Layout) -> str | None:
    """Return the release id the pointer names, or None when there is no pointer.

    Raises:
        ValueError: When the pointer exists but does not name a release of this layout.
    """
    pointer = bucket.get_json(layout.pointer)
    if pointer is None:
        return None
    rid = pointer.get("release_id") if isinstance(pointer, dict) else None
    if (
        not isinstance(rid, str)
        or not _RELEASE_ID.match(rid)
        or pointer.get("prefix") != layout.release(rid)
    ):
        raise ValueError(
            f"s3: pointer s3://{bucket.name}/{layout.pointer} does not name a release under "
            f"{layout.releases!r}"
        )
    return rid


def _check_keys(artifact: str, layout: Layout, rid: str, files: Sequence[SiteFile]) -> None:
    too_long = [
        site_file.name
        for site_file in files
        if len((layout.release(rid) + site_file.name).encode("utf-8")) > MAX_KEY_BYTES
    ]
    if too_long:
        names = "; ".join(repr(name) for name in too_long[:5])
        raise ValueError(
            f"s3: refusing artifact {artifact!r}: {len(too_long)} path(s) make keys longer "
            f"than {MAX_KEY_BYTES} bytes: {names}"
        )


def _upload_file(
    bucket: Bucket, key: str, site_file: SiteFile, existing: str | None, artifact: str
) -> tuple[int, bool]:
    """Upload one file unless an identical object is already there; return (size, uploaded)."""
    with tempfile.SpooledTemporaryFile(max_size=IN_MEMORY) as spool:
        digest = hashlib.md5(usedforsecurity=False)
        try:
            with site_file.open() as source:
                while chunk := source.read(1024 * 1024):
                    digest.update(chunk)
                    spool.write(chunk)
        except ARCHIVE_ERRORS as exc:
            raise ValueError(
                f"s3: artifact {artifact!r} is not readable at {site_file.name!r}: {exc}"
            ) from exc
        size = spool.tell()
        # An earlier attempt of this key uploaded it already: a single-part PUT's ETag is
        # the MD5 of the content.
        if existing == digest.hexdigest():
            return size, False
        spool.seek(0)
        body: Any = spool.read() if size <= IN_MEMORY else spool
        bucket.put(
            key,
            body,
            content_type=content_type(site_file.name),
            md5=digest.digest(),
            length=size,
        )
    return size, True


def _upload(
    bucket: Bucket,
    layout: Layout,
    rid: str,
    files: Sequence[SiteFile],
    artifact: str,
) -> tuple[int, int, int]:
    """Upload every file of the release; return (files, bytes, files actually uploaded)."""
    prefix = layout.release(rid)
    existing = bucket.etags(prefix)
    total = uploaded = 0
    for site_file in files:
        key = prefix + site_file.name
        size, sent = _upload_file(bucket, key, site_file, existing.get(key), artifact)
        total += size
        uploaded += sent
    return len(files), total, uploaded


def _switch(bucket: Bucket, layout: Layout, rid: str, target: str, idempotency_key: str) -> None:
    """Point readers at release ``rid`` with one PUT of the pointer object."""
    if _live_or_none(bucket, layout) == rid:
        return
    _, published_at = _now()
    bucket.put_json(
        layout.pointer,
        {
            "format": FORMAT,
            "release_id": rid,
            "prefix": layout.release(rid),
            "target": target,
            "idempotency_key": idempotency_key,
            "published_at": published_at,
        },
        cache_control=POINTER_CACHE_CONTROL,
    )


def _live_or_none(bucket: Bucket, layout: Layout) -> str | None:
    try:
        return read_pointer(bucket, layout)
    except ValueError:
        return None  # a damaged pointer is simply replaced


def release(artifact: str, target: str, settings: Settings, idempotency_key: str) -> dict[str, Any]:
    """Publish ``artifact`` as the release for ``(target, idempotency_key)``.

    Args:
        artifact: Path of a directory, ``.tar.gz``/``.tgz`` or ``.zip`` artifact.
        target: The target name.
        settings: The checked, resolved configuration.
        idempotency_key: The key of this release.

    Returns:
        The result dict (see the package docstring).

    Raises:
        FileNotFoundError: When the artifact does not exist and the release is not uploaded.
        ValueError: For an artifact of the wrong kind or with unsafe entries, or a damaged
            manifest.
        S3ReleaseError: When S3 refuses or cannot be reached; see ``retryable``.
    """
    target = _require_text("target", target)
    idempotency_key = _require_text("idempotency_key", idempotency_key)
    bucket = Bucket(settings)
    layout = Layout(settings)
    rid = release_id(target, idempotency_key)

    manifest = read_manifest(bucket, layout, rid, target, idempotency_key)
    if manifest is not None and manifest.get("switched"):
        return {**manifest["result"], "reused": True}
    if manifest is None or manifest.get("pruned"):
        # Inspect first: a refused artifact leaves no object behind.
        with open_artifact(artifact) as files:
            _check_keys(artifact, layout, rid, files)
            count, size, uploaded = _upload(bucket, layout, rid, files, artifact)
        created, created_at = _now()
        result: dict[str, Any] = {
            "release_id": rid,
            "bucket": settings.bucket,
            "prefix": layout.release(rid),
            "pointer": layout.pointer,
            "url": f"s3://{settings.bucket}/{layout.release(rid)}",
            "files": count,
            "bytes": size,
            "idempotency_key": idempotency_key,
            "reused": False,
        }
        manifest = {
            "format": FORMAT,
            "release_id": rid,
            "target": target,
            "idempotency_key": idempotency_key,
            "created": created,
            "created_at": created_at,
            "switched": False,
            "pruned": False,
            "result": result,
        }
        # Written after every file: from now on the release is complete, and a retry of this
        # key only has to switch.
        bucket.put_json(layout.manifest(rid), manifest)
        _log.info("s3: uploaded %d of %d file(s) to %s", uploaded, count, result["url"])

    _switch(bucket, layout, rid, target, idempotency_key)
    _, switched_at = _now()
    bucket.put_json(
        layout.manifest(rid), {**manifest, "switched": True, "switched_at": switched_at}
    )
    _tidy(bucket, layout, settings.keep, rid)
    return {**manifest["result"], "reused": False}


def probe(target: str, settings: Settings, idempotency_key: str) -> dict[str, Any] | None:
    """Tell whether the release for ``(target, idempotency_key)`` happened; write nothing.

    It happened when its manifest exists and either records the switch or the pointer names
    it (a call that died between writing the pointer and recording it).

    Args:
        target: The target name.
        settings: The checked, resolved configuration.
        idempotency_key: The key of the release.

    Returns:
        The stored result with ``reused=True``, or None.

    Raises:
        ValueError: For a damaged manifest, or a damaged pointer when it decides the answer.
        S3ReleaseError: When S3 refuses or cannot be reached.
    """
    target = _require_text("target", target)
    idempotency_key = _require_text("idempotency_key", idempotency_key)
    bucket = Bucket(settings)
    layout = Layout(settings)
    rid = release_id(target, idempotency_key)
    manifest = read_manifest(bucket, layout, rid, target, idempotency_key)
    if manifest is None:
        return None
    if manifest.get("switched") or (
        not manifest.get("pruned") and read_pointer(bucket, layout) == rid
    ):
        return {**manifest["result"], "reused": True}
    return None


def _prune(bucket: Bucket, layout: Layout, keep: int, rid: str) -> None:
    # Read the pointer again: another release may have switched since, and its release is
    # the one readers see now.
    live = read_pointer(bucket, layout)
    complete: list[tuple[float, str, dict[str, Any]]] = []
    for name in bucket.folders(layout.releases):
        if not _RELEASE_ID.match(name):
            continue
        manifest = bucket.get_json(layout.manifest(name))
        # No manifest: an upload still running, or one that died; it is reused by a retry of
        # its key and never deleted here.
        if not isinstance(manifest, dict):
            continue
        created = manifest.get("created")
        age = float(created) if isinstance(created, int | float) else 0.0
        complete.append((age, name, manifest))
    newest_first = sorted(complete, key=lambda item: (item[0], item[1]), reverse=True)
    kept = 0
    for _, name, manifest in newest_first:
        if name in (live, rid):
            kept += 1
            continue
        if kept < keep and not manifest.get("pruned"):
            kept += 1
            continue
        # Mark first, so that a retry of that key never switches to a half-deleted prefix;
        # the manifest itself stays, so an old key stays done.
        bucket.put_json(layout.manifest(name), {**manifest, "pruned": True})
        deleted = bucket.delete_prefix(layout.release(name))
        _log.info("s3: pruned release %s (%d object(s))", name, deleted)


def _tidy(bucket: Bucket, layout: Layout, keep: int, rid: str) -> None:
    try:
        _prune(bucket, layout, keep, rid)
    except (S3ReleaseError, ValueError) as exc:
        # The release itself is done and recorded; failing it now would only make turnout
        # retry something that already happened.
        _log.warning("s3: could not prune old releases in s3://%s: %s", bucket.name, exc)
