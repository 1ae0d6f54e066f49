"""turnout: send every release to the releaser version its operators chose.

The public API is what ``__all__`` lists. Names load on first use, so that ``import turnout``
(and ``turnout --help``) stays cheap: the database stack is imported only when needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "ENTRY_POINT_GROUP": "turnout.hookspecs",
    "PluginRef": "turnout.refs",
    "ReleaseRecord": "turnout.releases",
    "Status": "turnout.releases",
    "Turnout": "turnout.runtime",
    "release": "turnout.runtime",
    "TurnoutError": "turnout.errors",
    "UsageError": "turnout.errors",
    "InvalidPluginRefError": "turnout.errors",
    "InvalidKeyError": "turnout.errors",
    "ConfigurationError": "turnout.errors",
    "UnknownTargetError": "turnout.errors",
    "PluginNotInstalledError": "turnout.errors",
    "PluginLoadError": "turnout.errors",
    "ConfigRejectedError": "turnout.errors",
    "SecretNotFoundError": "turnout.errors",
    "DatabaseNotMigratedError": "turnout.errors",
    "RegistryUnavailableError": "turnout.errors",
    "KeyMismatchError": "turnout.errors",
    "ReleaseInProgressError": "turnout.errors",
    "ReleaseFailedError": "turnout.errors",
    "TransientReleaseError": "turnout.errors",
    "Interrupted": "turnout.errors",
    "LeaseLostError": "turnout.errors",
    "PluginInstallError": "turnout.errors",
    "ReleaseUnknownError": "turnout.errors",
    "StaleRevisionError": "turnout.errors",
}

__all__ = [
    "ENTRY_POINT_GROUP",
    "ConfigRejectedError",
    "ConfigurationError",
    "DatabaseNotMigratedError",
    "Interrupted",
    "InvalidKeyError",
    "InvalidPluginRefError",
    "KeyMismatchError",
    "LeaseLostError",
    "PluginInstallError",
    "PluginLoadError",
    "PluginNotInstalledError",
    "PluginRef",
    "RegistryUnavailableError",
    "ReleaseFailedError",
    "ReleaseInProgressError",
    "ReleaseRecord",
    "ReleaseUnknownError",
    "SecretNotFoundError",
    "StaleRevisionError",
    "Status",
    "TransientReleaseError",
    "Turnout",
    "TurnoutError",
    "UnknownTargetError",
    "UsageError",
    "__version__",
    "release",
]

if TYPE_CHECKING:
    from turnout.errors import (
        ConfigRejectedError,
        ConfigurationError,
        DatabaseNotMigratedError,
        Interrupted,
        InvalidKeyError,
        InvalidPluginRefError,
        KeyMismatchError,
        LeaseLostError,
        PluginInstallError,
        PluginLoadError,
        PluginNotInstalledError,
        RegistryUnavailableError,
        ReleaseFailedError,
        ReleaseInProgressError,
        ReleaseUnknownError,
        SecretNotFoundError,
        StaleRevisionError,
        TransientReleaseError,
        TurnoutError,
        UnknownTargetError,
        UsageError,
    )
    from turnout.hookspecs import ENTRY_POINT_GROUP
    from turnout.refs import PluginRef
    from turnout.releases import ReleaseRecord, Status
    from turnout.runtime import Turnout, release


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'turnout' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
