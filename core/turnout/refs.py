"""Plugin refs: ``id@version``, the only way a registry row names code.

Only exact pins are accepted. Ids are normalised the way packaging normalises distribution
names (``My_Plugin`` → ``my-plugin``) and versions the way PEP 440 does (``2.0`` stays ``2.0``,
``2.0.0-RC1`` → ``2.0.0rc1``), so two spellings of one pin compare equal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from packaging.version import InvalidVersion, Version

from turnout.errors import InvalidPluginRefError

_ID = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$")
_SEPARATORS = re.compile(r"[-_.]+")


def normalize_plugin_id(plugin_id: str) -> str:
    """Return the canonical spelling of a plugin id (an entry-point name): PEP 503's name
    normalisation, as ``packaging.utils.canonicalize_name`` does it (a test keeps them equal;
    importing packaging.utils would cost every command ~10 ms)."""
    return _SEPARATORS.sub("-", plugin_id).lower()


@dataclass(frozen=True, slots=True, order=True)
class PluginRef:
    """An exact plugin pin: plugin id and PEP 440 version, both normalised."""

    plugin_id: str
    version: str

    @classmethod
    def parse(cls, text: str) -> PluginRef:
        """Parse ``id@version``; refuse ranges, wildcards, empty parts and anything else.

        Raises:
            InvalidPluginRefError: ``text`` is not an exact pin.
        """
        plugin_id, at, version = text.strip().partition("@")
        if not at:
            raise InvalidPluginRefError(text, "missing '@version'")
        if not plugin_id:
            raise InvalidPluginRefError(text, "empty plugin id")
        if not version:
            raise InvalidPluginRefError(text, "empty version")
        if not _ID.match(plugin_id):
            raise InvalidPluginRefError(text, f"{plugin_id!r} is not a valid plugin id")
        if any(c in version for c in "<>=!~*,@ "):
            raise InvalidPluginRefError(text, "version ranges and wildcards are not allowed")
        try:
            parsed = Version(version)
        except InvalidVersion:
            raise InvalidPluginRefError(text, f"{version!r} is not a PEP 440 version") from None
        return cls(normalize_plugin_id(plugin_id), str(parsed))

    def __str__(self) -> str:
        return f"{self.plugin_id}@{self.version}"
