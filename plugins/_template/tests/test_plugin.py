"""The packaging: the entry point turnout discovers, and hooks that match turnout's specs."""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

import pluggy

import turnout_template

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"

hookspec = pluggy.HookspecMarker("turnout")


class _Specs:
    """The hook signatures turnout calls (docs/writing-plugins.md, "The hooks")."""

    @hookspec(firstresult=True)
    def turnout_release(
        self,
        artifact: str,
        target: str,
        config: dict[str, Any],
        context: dict[str, str],
        idempotency_key: str,
        attempt: int,
    ) -> dict[str, Any]:
        raise NotImplementedError

    @hookspec
    def turnout_validate_config(self, config: dict[str, Any]) -> None:
        raise NotImplementedError

    @hookspec(firstresult=True)
    def turnout_probe(
        self, artifact: str, target: str, config: dict[str, Any], idempotency_key: str
    ) -> dict[str, Any] | None:
        raise NotImplementedError


def test_pyproject_declares_the_entry_point_and_depends_on_pluggy_only() -> None:
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    assert project["entry-points"]["turnout.releasers"] == {
        turnout_template.PLUGIN_ID: "turnout_template"
    }
    assert project["dependencies"] == ["pluggy>=1.5,<2"]


def test_installed_entry_point_loads_this_module() -> None:
    (entry_point,) = [
        ep
        for ep in metadata.entry_points(group="turnout.releasers")
        if ep.name == turnout_template.PLUGIN_ID
    ]
    assert entry_point.value == "turnout_template"
    assert entry_point.load() is turnout_template


def test_hooks_match_turnouts_specs() -> None:
    manager = pluggy.PluginManager("turnout")
    manager.add_hookspecs(_Specs)
    manager.register(turnout_template)  # refuses an argument the spec does not have
    names = {impl.function.__name__ for impl in manager.hook.turnout_release.get_hookimpls()}
    assert names == {"turnout_release"}
    assert manager.hook.turnout_validate_config.get_hookimpls()
