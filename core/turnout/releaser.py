"""One loaded releaser: a pluggy manager that holds exactly one plugin version.

Calls go through the hook specs in :mod:`turnout.hookspecs`, so an implementation may accept any
subset of a hook's arguments. This module imports only the standard library and pluggy.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any, Protocol

import pluggy

from turnout import _capture, hookspecs
from turnout._serve import MalformedResultError, check_result

__all__ = ["MalformedResultError", "PluggyReleaser", "Releaser", "check_result"]


class Releaser(Protocol):
    """What the runtime needs from a loaded plugin version, inline or in a worker process.

    ``timeout`` bounds one call in seconds where the releaser can enforce it (a worker
    process can; an inline plugin cannot). ``output`` is what the plugin printed during the
    last call, when it was captured.
    """

    @property
    def output(self) -> str: ...

    def validate_config(self, config: Mapping[str, Any], *, timeout: float) -> None: ...

    def probe(
        self,
        *,
        artifact: str,
        target: str,
        config: Mapping[str, Any],
        idempotency_key: str,
        timeout: float,
    ) -> tuple[bool, dict[str, Any] | None]:
        """``(implemented, result)``: whether the plugin has a probe, and what it answered."""
        ...

    def release(
        self,
        *,
        artifact: str,
        target: str,
        config: Mapping[str, Any],
        context: Mapping[str, str],
        idempotency_key: str,
        attempt: int,
        timeout: float,
    ) -> dict[str, Any]: ...


class PluggyReleaser:
    """A releaser object (module or instance) registered alone in its own plugin manager.

    What the plugin writes to ``sys.stdout``/``sys.stderr`` during a call is captured for the
    calling thread (:mod:`turnout._capture`) and is that thread's :attr:`output`.
    """

    def __init__(self, plugin: object, name: str) -> None:
        self.name = name
        self._last = threading.local()
        self.manager = pluggy.PluginManager(hookspecs.PROJECT)
        self.manager.add_hookspecs(hookspecs)
        # Raises pluggy.PluginValidationError for an implementation whose arguments are not in
        # the spec; check_pending() catches hooks with a typo in their name.
        self.manager.register(plugin, name=name)
        self.manager.check_pending()
        if not self.manager.hook.turnout_release.get_hookimpls():
            raise pluggy.PluginValidationError(plugin, f"{name} does not implement turnout_release")

    @property
    def output(self) -> str:
        """What the plugin printed during this thread's last call."""
        output: str = getattr(self._last, "output", "")
        return output

    def _call(self, hook: Any, **kwargs: Any) -> Any:
        with _capture.captured() as printed:
            try:
                return hook(**kwargs)
            finally:
                self._last.output = _capture.text(printed)

    @property
    def has_probe(self) -> bool:
        """Whether the plugin implements ``turnout_probe``."""
        return bool(self.manager.hook.turnout_probe.get_hookimpls())

    def validate_config(self, config: Mapping[str, Any], *, timeout: float = 0) -> None:
        """Run the plugin's ``turnout_validate_config``; raises ``ValueError`` on a bad config."""
        self._call(self.manager.hook.turnout_validate_config, config=config)

    def probe(
        self,
        *,
        artifact: str,
        target: str,
        config: Mapping[str, Any],
        idempotency_key: str,
        timeout: float = 0,
    ) -> tuple[bool, dict[str, Any] | None]:
        """Ask ``turnout_probe``, if implemented, whether the key's release happened."""
        if not self.has_probe:
            return False, None
        answer = self._call(
            self.manager.hook.turnout_probe,
            artifact=artifact,
            target=target,
            config=config,
            idempotency_key=idempotency_key,
        )
        return True, None if answer is None else check_result(answer)

    def release(
        self,
        *,
        artifact: str,
        target: str,
        config: Mapping[str, Any],
        context: Mapping[str, str],
        idempotency_key: str,
        attempt: int,
        timeout: float = 0,
    ) -> dict[str, Any]:
        """Call ``turnout_release`` once and check the result; ``timeout`` is not enforced."""
        result = self._call(
            self.manager.hook.turnout_release,
            artifact=artifact,
            target=target,
            config=config,
            context=context,
            idempotency_key=idempotency_key,
            attempt=attempt,
        )
        return check_result(result)
