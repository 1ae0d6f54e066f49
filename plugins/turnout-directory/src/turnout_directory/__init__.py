r"""turnout releaser ``directory``: publish a site into a folder and switch ``current`` atomically.

The artifact (a directory, a ``.tar.gz``/``.tgz`` or a ``.zip``) is checked entry by entry,
unpacked into ``<root>/releases/<release-id>`` through a temporary folder, and the relative
symlink ``<root>/current`` is replaced to point at it. A journal file under
``<root>/.turnout/keys/`` records each finished release so that the same idempotency key
never publishes twice. Old release folders beyond ``keep`` are pruned.

The result of :func:`turnout_release` (and of :func:`turnout_probe` once done) is::

    {
        "release_id": "<20 hex digits>",      # sha256(target + "\0" + key)[:20]
        "path": "<root>/releases/<release-id>",
        "current": "<root>/current",
        "files": 12,                           # files and symlinks, not counting our marker
        "idempotency_key": "<key>",
        "reused": False,                       # True when the key had already been released
    }
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

from turnout_directory._config import parse_config
from turnout_directory._release import probe, release

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["hookimpl", "turnout_probe", "turnout_release", "turnout_validate_config"]

hookimpl = pluggy.HookimplMarker("turnout")


@hookimpl
def turnout_validate_config(config: Mapping[str, Any]) -> None:
    """Check the config before any release runs.

    Args:
        config: The resolved config: ``root`` (absolute path, required) and ``keep``
            (integer >= 1, default 5).

    Raises:
        ValueError: Naming the offending key when the config is not acceptable.
    """
    parse_config(config)


@hookimpl
def turnout_release(
    artifact: str, target: str, config: Mapping[str, Any], idempotency_key: str
) -> dict[str, Any]:
    """Publish ``artifact`` under the configured root and point ``current`` at it.

    Calling again with the same ``target`` and ``idempotency_key`` returns the stored result
    with ``reused=True`` and changes nothing, even if newer releases happened since.

    Args:
        artifact: Path of a directory, a ``.tar.gz``/``.tgz`` file or a ``.zip`` file.
        target: The target name.
        config: The resolved config.
        idempotency_key: The key identifying this release.

    Returns:
        The JSON-serialisable result described in the module docstring.

    Raises:
        FileNotFoundError: When the artifact is missing (permanent).
        ValueError: For a bad config, an artifact of another kind, or an artifact with entries
            that would land outside the release folder (permanent).
        TimeoutError: When another release on the same root holds the lock too long
            (transient).
    """
    return release(artifact, target, parse_config(config), idempotency_key)


@hookimpl
def turnout_probe(
    target: str, config: Mapping[str, Any], idempotency_key: str
) -> dict[str, Any] | None:
    """Tell whether the release with this key already happened, without writing anything.

    Args:
        target: The target name.
        config: The resolved config.
        idempotency_key: The key identifying the release.

    Returns:
        The stored result (with ``reused=True``) when the key is done, otherwise None.

    Raises:
        ValueError: For a bad config, or a journal that is damaged.
    """
    return probe(target, parse_config(config), idempotency_key)
