"""Inspect an artifact and hand out its files, refusing anything that could not be a site file.

Every entry of an archive (or of a directory) is checked before a single byte is uploaded;
the whole artifact is refused with one message listing each bad entry. S3 has no links and
no special files, so symlinks, hardlinks, devices and fifos are refused rather than guessed
at; names that would climb out of the release prefix or mean something else to another tool
(``..``, absolute, backslash, NUL, control characters) are refused too.
"""

from __future__ import annotations

import errno
import gzip
import os
import re
import stat
import tarfile
import zipfile
import zlib
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

#: Wording used whenever an artifact of the wrong kind is refused.
ACCEPTED_KINDS = "a directory, a .tar.gz or .tgz file, or a .zip file"

# "C:/x", "C:\x" and drive-relative "C:x" all mean a Windows drive, never a relative path.
_DRIVE = re.compile(r"^[A-Za-z]:")
#: What reading a damaged archive raises, while listing it or while reading a member.
ARCHIVE_ERRORS = (
    tarfile.TarError,
    zipfile.BadZipFile,
    NotImplementedError,
    EOFError,
    zlib.error,
    gzip.BadGzipFile,
)


@dataclass(frozen=True)
class SiteFile:
    """One file of the site, ready to be read.

    Attributes:
        name: Its path relative to the site's top, ``/``-separated, normalised.
        size: Its size in bytes, as the artifact declares it.
        open: Opens its content for reading, from the start.
    """

    name: str
    size: int
    open: Callable[[], IO[bytes]]


def _name_problem(name: str) -> str:
    if "\x00" in name:
        return "NUL byte in path"
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in name):
        return "control character in path"
    # A backslash is a separator on Windows and a plain character in a key; refusing it
    # avoids a name meaning one thing here and another to whoever downloads the site.
    if "\\" in name:
        return "backslash in path"
    if name.startswith("/") or _DRIVE.match(name):
        return "absolute path"
    if ".." in name.split("/"):
        return "'..' component leaves the release prefix"
    return ""


def _normalise(name: str) -> str:
    return "/".join(part for part in name.split("/") if part not in ("", "."))


def find_problems(entries: Sequence[tuple[str, str]]) -> list[str]:
    """Describe every entry that may not be published.

    Args:
        entries: ``(name, kind)`` pairs in artifact order; kind is ``file``, ``dir``,
            ``symlink``, ``hardlink`` or ``special``, or a reason found while reading.

    Returns:
        One ``'name' (reason)`` string per offending entry, in artifact order; empty when the
        artifact is safe.
    """
    problems: list[str] = []
    files = Counter(_normalise(name) for name, kind in entries if kind == "file")
    reported: set[str] = set()
    for name, kind in entries:
        reason = _name_problem(name)
        if not reason:
            if kind == "symlink":
                reason = "symlink; S3 has no links, so copy the file in the build instead"
            elif kind == "hardlink":
                reason = "hardlink; S3 has no links, so copy the file in the build instead"
            elif kind == "special":
                reason = "device, fifo or other special file"
            elif kind not in ("file", "dir"):
                reason = kind
            elif kind == "file" and not _normalise(name):
                reason = "empty path"
            elif kind == "file" and files[_normalise(name)] > 1:
                if _normalise(name) in reported:
                    continue
                reported.add(_normalise(name))
                reason = "duplicate entry"
        if reason:
            problems.append(f"{name!r} ({reason})")
    return problems


def _refusal(artifact: str, problems: Sequence[str]) -> ValueError:
    count = len(problems)
    noun = "entry" if count == 1 else "entries"
    return ValueError(
        f"s3: refusing artifact {artifact!r}: {count} unsafe {noun}: " + "; ".join(problems)
    )


def _unreadable(artifact: str, kind: str, exc: BaseException) -> ValueError:
    return ValueError(f"s3: artifact {artifact!r} is not a readable {kind}: {exc}")


def _tar_kind(member: tarfile.TarInfo) -> str:
    if member.isdir():
        return "dir"
    if member.issym():
        return "symlink"
    if member.islnk():
        return "hardlink"
    if member.isreg():
        return "file"
    return "special"


def _tar_files(artifact: str, tar: tarfile.TarFile) -> list[SiteFile]:
    try:
        members = tar.getmembers()
    except ARCHIVE_ERRORS as exc:
        raise _unreadable(artifact, ".tar.gz", exc) from exc
    problems = find_problems([(member.name, _tar_kind(member)) for member in members])
    if problems:
        raise _refusal(artifact, problems)

    def opener(member: tarfile.TarInfo) -> Callable[[], IO[bytes]]:
        def open_member() -> IO[bytes]:
            handle = tar.extractfile(member)
            if handle is None:  # pragma: no cover - only regular files get here
                raise _unreadable(artifact, ".tar.gz", OSError(f"no data for {member.name!r}"))
            return handle

        return open_member

    return [
        SiteFile(_normalise(member.name), member.size, opener(member))
        for member in members
        if member.isreg()
    ]


