"""Inspect artifacts and unpack them without letting any entry escape the release folder.

Every member of an archive (or every symlink of a directory artifact) is checked before a
single byte is written; the whole artifact is refused with one message listing each bad
entry. Only then is it unpacked, into a folder the caller provides.
"""

from __future__ import annotations

import errno
import gzip
import os
import re
import shutil
import stat
import tarfile
import zipfile
import zlib
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence

Kind = Literal["file", "dir", "symlink", "hardlink", "special"]

#: Wording used whenever an artifact of the wrong kind is refused.
ACCEPTED_KINDS = "a directory, a .tar.gz or .tgz file, or a .zip file"

# Linux gives up after 40 hops as well; a longer chain is a loop or an attempt to wear us out.
_MAX_LINK_HOPS = 40
# PATH_MAX: a zip "symlink" larger than this is smuggled data, not a link target.
_MAX_LINK_TARGET = 4096
# "C:/x", "C:\x" and drive-relative "C:x" all mean a Windows drive, never a relative path.
_DRIVE = re.compile(r"^[A-Za-z]:")


class _UnsafeError(Exception):
    """One entry may not be unpacked; the message says why."""


@dataclass(frozen=True)
class Entry:
    """One archive member reduced to what the safety check needs.

    Attributes:
        name: The member's name exactly as stored, for messages.
        kind: What the member would become on disk.
        link: Symlink target, or for a hardlink the archive path it links to.
        problem: A reason found while reading the member, refused as is.
    """

    name: str
    kind: Kind
    link: str = ""
    problem: str = ""


class Source(Protocol):
    """An inspected artifact that is known to be safe to unpack."""

    def materialise(self, dest: str) -> None:
        """Write the artifact's content into ``dest``, an existing empty directory."""


def _reject_odd(path: str, what: str) -> None:
    if "\x00" in path:
        raise _UnsafeError(f"NUL byte in {what}")
    # A backslash is a separator on Windows and a plain character here; refusing it avoids
    # judging a name one way and having another tool unpack it the other way.
    if "\\" in path:
        raise _UnsafeError(f"backslash in {what}")
    if path.startswith("/") or _DRIVE.match(path):
        raise _UnsafeError(f"absolute {what}")


def _entry_parts(name: str) -> list[str]:
    _reject_odd(name, "path")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise _UnsafeError("'..' component leaves the release folder")
    return parts


def _link_parts(link: str) -> list[str]:
    if not link:
        raise _UnsafeError("empty link target")
    _reject_odd(link, "link target")
    return [part for part in link.split("/") if part not in ("", ".")]


def _resolve(parts: Sequence[str], symlinks: Mapping[str, str]) -> list[str]:
    """Resolve a path inside the release folder the way the kernel would after unpacking.

    A purely lexical check is not enough: with ``a -> .`` in the archive, ``a/b/../..`` looks
    like it stays inside but really climbs out. So each component is followed through the
    archive's own symlinks, and ``..`` pops the *physical* parent.

    Args:
        parts: Path components relative to the release folder; may contain ``..``.
        symlinks: Every symlink member, keyed by its normalised path, to its raw target.

    Returns:
        The resolved components.

    Raises:
        _UnsafeError: When the path climbs above the release folder, meets an absolute link
            target, or follows too many links.
    """
    pending = list(reversed(parts))
    resolved: list[str] = []
    hops = 0
    while pending:
        part = pending.pop()
        if part == "..":
            if not resolved:
                raise _UnsafeError("points outside the release folder")
            resolved.pop()
            continue
        target = symlinks.get("/".join([*resolved, part]))
        if target is None:
            resolved.append(part)
            continue
        hops += 1
        if hops > _MAX_LINK_HOPS:
            raise _UnsafeError("symlink loop or chain too long")
        # Relative to the link's own directory, which is exactly where `resolved` stands.
        pending.extend(reversed(_link_parts(target)))
    return resolved


def _own_parts(entry: Entry) -> list[str]:
    """Check what an entry says about itself and return its path components."""
    if entry.problem:
        raise _UnsafeError(entry.problem)
    if entry.kind == "special":
        raise _UnsafeError("device, fifo or other special file")
    parts = _entry_parts(entry.name)
    if not parts and entry.kind != "dir":
        raise _UnsafeError("empty path")
    return parts


def _check_placement(
    entry: Entry, parts: list[str], symlinks: Mapping[str, str], earlier_files: set[str]
) -> None:
    """Check an entry against the rest of the archive: its parents and where it links to."""
    for depth in range(1, len(parts)):
        prefix = "/".join(parts[:depth])
        if prefix in symlinks:
            raise _UnsafeError(f"placed inside symlink {prefix!r}")
    if entry.kind == "symlink":
        try:
            _resolve([*parts[:-1], *_link_parts(entry.link)], symlinks)
        except _UnsafeError as exc:
            raise _UnsafeError(f"symlink to {entry.link!r}: {exc}") from None
    elif entry.kind == "hardlink":
        try:
            resolved = "/".join(_resolve(_link_parts(entry.link), symlinks))
        except _UnsafeError as exc:
            raise _UnsafeError(f"hardlink to {entry.link!r}: {exc}") from None
        if resolved not in earlier_files:
            raise _UnsafeError(
                f"hardlink to {entry.link!r}, which is not an earlier regular file of the archive"
            )


