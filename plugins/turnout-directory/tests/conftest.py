"""Fixtures that build real artifacts on disk.

Helpers are handed out as fixtures because, with ``--import-mode=importlib``, test modules
cannot import each other or this file.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

# (name, kind, value): value is the content of a "file", the target of a "symlink" or
# "hardlink", and ignored for "dir", "fifo" and "chr".
Member = tuple[str, str, str]
BuildArchive = Callable[[str, Sequence[Member]], Path]
Snapshot = Callable[[Path], dict[str, str]]

_TAR_TYPES = {
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "fifo": tarfile.FIFOTYPE,
    "chr": tarfile.CHRTYPE,
}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """The releaser's root; not created, so tests can see whether anything was written."""
    return tmp_path / "site"


@pytest.fixture
def config(root: Path) -> dict[str, Any]:
    return {"root": str(root), "keep": 5}


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A place next to the root that no release may ever write to."""
    return tmp_path / "outside"


@pytest.fixture
def make_tree(tmp_path: Path) -> Callable[[str, dict[str, str]], Path]:
    """Build a directory artifact from ``{relative path: content}``."""

    def build(name: str, files: dict[str, str]) -> Path:
        top = tmp_path / "artifacts" / name
        for relative, content in files.items():
            path = top / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content, encoding="utf-8")
        top.mkdir(parents=True, exist_ok=True)
        return top

    return build


@pytest.fixture
def make_tar(tmp_path: Path) -> BuildArchive:
    """Build a ``.tar.gz`` artifact member by member, names exactly as given."""

    def build(name: str, members: Sequence[Member]) -> Path:
        path = tmp_path / "artifacts" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(path, "w:gz") as tar:
            for member_name, kind, value in members:
                info = tarfile.TarInfo(member_name)
                info.mtime = 1_700_000_000
                if kind == "file":
                    data = value.encode()
                    info.size = len(data)
                    info.mode = 0o644
                    tar.addfile(info, io.BytesIO(data))
                    continue
                info.type = _TAR_TYPES[kind]
                info.mode = 0o755 if kind == "dir" else 0o777
                if kind in ("symlink", "hardlink"):
                    info.linkname = value
                tar.addfile(info)
        return path

    return build


@pytest.fixture
def make_zip(tmp_path: Path) -> BuildArchive:
    """Build a ``.zip`` artifact; symlinks are Unix entries whose content is the target."""

    def build(name: str, members: Sequence[Member]) -> Path:
        path = tmp_path / "artifacts" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for member_name, kind, value in members:
                info = zipfile.ZipInfo(member_name, date_time=(2024, 1, 1, 0, 0, 0))
                info.create_system = 3
                if kind == "dir":
                    info.external_attr = (stat.S_IFDIR | 0o755) << 16
                    archive.writestr(info, b"")
                elif kind == "symlink":
                    info.external_attr = (stat.S_IFLNK | 0o777) << 16
                    archive.writestr(info, value)
                elif kind == "fifo":
                    info.external_attr = (stat.S_IFIFO | 0o644) << 16
                    archive.writestr(info, b"")
                elif kind == "exec":
                    info.external_attr = (stat.S_IFREG | 0o755) << 16
                    archive.writestr(info, value)
                else:
                    info.external_attr = (stat.S_IFREG | 0o644) << 16
                    archive.writestr(info, value)
        return path

    return build


@pytest.fixture
def snapshot() -> Snapshot:
    """Map every path under a folder to its kind and content or link target."""

    def take(top: Path) -> dict[str, str]:
        seen: dict[str, str] = {}
        if not os.path.lexists(top):
            return seen
        for here, dirs, files in os.walk(top):
            for name in dirs + files:
                path = Path(here, name)
                key = str(path.relative_to(top))
                if path.is_symlink():
                    seen[key] = "link:" + os.readlink(path)
                elif path.is_dir():
                    seen[key] = "dir"
                else:
                    seen[key] = "file:" + path.read_bytes().hex()
        return seen

    return take
