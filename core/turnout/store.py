"""The plugin store: plugin versions installed side by side, one environment each.

Layout under the store's home (``TURNOUT_HOME``, default the platform's user data folder)::

    envs/<digest>/        one environment (a ``--target`` install), never modified once moved here
    tmp/                  environments being built; never used, cleaned when stale
    workers/              private working folders of running workers, and in workers/pycache/
                          their bytecode (environments are never written after the move)

An environment is built in ``tmp/`` by uv (pip when uv is missing), its ``turnout.releasers``
entry points are read there with ``importlib.metadata.distributions(path=...)``, and it is then
renamed into ``envs/<digest>`` in one atomic step. The digest is computed from the installed
files, so the same content always lands in the same folder: installing it twice, even from two
processes at once, ends with one good environment.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path

from turnout.errors import PluginInstallError
from turnout.refs import PluginRef, normalize_plugin_id

SOURCE = "store"
HOME_ENV = "TURNOUT_HOME"
STALE_BUILD_SECONDS = 3600
# Files an installer writes differently per machine or per tool; they are not the plugin's code.
_VOLATILE = {
    "RECORD",
    "INSTALLER",
    "REQUESTED",
    "direct_url.json",
    "uv_cache.json",
    "uv_build.json",
}
_VOLATILE_TOP = {"bin", ".lock"}  # scripts name this machine's interpreter; uv's lock file


def default_home() -> Path:
    """``TURNOUT_HOME``, else the platform's user data folder for turnout."""
    configured = os.environ.get(HOME_ENV)
    if configured:
        return Path(configured).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("turnout", appauthor=False))


@dataclass(frozen=True, slots=True)
class StorePlugin:
    """A releaser entry point found in a built environment."""

    ref: PluginRef
    distribution: str
    entry_point: str


@dataclass(slots=True)
class Installed:
    """The outcome of one install: the environment's digest and the releasers in it."""

    digest: str
    path: Path
    plugins: list[StorePlugin]
    hashes: dict[str, str]
    requirement: str
    created: bool = field(default=True)


ARCHIVES = (".whl", ".tar.gz", ".zip")
"""Endings of a spec that names a local distribution file."""


@dataclass(frozen=True, slots=True)
class InstallRequest:
    """What to install and from where.

    ``require_hashes`` turns on hash-checking, binary-only mode for ``requirements`` (a lock
    file): every requirement pinned and hashed, wheels only.
    """

    spec: str | None = None
    find_links: Sequence[str] = ()
    index_url: str | None = None
    no_index: bool = False
    requirements: Path | None = None
    require_hashes: bool = False

    def describe(self) -> str:
        parts = [self.spec] if self.spec else []
        if self.requirements is not None:
            parts.append(f"-r {self.requirements}")
        return " ".join(parts)

    def absolute(self) -> InstallRequest:
        """This request with its local paths made absolute against the current folder (a
        spec that is a path, the lock file, ``find_links`` folders), so that what is recorded
        installs the same from any folder (``turnout plugin sync``)."""

        def path(value: str) -> str:
            looks_like_path = value.startswith(".") or os.sep in value or value.endswith(ARCHIVES)
            local = "://" not in value and looks_like_path and os.path.exists(value)
            return os.path.abspath(value) if local else value

        return replace(
            self,
            spec=path(self.spec) if self.spec else self.spec,
            find_links=[path(link) for link in self.find_links],
            requirements=self.requirements.absolute() if self.requirements else None,
        )


