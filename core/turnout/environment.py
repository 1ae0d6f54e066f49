"""Releasers installed into turnout's own environment with plain ``pip install``.

Scanning every distribution is slow and grows with the environment, so it happens only on
administrative paths (``turnout plugin list``, ``turnout target set``, the first release of a
version this registry has not seen). A release finds its plugin by distribution name, checks the
installed version against the pin, and loads exactly the entry point the registry recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.utils import canonicalize_name
from packaging.version import Version

from turnout.errors import ConfigurationError, PluginLoadError, PluginNotInstalledError
from turnout.hookspecs import ENTRY_POINT_GROUP
from turnout.refs import PluginRef, normalize_plugin_id
from turnout.registry import ENVIRONMENT_SOURCE
from turnout.releaser import PluggyReleaser

SOURCE = ENVIRONMENT_SOURCE


@dataclass(frozen=True, slots=True)
class EnvironmentPlugin:
    """A ``turnout.releasers`` entry point found in turnout's environment."""

    plugin_id: str
    version: str
    distribution: str
    entry_point: str
    location: str

    @property
    def ref(self) -> PluginRef:
        return PluginRef(self.plugin_id, self.version)


class DuplicatePluginError(ConfigurationError):
    """Two distributions in one environment provide the same plugin id."""

    def __init__(self, plugin_id: str, distributions: list[str]) -> None:
        self.plugin_id = plugin_id
        self.distributions = distributions
        super().__init__(
            f"plugin id {plugin_id!r} is provided by several distributions "
            f"({', '.join(distributions)}); uninstall all but one"
        )


def scan() -> list[EnvironmentPlugin]:
    """Every releaser in the environment, first on ``sys.path`` first, sorted by id."""
    found: dict[str, EnvironmentPlugin] = {}
    seen: set[str] = set()
    for dist in metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"] or "")
        if not name or name in seen:
            continue  # a later copy of a distribution on sys.path is shadowed by the first
        seen.add(name)
        for ep in dist.entry_points.select(group=ENTRY_POINT_GROUP):
            plugin = EnvironmentPlugin(
                plugin_id=normalize_plugin_id(ep.name),
                version=str(Version(dist.version)),
                distribution=dist.metadata["Name"],
                entry_point=ep.value,
                location=str(Path(str(dist.locate_file(""))).resolve()),
            )
            if plugin.plugin_id in found:
                other = found[plugin.plugin_id]
                raise DuplicatePluginError(
                    plugin.plugin_id, [other.distribution, plugin.distribution]
                )
            found[plugin.plugin_id] = plugin
    return sorted(found.values(), key=lambda p: p.plugin_id)


def find(ref: PluginRef) -> EnvironmentPlugin:
    """The environment's provider of exactly ``ref``.

    Raises:
        PluginNotInstalledError: The id is missing, or installed at another version.
        DuplicatePluginError: Two distributions provide the id.
    """
    for plugin in scan():
        if plugin.plugin_id != ref.plugin_id:
            continue
        if plugin.version == ref.version:
            return plugin
        fix = (
            f"a pin names a version as its distribution spells it: write {plugin.ref}"
            if _same_version(plugin.version, ref.version)  # 1.0 for 1.0.0
            else f"run: pip install '{plugin.distribution}=={ref.version}', "
            f"or point the target at {plugin.ref}"
        )
        raise PluginNotInstalledError(
            str(ref),
            f"{ref} is not installed: the environment has {plugin.ref} "
            f"(distribution {plugin.distribution})",
            fix,
        )
    raise PluginNotInstalledError(
        str(ref),
        f"{ref} is not installed: no distribution in turnout's environment provides "
        f"plugin id {ref.plugin_id!r} (entry-point group {ENTRY_POINT_GROUP})",
        "install it into the store with: turnout plugin install DISTRIBUTION==VERSION "
        "(or beside turnout with pip), then check with: turnout plugin list",
    )


def _same_version(a: str, b: str) -> bool:
    """Whether two spellings name one version under PEP 440 (``1.0`` and ``1.0.0``)."""
    from packaging.version import InvalidVersion, Version

    try:
        return Version(a) == Version(b)
    except InvalidVersion:
        return False


def load(ref: PluginRef, distribution: str, entry_point: str) -> PluggyReleaser:
    """Load the entry point ``entry_point`` of ``distribution`` after checking its version.

    Raises:
        PluginNotInstalledError: The distribution is gone or at another version than ``ref``.
        PluginLoadError: The distribution no longer declares that entry point, or importing it
            failed; either is a configuration problem, never retried.
    """
    try:
        dist = metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        raise PluginNotInstalledError(
            str(ref),
            f"{ref} is not installed: distribution {distribution} is missing",
            f"run: pip install '{distribution}=={ref.version}'",
        ) from None
    installed = str(Version(dist.version))
    if installed != ref.version:
        raise PluginNotInstalledError(
            str(ref),
            f"{ref} is not installed: distribution {distribution} is at {installed}",
            f"run: pip install '{distribution}=={ref.version}', "
            f"or point the target at {ref.plugin_id}@{installed}",
        )
    declared = {
        normalize_plugin_id(ep.name): ep for ep in dist.entry_points.select(group=ENTRY_POINT_GROUP)
    }
    ep = declared.get(ref.plugin_id)
    if ep is None or ep.value != entry_point:
        raise PluginLoadError(
            str(ref),
            distribution,
            f"it no longer declares {ref.plugin_id} = {entry_point!r} in {ENTRY_POINT_GROUP}",
        )
    try:
        plugin = ep.load()
        return PluggyReleaser(plugin, str(ref))
    except Exception as exc:  # any import-time failure is the plugin's
        raise PluginLoadError(str(ref), distribution, f"{type(exc).__name__}: {exc}") from exc
