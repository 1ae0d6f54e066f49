"""Parse and check the releaser's configuration."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

#: Every key the releaser understands; anything else is refused so typos do not pass silently.
KNOWN_KEYS = ("keep", "root")

#: How many release folders stay on disk when ``keep`` is not set.
DEFAULT_KEEP = 5


@dataclass(frozen=True)
class Settings:
    """Checked configuration.

    Attributes:
        root: Normalised absolute path of the directory releases are published under.
        keep: How many release folders to keep (the one ``current`` points to is always kept).
    """

    root: str
    keep: int


def parse_config(config: object) -> Settings:
    """Check a resolved config mapping and return it as :class:`Settings`.

    Messages name the offending key and, for ``root`` and ``keep``, the value: neither is a
    secret. Values of unknown keys are never echoed because they might be.

    Args:
        config: The resolved config as turnout passes it.

    Returns:
        The checked settings.

    Raises:
        ValueError: When a key is unknown, ``root`` is missing or not an absolute path, or
            ``keep`` is not an integer of at least 1.
    """
    if not isinstance(config, Mapping):
        raise ValueError(f"directory: config must be a mapping, got {type(config).__name__}")
    unknown = sorted(str(key) for key in config if key not in KNOWN_KEYS)
    if unknown:
        names = ", ".join(repr(name) for name in unknown)
        known = ", ".join(repr(name) for name in KNOWN_KEYS)
        raise ValueError(f"directory: unknown config key(s) {names}; known keys: {known}")

    if "root" not in config:
        raise ValueError(
            "directory: config 'root' is required "
            "(absolute path of the directory releases are published under)"
        )
    root = config["root"]
    if not isinstance(root, str):
        raise ValueError(
            f"directory: config 'root' must be a string path, got {type(root).__name__}"
        )
    if not os.path.isabs(root):
        raise ValueError(f"directory: config 'root' must be an absolute path, got {root!r}")

    keep = config.get("keep", DEFAULT_KEEP)
    # bool is an int subclass; "keep: true" is a mistake, not 1.
    if isinstance(keep, bool) or not isinstance(keep, int):
        raise ValueError(
            f"directory: config 'keep' must be an integer >= 1, got {type(keep).__name__}"
        )
    if keep < 1:
        raise ValueError(f"directory: config 'keep' must be an integer >= 1, got {keep}")

    return Settings(root=os.path.normpath(root), keep=keep)