def _zip_kind(info: zipfile.ZipInfo) -> str:
    kind_bits = stat.S_IFMT(info.external_attr >> 16)
    if info.flag_bits & 0x1:
        return "encrypted entry"
    if kind_bits == stat.S_IFLNK:
        return "symlink"
    if kind_bits == stat.S_IFDIR or info.is_dir():
        return "dir"
    # Zips made outside Unix carry no file type at all; those are plain files.
    return "file" if kind_bits in (0, stat.S_IFREG) else "special"


def _zip_files(artifact: str, archive: zipfile.ZipFile) -> list[SiteFile]:
    infos = archive.infolist()
    problems = find_problems([(info.filename, _zip_kind(info)) for info in infos])
    if problems:
        raise _refusal(artifact, problems)

    def opener(info: zipfile.ZipInfo) -> Callable[[], IO[bytes]]:
        return lambda: archive.open(info)

    return [
        SiteFile(_normalise(info.filename), info.file_size, opener(info))
        for info in infos
        if _zip_kind(info) == "file"
    ]


def _directory_files(artifact: str, top: str) -> list[SiteFile]:
    entries: list[tuple[str, str]] = []
    sizes: dict[str, int] = {}
    pending = [top]
    while pending:
        where = pending.pop()
        with os.scandir(where) as scan:
            items = sorted(scan, key=lambda item: item.name)
        for item in items:
            name = os.path.relpath(item.path, top).replace(os.sep, "/")
            info = item.stat(follow_symlinks=False)
            if stat.S_ISLNK(info.st_mode):
                entries.append((name, "symlink"))
            elif stat.S_ISDIR(info.st_mode):
                pending.append(item.path)
            elif stat.S_ISREG(info.st_mode):
                entries.append((name, "file"))
                sizes[name] = info.st_size
            else:
                entries.append((name, "special"))
    problems = find_problems(sorted(entries))
    if problems:
        raise _refusal(artifact, problems)

    def opener(path: str) -> Callable[[], IO[bytes]]:
        # O_NOFOLLOW: a file swapped for a link after the check is refused, not followed.
        return lambda: os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb")

    return [
        SiteFile(name, sizes[name], opener(os.path.join(top, *name.split("/"))))
        for name in sorted(sizes)
    ]


def _open_tar(path: str, artifact: str) -> tarfile.TarFile:
    try:
        return tarfile.open(path, "r:gz")
    except ARCHIVE_ERRORS as exc:
        raise _unreadable(artifact, ".tar.gz", exc) from exc


def _open_zip(path: str, artifact: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except ARCHIVE_ERRORS as exc:
        raise _unreadable(artifact, ".zip", exc) from exc


@contextmanager
def open_artifact(artifact: str) -> Iterator[list[SiteFile]]:
    """Inspect an artifact and yield its files, ready to upload.

    Nothing is uploaded by this function; an unsafe artifact is refused before the caller
    gets a chance to write anything.

    Args:
        artifact: Path of a directory, a ``.tar.gz``/``.tgz`` file or a ``.zip`` file.

    Yields:
        The site's files, each of which passed the checks; their openers work until the
        context exits.

    Raises:
        FileNotFoundError: When ``artifact`` does not exist.
        ValueError: When the artifact is of another kind, unreadable, has unsafe entries or
            has no file at all.
    """
    path = os.path.abspath(artifact)
    lowered = path.lower()
    if os.path.isdir(path):
        files = _directory_files(artifact, os.path.realpath(path))
        _require_files(artifact, files)
        yield files
    elif not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, "s3: artifact does not exist", artifact)
    elif os.path.isfile(path) and lowered.endswith((".tar.gz", ".tgz")):
        with _open_tar(path, artifact) as tar:
            files = _tar_files(artifact, tar)
            _require_files(artifact, files)
            yield files
    elif os.path.isfile(path) and lowered.endswith(".zip"):
        with _open_zip(path, artifact) as archive:
            files = _zip_files(artifact, archive)
            _require_files(artifact, files)
            yield files
    else:
        raise ValueError(f"s3: artifact {artifact!r} is not {ACCEPTED_KINDS}")


def _require_files(artifact: str, files: Sequence[SiteFile]) -> None:
    if not files:
        # Publishing it would switch readers to an empty site.
        raise ValueError(
            f"s3: artifact {artifact!r} holds no file; refusing to publish an empty site"
        )