class Store:
    """One store folder."""

    def __init__(self, home: str | os.PathLike[str] | None = None) -> None:
        self._home = Path(home) if home is not None else None

    @functools.cached_property
    def home(self) -> Path:
        """The store folder (the default one is looked up on first use: a command that never
        touches the store does not import platformdirs)."""
        return self._home if self._home is not None else default_home()

    @property
    def envs(self) -> Path:
        return self.home / "envs"

    @property
    def tmp(self) -> Path:
        return self.home / "tmp"

    @property
    def workers(self) -> Path:
        return self.home / "workers"

    def path(self, digest: str) -> Path:
        """Where the environment with this digest lives (it may be missing on this machine)."""
        return self.envs / digest

    def has(self, digest: str) -> bool:
        return (self.envs / digest).is_dir()

    # Install ----------------------------------------------------------------------------

    def install(
        self, request: InstallRequest, *, meanwhile: Callable[[], object] | None = None
    ) -> Installed:
        """Build an environment for ``request`` and move it into the store.

        ``meanwhile`` runs while the installer does (its error stops the installer and is
        raised, and nothing is installed).

        Raises:
            PluginInstallError: The installer failed (a missing or wrong hash, an unpinned
                dependency in hash mode, no such version...), or the result holds no releaser
                or two providers of one plugin id. Nothing is left in ``envs/``.
        """
        for folder in (self.envs, self.tmp, self.workers):
            folder.mkdir(parents=True, exist_ok=True)
        self._clean_stale_builds()
        build = Path(tempfile.mkdtemp(prefix="build-", dir=self.tmp))
        try:
            self._run_installer(request, build, meanwhile)
            plugins = read_plugins(build)
            hashes = tree_hashes(build)
            digest = digest_of(hashes)
            final = self.envs / digest
            created = _move_into_place(build, final)
        finally:
            shutil.rmtree(build, ignore_errors=True)
        return Installed(digest, final, plugins, hashes, request.describe(), created)

    def _run_installer(
        self, request: InstallRequest, build: Path, meanwhile: Callable[[], object] | None
    ) -> None:
        command = installer_command(request, build)
        with subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        ) as installer:
            try:
                if meanwhile is not None:
                    meanwhile()
                stdout, stderr = installer.communicate()
            except BaseException:
                installer.kill()
                raise
        if installer.returncode != 0:
            detail = (stderr or stdout).strip()
            raise PluginInstallError(
                f"installing {request.describe()} failed; nothing was installed:\n{detail[-4000:]}"
            )

    def _clean_stale_builds(self) -> None:
        # A build killed midway stays in tmp/, where nothing ever loads it; sweep old ones.
        cutoff = time.time() - STALE_BUILD_SECONDS
        for entry in self.tmp.iterdir():
            try:
                if entry.stat().st_mtime < cutoff:
                    shutil.rmtree(entry, ignore_errors=True)
            except FileNotFoundError:
                continue

    # Maintenance ------------------------------------------------------------------------

    def remove(self, digest: str) -> None:
        """Remove an environment: renamed out of ``envs/`` first, so it vanishes at once."""
        source = self.envs / digest
        if not source.exists():
            return
        self.tmp.mkdir(parents=True, exist_ok=True)
        doomed = Path(tempfile.mkdtemp(prefix="remove-", dir=self.tmp))
        source.rename(doomed / digest)
        shutil.rmtree(doomed, ignore_errors=True)

    def verify(self, digest: str, expected: dict[str, str]) -> list[str]:
        """Compare an environment's files with the hashes recorded at install; list problems."""
        path = self.envs / digest
        if not path.is_dir():
            return [f"environment {digest} is missing from {self.envs}"]
        actual = tree_hashes(path)
        problems = [
            f"changed: {name}"
            for name in sorted(expected)
            if name in actual and actual[name] != expected[name]
        ]
        problems += [f"missing: {name}" for name in sorted(set(expected) - set(actual))]
        problems += [f"unexpected: {name}" for name in sorted(set(actual) - set(expected))]
        return problems


def find_uv() -> str | None:
    """The uv executable: on PATH, or the one the ``uv`` package ships."""
    found = shutil.which("uv")
    if found:
        return found
    try:
        from uv import find_uv_bin
    except ImportError:
        return None
    try:
        return str(find_uv_bin())
    except FileNotFoundError:
        return None


