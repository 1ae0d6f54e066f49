"""One loaded releaser: a pluggy manager that holds exactly one plugin version.

Calls go through the hook specs in :mod:`turnout.hookspecs`, so an implementation may accept any
subset of a hook's arguments. This module imports only the standard library and pluggy.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Protocol

import pluggy

from turnout import hookspecs

MAX_RESULT_BYTES = 1 << 20
"""A result larger than this (as JSON) is malformed: results are records, not payloads."""


class MalformedResultError(Exception):
    """A releaser returned something other than a JSON-serialisable mapping; permanent."""


class Releaser(Protocol):
    """What the runtime needs from a loaded plugin version, wherever it runs."""

    def validate_config(self, config: Mapping[str, Any]) -> None: ...

    def release(
        self,
        *,
        artifact: str,
        target: str,
        config: Mapping[str, Any],
        context: Mapping[str, str],
        idempotency_key: str,
        attempt: int,
    ) -> dict[str, Any]: ...


class PluggyReleaser:
    """A releaser object (module or instance) registered alone in its own plugin manager."""

    def __init__(self, plugin: object, name: str) -> None:
        self.name = name
        self.manager = pluggy.PluginManager(hookspecs.PROJECT)
        self.manager.add_hookspecs(hookspecs)
        # Raises pluggy.PluginValidationError for an implementation whose arguments are not in
        # the spec; check_pending() catches hooks with a typo in their name.
        self.manager.register(plugin, name=name)
        self.manager.check_pending()
        if not self.manager.hook.turnout_release.get_hookimpls():
            raise pluggy.PluginValidationError(plugin, f"{name} does not implement turnout_release")

    @property
    def has_probe(self) -> bool:
        """Whether the plugin implements ``turnout_probe``."""
        return bool(self.manager.hook.turnout_probe.get_hookimpls())

    def validate_config(self, config: Mapping[str, Any]) -> None:
        """Run the plugin's ``turnout_validate_config``; raises ``ValueError`` on a bad config."""
        self.manager.hook.turnout_validate_config(config=config)

    def release(
        self,
        *,
        artifact: str,
        target: str,
        config: Mapping[str, Any],
        context: Mapping[str, str],
        idempotency_key: str,
        attempt: int,
    ) -> dict[str, Any]:
        """Call ``turnout_release`` once and check that the result is a JSON mapping."""
        result = self.manager.hook.turnout_release(
            artifact=artifact,
            target=target,
            config=config,
            context=context,
            idempotency_key=idempotency_key,
            attempt=attempt,
        )
        return check_result(result)


def check_result(result: object) -> dict[str, Any]:
    """Return ``result`` as a JSON-safe dict, or raise :class:`MalformedResultError`."""
    if not isinstance(result, Mapping):
        raise MalformedResultError(
            f"turnout_release must return a mapping, got {type(result).__name__}"
        )
    try:
        encoded = json.dumps(dict(result), allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise MalformedResultError(
            f"turnout_release returned a result that is not JSON: {exc}"
        ) from None
    if len(encoded) > MAX_RESULT_BYTES:
        raise MalformedResultError(
            f"turnout_release returned {len(encoded)} bytes of JSON, "
            f"over the limit of {MAX_RESULT_BYTES}"
        )
    decoded: dict[str, Any] = json.loads(encoded)
    return decoded
