"""Publish a release folder, switch ``current`` to it, record it, and prune old ones.

Layout under ``root``::

    current -> releases/<release-id>        relative symlink, replaced atomically
    releases/<release-id>/                   one folder per release
    releases/<release-id>/.turnout-release.json   marker: id and creation time
    .turnout/keys/<release-id>.json          journal: present means "this key is done"
    .turnout/lock                            flock serialising releases on this root

Every step either happens entirely or not at all (rename, ``os.replace``), and each one can
be repeated, so a call that died anywhere can simply be made again with the same key.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from turnout_directory._artifact import open_artifact

if TYPE_CHECKING:
    from collections.abc import Iterator

    from turnout_directory._artifact import Source
    from turnout_directory._config import Settings

RELEASES = "releases"
CURRENT = "current"
STATE = ".turnout"
KEYS = "keys"
LOCK = "lock"
MARKER = ".turnout-release.json"
TMP_PREFIX = ".tmp-"
JOURNAL_FORMAT = 1

#: Seconds to wait for another release on the same root before giving up with TimeoutError,
#: which turnout treats as transient and retries.
LOCK_TIMEOUT = 120.0

_RELEASE_ID = re.compile(r"^[0-9a-f]{20}$")
_log = logging.getLogger("turnout_directory")


def release_id(target: str, idempotency_key: str) -> str:
    r"""Derive the release folder name from the target and the idempotency key.

    Deterministic, so one key can only ever map to one folder.

    Args:
        target: The target name.
        idempotency_key: The key turnout passes for this release.

    Returns:
        The first 20 hex digits of ``sha256(target + "\0" + idempotency_key)``.
    """
    return hashlib.sha256(f"{target}\0{idempotency_key}".encode()).hexdigest()[:20]


@dataclass(frozen=True)
class Layout:
    """Paths of everything the releaser keeps under one root.

    Attributes:
        root: The configured root directory.
    """

    root: str

    @property
    def releases(self) -> str:
        """Folder holding one sub-folder per release."""
        return os.path.join(self.root, RELEASES)

    @property
    def current(self) -> str:
        """The symlink the web server follows."""
        return os.path.join(self.root, CURRENT)

    @property
    def keys(self) -> str:
        """Folder holding one journal file per finished release."""
        return os.path.join(self.root, STATE, KEYS)

    @property
    def lock(self) -> str:
        """File whose flock serialises releases on this root."""
        return os.path.join(self.root, STATE, LOCK)

    def release(self, rid: str) -> str:
        """Absolute path of the release folder ``rid``."""
        return os.path.join(self.releases, rid)

    def journal(self, rid: str) -> str:
        """Absolute path of the journal file of release ``rid``."""
        return os.path.join(self.keys, f"{rid}.json")


def _require_text(name: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"directory: {name} must be a non-empty string")
    return value


def read_journal(
    layout: Layout, rid: str, target: str, idempotency_key: str
) -> dict[str, Any] | None:
    """Return the stored result of a finished release, marked ``reused``.

    Args:
        layout: Where the releases live.
        rid: The release id derived from ``target`` and ``idempotency_key``.
        target: The target name, checked against the journal.
        idempotency_key: The key, checked against the journal.

    Returns:
        The stored result with ``reused`` set to True, or None when the key is not done.

    Raises:
        ValueError: When the journal exists but is unreadable or belongs to another key.
    """
    path = layout.journal(rid)
    try:
        with open(path, encoding="utf-8") as handle:
            record = json.load(handle)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        # Journals are only ever written whole, so this is outside damage: guessing could
        # publish twice, so stop and let a person look.
        raise ValueError(f"directory: journal {path!r} is unreadable: {exc}") from exc
    result = record.get("result") if isinstance(record, dict) else None
    if not isinstance(result, dict):
        raise ValueError(f"directory: journal {path!r} holds no result")
    if record.get("target") != target or record.get("idempotency_key") != idempotency_key:
        raise ValueError(f"directory: journal {path!r} belongs to another target or key")
    return {**result, "reused": True}


@contextlib.contextmanager
def _locked(layout: Layout) -> Iterator[None]:
    os.makedirs(os.path.dirname(layout.lock), exist_ok=True)
    descriptor = os.open(layout.lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"directory: another release on {layout.root!r} still holds "
                        f"{layout.lock!r} after {LOCK_TIMEOUT:g}s"
                    ) from None
                time.sleep(0.1)
        yield
    finally:
        # Closing the descriptor drops the flock, also when the process dies.
        os.close(descriptor)


def _check_current_is_link(layout: Layout) -> None:
    if os.path.lexists(layout.current) and not os.path.islink(layout.current):
        raise ValueError(
            f"directory: {layout.current!r} exists and is not a symlink; move it away so "
            "releases can switch it atomically"
        )


def _materialise(source: Source, layout: Layout, rid: str) -> None:
    os.makedirs(layout.releases, exist_ok=True)
    # A fresh random name each time: a temp folder left by a crash is never reused, because
    # nobody can tell how far it got.
    scratch = os.path.join(layout.releases, f"{TMP_PREFIX}{rid}-{secrets.token_hex(4)}")
    os.mkdir(scratch)
    try:
        source.materialise(scratch)
        _write_marker(scratch, rid)
        # The release appears under its id whole or not at all.
        os.rename(scratch, layout.release(rid))
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise


def _write_marker(folder: str, rid: str) -> None:
    path = os.path.join(folder, MARKER)
    # The name is reserved: an artifact's own entry there (even a symlink) is replaced, never
    # written through.
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)
    now = time.time()
    marker = {
        "release_id": rid,
        "created": now,
        "created_at": datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds"),
    }
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    with os.fdopen(os.open(path, flags, 0o644), "w", encoding="utf-8") as handle:
        json.dump(marker, handle, indent=2, sort_keys=True)
        handle.write("\n")


def _switch_current(layout: Layout, rid: str) -> None:
    temporary = os.path.join(layout.root, f"{TMP_PREFIX}current-{secrets.token_hex(4)}")
    # Relative, so the root can be moved or mounted elsewhere (a container) and still work.
    os.symlink(f"{RELEASES}/{rid}", temporary)
    try:
        # rename(2) over the old link: a reader sees the old release or the new, never neither.
        os.replace(temporary, layout.current)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def _fsync_directory(path: str) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _write_json_atomically(path: str, data: dict[str, Any]) -> None:
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=".json", dir=folder)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2)
            handle.write("\n")
            handle.flush()
            # The journal is the proof the release happened: it must survive a power cut.
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    _fsync_directory(folder)


def _count_files(folder: str) -> int:
    count = 0
    pending = [folder]
    while pending:
        with os.scandir(pending.pop()) as scan:
            for item in scan:
                if item.is_dir(follow_symlinks=False):
                    pending.append(item.path)
                else:
                    count += 1
    # The marker is ours, not the artifact's.
    return count - (1 if os.path.lexists(os.path.join(folder, MARKER)) else 0)


def _created(folder: str) -> float:
    try:
        with open(os.path.join(folder, MARKER), encoding="utf-8") as handle:
            created = json.load(handle)["created"]
        if isinstance(created, int | float):
            return float(created)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    # Not one of ours or damaged: its own mtime is the best guess left.
    return os.lstat(folder).st_mtime


def _current_release(layout: Layout) -> str | None:
    try:
        link = os.readlink(layout.current)
    except OSError:
        return None
    points_to = os.path.normpath(os.path.join(layout.root, link))
    if os.path.dirname(points_to) != os.path.normpath(layout.releases):
        return None
    return os.path.basename(points_to)


def _remove_leftovers(layout: Layout) -> None:
    # Every temp name is made while holding the lock, so any seen now is from a dead call.
    for folder, prefix in (
        (layout.releases, TMP_PREFIX),
        (layout.keys, TMP_PREFIX),
        (layout.root, f"{TMP_PREFIX}current-"),
    ):
        try:
            scan = os.scandir(folder)
        except FileNotFoundError:
            continue
        with scan:
            leftovers = [item for item in scan if item.name.startswith(prefix)]
        for item in leftovers:
            if item.is_dir(follow_symlinks=False):
                shutil.rmtree(item.path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(item.path)


def _prune(layout: Layout, keep: int) -> None:
    current = _current_release(layout)
    with os.scandir(layout.releases) as scan:
        folders = [
            item.name
            for item in scan
            if _RELEASE_ID.match(item.name) and item.is_dir(follow_symlinks=False)
        ]
    newest_first = sorted(folders, key=lambda name: (_created(layout.release(name)), name))[::-1]
    for name in newest_first[keep:]:
        if name == current:
            continue
        # Rename first so the id vanishes at once; a half-deleted tree is then only ever
        # visible under a temp name, which the next run clears.
        doomed = os.path.join(layout.releases, f"{TMP_PREFIX}old-{name}-{secrets.token_hex(4)}")
        os.rename(layout.release(name), doomed)
        shutil.rmtree(doomed)


def _tidy(layout: Layout, keep: int) -> None:
    try:
        _prune(layout, keep)
        _remove_leftovers(layout)
    except OSError as exc:
        # The release itself is done and journaled; failing it now would only make turnout
        # retry something that already happened.
        _log.warning("directory: could not prune old releases under %r: %s", layout.root, exc)


def release(artifact: str, target: str, settings: Settings, idempotency_key: str) -> dict[str, Any]:
    """Publish ``artifact`` as the release for ``(target, idempotency_key)``.

    Args:
        artifact: Path of a directory, ``.tar.gz``/``.tgz`` or ``.zip`` artifact.
        target: The target name.
        settings: The checked configuration.
        idempotency_key: The key of this release.

    Returns:
        The result dict (see the package docstring).

    Raises:
        FileNotFoundError: When the artifact does not exist and the release is not on disk yet.
        ValueError: For an artifact of the wrong kind or with unsafe entries, and when
            ``current`` exists but is not a symlink.
        TimeoutError: When another release on the same root holds the lock too long.
    """
    target = _require_text("target", target)
    idempotency_key = _require_text("idempotency_key", idempotency_key)
    artifact = os.fspath(artifact)
    layout = Layout(settings.root)
    rid = release_id(target, idempotency_key)

    done = read_journal(layout, rid, target, idempotency_key)
    if done is not None:
        return done

    folder = layout.release(rid)
    with contextlib.ExitStack() as stack:
        source: Source | None = None
        # A folder without journal is a finished unpack from a call that died later: it is
        # complete (it got there by rename), so the artifact is not needed any more.
        if not os.path.isdir(folder):
            _refuse_artifact_containing_root(artifact, layout)
            # Inspect before taking the lock: a refused artifact must leave no trace at all.
            source = stack.enter_context(open_artifact(artifact))
        stack.enter_context(_locked(layout))

        done = read_journal(layout, rid, target, idempotency_key)
        if done is not None:
            return done
        _check_current_is_link(layout)
        if not os.path.isdir(folder):
            if source is None:
                source = stack.enter_context(open_artifact(artifact))
            _materialise(source, layout, rid)
        _switch_current(layout, rid)

        result: dict[str, Any] = {
            "release_id": rid,
            "path": folder,
            "current": layout.current,
            "files": _count_files(folder),
            "idempotency_key": idempotency_key,
            "reused": False,
        }
        _write_json_atomically(
            layout.journal(rid),
            {
                "format": JOURNAL_FORMAT,
                "release_id": rid,
                "target": target,
                "idempotency_key": idempotency_key,
                "completed_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "result": result,
            },
        )
        _tidy(layout, settings.keep)
    return result


def _refuse_artifact_containing_root(artifact: str, layout: Layout) -> None:
    if not os.path.isdir(artifact):
        return
    top = os.path.realpath(artifact)
    root = os.path.realpath(layout.root)
    if os.path.commonpath([top, root]) == top:
        raise ValueError(
            f"directory: artifact {artifact!r} contains the root {layout.root!r}; "
            "copying it would copy the releases into themselves"
        )


def probe(target: str, settings: Settings, idempotency_key: str) -> dict[str, Any] | None:
    """Tell whether the release for ``(target, idempotency_key)`` already happened.

    Args:
        target: The target name.
        settings: The checked configuration.
        idempotency_key: The key of the release.

    Returns:
        The stored result with ``reused=True``, or None. Writes nothing.
    """
    target = _require_text("target", target)
    idempotency_key = _require_text("idempotency_key", idempotency_key)
    layout = Layout(settings.root)
    return read_journal(layout, release_id(target, idempotency_key), target, idempotency_key)