def find_problems(entries: Sequence[Entry]) -> list[str]:
    """Check every entry of an archive and describe each one that may not be unpacked.

    Args:
        entries: The archive's members in archive order.

    Returns:
        One ``'name' (reason)`` string per offending entry, in archive order; empty when the
        archive is safe.
    """
    problems: dict[int, str] = {}
    placed: list[tuple[int, Entry, list[str]]] = []
    for index, entry in enumerate(entries):
        try:
            placed.append((index, entry, _own_parts(entry)))
        except _UnsafeError as exc:
            problems[index] = f"{entry.name!r} ({exc})"

    keys = {index: "/".join(parts) for index, _, parts in placed}
    symlinks = {keys[index]: entry.link for index, entry, _ in placed if entry.kind == "symlink"}
    # Two different entries under one name are unpacked differently by different tools, so
    # what was checked might not be what lands.
    names = Counter(keys.values())
    non_dirs = Counter(keys[index] for index, entry, _ in placed if entry.kind != "dir")
    earlier_files: set[str] = set()
    for index, entry, parts in placed:
        key = keys[index]
        try:
            if names[key] > 1 and non_dirs[key]:
                raise _UnsafeError("duplicate entry")
            _check_placement(entry, parts, symlinks, earlier_files)
        except _UnsafeError as exc:
            problems[index] = f"{entry.name!r} ({exc})"
        if entry.kind == "file":
            earlier_files.add(key)
    return [problems[index] for index in sorted(problems)]


def _refusal(artifact: str, problems: Sequence[str]) -> ValueError:
    count = len(problems)
    noun = "entry" if count == 1 else "entries"
    return ValueError(
        f"directory: refusing artifact {artifact!r}: {count} unsafe {noun}: " + "; ".join(problems)
    )


class _TarSource:
    """A gzip-compressed tar archive whose members all passed the check."""

    def __init__(self, artifact: str, tar: tarfile.TarFile) -> None:
        self._artifact = artifact
        self._tar = tar
        try:
            members = tar.getmembers()
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise ValueError(
                f"directory: artifact {artifact!r} is not a readable .tar.gz: {exc}"
            ) from exc
        problems = find_problems([_tar_entry(member) for member in members])
        if problems:
            raise _refusal(artifact, problems)

    def materialise(self, dest: str) -> None:
        """Unpack the archive into ``dest``.

        Args:
            dest: An existing empty directory.

        Raises:
            ValueError: When tarfile's own data filter refuses a member after all.
        """
        try:
            if hasattr(tarfile, "data_filter"):
                # Defence in depth: the check above already refused everything this filter
                # would, but two independent guards beat one.
                self._tar.extractall(dest, filter="data")
            else:  # pragma: no cover - Python 3.11.0-3.11.3 predate extraction filters
                self._tar.extractall(dest)  # noqa: S202 - every member was checked above
        except tarfile.FilterError as exc:
            raise _refusal(self._artifact, [str(exc)]) from exc


def _tar_entry(member: tarfile.TarInfo) -> Entry:
    kind: Kind
    if member.isdir():
        kind = "dir"
    elif member.issym():
        kind = "symlink"
    elif member.islnk():
        kind = "hardlink"
    elif member.isreg():
        kind = "file"
    else:
        kind = "special"
    return Entry(member.name, kind, member.linkname if kind in ("symlink", "hardlink") else "")


class _ZipSource:
    """A zip archive whose entries all passed the check."""

    def __init__(self, artifact: str, archive: zipfile.ZipFile) -> None:
        self._artifact = artifact
        self._zip = archive
        try:
            self._plan = [(info, _zip_entry(archive, info)) for info in archive.infolist()]
        except (zipfile.BadZipFile, NotImplementedError, zlib.error, EOFError) as exc:
            raise ValueError(
                f"directory: artifact {artifact!r} is not a readable .zip: {exc}"
            ) from exc
        problems = find_problems([entry for _, entry in self._plan])
        if problems:
            raise _refusal(artifact, problems)

    def materialise(self, dest: str) -> None:
        """Unpack the archive into ``dest``, recreating symlink entries as symlinks.

        Args:
            dest: An existing empty directory.

        Raises:
            ValueError: When an entry's data is corrupt or uses an unsupported compression.
        """
        links: list[tuple[str, str]] = []
        try:
            for info, entry in self._plan:
                path = os.path.join(dest, *_entry_parts(entry.name))
                if entry.kind == "dir":
                    os.makedirs(path, exist_ok=True)
                elif entry.kind == "symlink":
                    links.append((path, entry.link))
                else:
                    self._write_file(info, path)
        except (zipfile.BadZipFile, NotImplementedError, zlib.error, EOFError) as exc:
            raise ValueError(
                f"directory: artifact {self._artifact!r} is not a readable .zip: {exc}"
            ) from exc
        # Links go last so that no file can ever be written through one of them.
        for path, link in links:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            os.symlink(link, path)

    def _write_file(self, info: zipfile.ZipInfo, path: str) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        executable = (info.external_attr >> 16) & 0o111
        # O_EXCL|O_NOFOLLOW: never overwrite, never follow a link, whatever the archive says.
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        descriptor = os.open(path, flags, 0o755 if executable else 0o644)
        with os.fdopen(descriptor, "wb") as out, self._zip.open(info) as data:
            shutil.copyfileobj(data, out)


