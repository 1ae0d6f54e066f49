"""The public Python API: what `turnout.__all__` lists, and nothing heavy on import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import turnout
from turnout import errors

PUBLIC = [
    "ConfigRejectedError",
    "ConfigurationError",
    "DatabaseNotMigratedError",
    "ENTRY_POINT_GROUP",
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
    "release",
    "__version__",
]


def test_api_all_is_exactly_the_public_names() -> None:
    assert sorted(turnout.__all__) == sorted(PUBLIC)
    for name in turnout.__all__:
        assert getattr(turnout, name) is not None


def test_api_unknown_attribute_raises() -> None:
    with pytest.raises(AttributeError):
        _ = turnout.no_such_thing  # type: ignore[attr-defined]


def test_api_import_and_cli_module_stay_light() -> None:
    code = (
        "import sys, turnout, turnout.cli; "
        "heavy = ('sqlalchemy', 'sqlmodel', 'alembic', 'rich', 'tenacity'); "
        "print(','.join(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_api_a_registry_command_loads_none_of_the_release_machinery(db_path: Path) -> None:
    # `turnout target list` needs the registry: not OpenTelemetry, tenacity, pluggy, the
    # worker code or packaging's requirement parser (the CLI's cold start, PERFORMANCE P7).
    code = (
        "import sys\n"
        "from turnout.cli import main\n"
        f"sys.argv = ['turnout', '--db', {str(db_path)!r}, 'target', 'list', '--json']\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
        "heavy = ('opentelemetry', 'tenacity', 'pluggy', 'platformdirs', 'turnout.worker', "
        "'turnout.telemetry', 'packaging.requirements', 'packaging.utils')\n"
        "print('loaded:', ','.join(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines()[-1] == "loaded: "


def _subclasses(cls: type) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found


def test_api_every_error_has_an_exit_code_and_a_builtin_base() -> None:
    codes = {cls.__name__: cls.exit_code for cls in _subclasses(errors.TurnoutError)}
    assert codes["UsageError"] == 2
    assert codes["UnknownTargetError"] == 78
    assert codes["PluginNotInstalledError"] == 78
    assert codes["DatabaseNotMigratedError"] == 78
    assert codes["KeyMismatchError"] == 65
    assert codes["ReleaseInProgressError"] == 75
    assert codes["TransientReleaseError"] == 75
    assert codes["ReleaseFailedError"] == 1
    assert set(codes.values()) <= {1, 2, 65, 75, 78}
    assert issubclass(errors.UnknownTargetError, LookupError)
    assert issubclass(errors.UsageError, ValueError)
    assert issubclass(errors.RegistryUnavailableError, ConnectionError)


def test_api_error_tree_is_drawn_in_the_errors_docstring() -> None:
    doc = errors.__doc__ or ""
    for cls in [errors.TurnoutError, *_subclasses(errors.TurnoutError)]:
        if cls.__module__ == "turnout.errors":
            assert cls.__name__ in doc, f"{cls.__name__} is missing from the tree in errors.py"