def installer_command(request: InstallRequest, build: Path) -> list[str]:
    """The uv (or pip) command that installs ``request`` into ``build``."""
    uv = find_uv()
    if uv:
        command = [
            uv, "pip", "install", "--quiet", "--target", str(build), "--python", sys.executable,
            "--link-mode", "copy", "--no-config",
        ]  # fmt: skip
        binary_only = ["--no-build"]
    else:
        command = [
            sys.executable, "-m", "pip", "install", "--quiet", "--target", str(build),
            "--no-compile", "--disable-pip-version-check", "--no-input",
        ]  # fmt: skip
        binary_only = ["--only-binary", ":all:"]
    for link in request.find_links:
        command += ["--find-links", str(link)]
    if request.index_url:
        command += ["--index-url", request.index_url]
    if request.no_index:
        command.append("--no-index")
    if request.require_hashes:
        # Every requirement pinned and hashed, wheels only: nothing from a package runs before
        # its hash was checked, and a build step (which would run code) is refused.
        command += ["--require-hashes", *binary_only]
    if request.requirements is not None:
        command += ["-r", str(request.requirements)]
    if request.spec:
        command.append(request.spec)
    return command


def read_plugins(site: Path) -> list[StorePlugin]:
    """The releasers an environment provides, read from its metadata only (nothing imported).

    Raises:
        PluginInstallError: None, or two distributions provide one plugin id.
    """
    from packaging.utils import canonicalize_name
    from packaging.version import Version

    from turnout.hookspecs import ENTRY_POINT_GROUP

    found: dict[str, StorePlugin] = {}
    for dist in metadata.distributions(path=[str(site)]):
        name = dist.metadata["Name"]
        for ep in dist.entry_points.select(group=ENTRY_POINT_GROUP):
            plugin = StorePlugin(
                ref=PluginRef(normalize_plugin_id(ep.name), str(Version(dist.version))),
                distribution=name,
                entry_point=ep.value,
            )
            other = found.get(plugin.ref.plugin_id)
            if other is not None and canonicalize_name(other.distribution) != canonicalize_name(
                name
            ):
                raise PluginInstallError(
                    f"plugin id {plugin.ref.plugin_id!r} is provided by both "
                    f"{other.distribution} and {name}; nothing was installed"
                )
            found[plugin.ref.plugin_id] = plugin
    if not found:
        raise PluginInstallError(
            f"nothing installed declares an entry point in {ENTRY_POINT_GROUP!r}; "
            "nothing was installed"
        )
    return sorted(found.values(), key=lambda p: p.ref)


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file of an environment that is the plugin's content, by relative path.

    Left out: scripts in ``bin/`` (their first line names this machine's interpreter), bytecode
    caches (workers never read them: their bytecode lives under ``workers/pycache/``), and
    the installer's own bookkeeping (``*.dist-info/RECORD`` and friends, uv's ``.lock``). A
    symbolic link counts as its target's path; a link to a folder is not followed.
    """
    hashes: dict[str, str] = {}
    _hash_folder(str(root), "", hashes, top=True, dist_info=False)
    return hashes


def _hash_folder(
    folder: str, prefix: str, hashes: dict[str, str], *, top: bool, dist_info: bool
) -> None:
    with os.scandir(folder) as scan:
        entries = sorted(scan, key=lambda entry: entry.name)
    for entry in entries:
        name = entry.name
        if entry.is_dir():
            if (
                not entry.is_symlink()
                and name != "__pycache__"
                and not (top and name in _VOLATILE_TOP)
            ):
                _hash_folder(
                    entry.path,
                    f"{prefix}{name}/",
                    hashes,
                    top=False,
                    dist_info=name.endswith(".dist-info"),
                )
        elif (dist_info and name in _VOLATILE) or (top and name in _VOLATILE_TOP):
            continue
        elif entry.is_symlink():
            hashes[prefix + name] = "link:" + os.readlink(entry.path)
        else:
            with open(entry.path, "rb") as handle:
                hashes[prefix + name] = hashlib.file_digest(handle, "sha256").hexdigest()


def digest_of(hashes: dict[str, str]) -> str:
    """The content address of an environment."""
    canonical = json.dumps(hashes, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canonical).hexdigest()[:32]


def _move_into_place(build: Path, final: Path) -> bool:
    """Rename ``build`` to ``final`` atomically; False when ``final`` already existed."""
    if final.exists():
        return False
    try:
        build.rename(final)
    except OSError:
        if final.is_dir():
            return False  # another process moved the same content in first
        raise
    return True