def _zip_symlink(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> Entry:
    if info.file_size > _MAX_LINK_TARGET:
        return Entry(info.filename, "symlink", problem="symlink target too long")
    try:
        link = archive.read(info).decode("utf-8")
    except UnicodeDecodeError:
        return Entry(info.filename, "symlink", problem="symlink target is not UTF-8")
    return Entry(info.filename, "symlink", link)


def _zip_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> Entry:
    kind_bits = stat.S_IFMT(info.external_attr >> 16)
    if info.flag_bits & 0x1:
        return Entry(info.filename, "file", problem="encrypted entry")
    if kind_bits == stat.S_IFLNK:
        return _zip_symlink(archive, info)
    if kind_bits == stat.S_IFDIR or info.is_dir():
        return Entry(info.filename, "dir")
    # Zips made outside Unix carry no file type at all; those are plain files.
    return Entry(info.filename, "file" if kind_bits in (0, stat.S_IFREG) else "special")


class _DirectorySource:
    """A directory tree whose symlinks all stay inside it."""

    def __init__(self, artifact: str) -> None:
        self._top = os.path.realpath(artifact)
        problems = _directory_problems(self._top)
        if problems:
            raise _refusal(artifact, problems)

    def materialise(self, dest: str) -> None:
        """Copy the tree into ``dest``, keeping symlinks as symlinks.

        Args:
            dest: An existing empty directory.
        """
        shutil.copytree(self._top, dest, symlinks=True, dirs_exist_ok=True)


def _within(path: str, top: str) -> bool:
    return os.path.commonpath([path, top]) == top


def _directory_problems(top: str) -> list[str]:
    problems: list[str] = []
    pending = [top]
    while pending:
        where = pending.pop()
        with os.scandir(where) as scan:
            items = sorted(scan, key=lambda item: item.name)
        for item in items:
            name = os.path.relpath(item.path, top)
            mode = item.stat(follow_symlinks=False).st_mode
            if stat.S_ISLNK(mode):
                link = os.readlink(item.path)
                # An absolute link would tie the published site to the build machine's paths.
                if os.path.isabs(link) or _DRIVE.match(link):
                    problems.append(f"{name!r} (symlink to {link!r}: absolute link target)")
                elif not _within(os.path.realpath(os.path.join(where, link)), top):
                    problems.append(
                        f"{name!r} (symlink to {link!r}: points outside the artifact directory)"
                    )
            elif stat.S_ISDIR(mode):
                pending.append(item.path)
            elif not stat.S_ISREG(mode):
                problems.append(f"{name!r} (device, fifo or other special file)")
    return sorted(problems)


def _open_tar(path: str, artifact: str) -> tarfile.TarFile:
    try:
        return tarfile.open(path, "r:gz")
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise ValueError(
            f"directory: artifact {artifact!r} is not a readable .tar.gz: {exc}"
        ) from exc


def _open_zip(path: str, artifact: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise ValueError(f"directory: artifact {artifact!r} is not a readable .zip: {exc}") from exc


@contextmanager
def open_artifact(artifact: str) -> Iterator[Source]:
    """Inspect an artifact and yield it ready to unpack.

    Nothing is written anywhere by this function; an unsafe artifact is refused before the
    caller gets a chance to create any folder.

    Args:
        artifact: Path of a directory, a ``.tar.gz``/``.tgz`` file or a ``.zip`` file.

    Yields:
        A source whose every entry passed the safety check.

    Raises:
        FileNotFoundError: When ``artifact`` does not exist.
        ValueError: When the artifact is of another kind, unreadable, or has unsafe entries.
    """
    path = os.path.abspath(artifact)
    if os.path.isdir(path):
        yield _DirectorySource(path)
        return
    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, "directory: artifact does not exist", artifact)
    lowered = path.lower()
    if os.path.isfile(path) and lowered.endswith((".tar.gz", ".tgz")):
        with _open_tar(path, artifact) as tar:
            yield _TarSource(artifact, tar)
    elif os.path.isfile(path) and lowered.endswith(".zip"):
        with _open_zip(path, artifact) as archive:
            yield _ZipSource(artifact, archive)
    else:
        raise ValueError(f"directory: artifact {artifact!r} is not {ACCEPTED_KINDS}")
