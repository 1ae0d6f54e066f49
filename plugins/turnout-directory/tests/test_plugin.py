from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pluggy

import turnout_directory

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"

hookspec = pluggy.HookspecMarker("turnout")


class _Spec:
    """The hook signatures turnout calls, as described to plugin authors."""

    @hookspec(firstresult=True)
    def turnout_release(  # type: ignore[empty-body]
        self,
        artifact: str,
        target: str,
        config: dict[str, Any],
        context: dict[str, str],
        idempotency_key: str,
        attempt: int,
    ) -> dict[str, Any]: ...

    @hookspec
    def turnout_validate_config(self, config: dict[str, Any]) -> None: ...

    @hookspec(firstresult=True)
    def turnout_probe(
        self, artifact: str, target: str, config: dict[str, Any], idempotency_key: str
    ) -> dict[str, Any] | None: ...


def test_pyproject_declares_releaser_entry_point() -> None:
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    assert project["name"] == "turnout-directory"
    assert project["version"] == "1.0.0"
    assert project["entry-points"]["turnout.releasers"] == {"directory": "turnout_directory"}


def test_pyproject_depends_on_pluggy_only() -> None:
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    assert project["dependencies"] == ["pluggy>=1.5,<2"]
    assert project["requires-python"] == ">=3.11"


def test_plugin_registers_and_answers_through_pluggy(tmp_path: Path) -> None:
    manager = pluggy.PluginManager("turnout")
    manager.add_hookspecs(_Spec)
    manager.register(turnout_directory)
    artifact = tmp_path / "build"
    artifact.mkdir()
    (artifact / "index.html").write_text("hello", encoding="utf-8")
    config = {"root": str(tmp_path / "site")}

    assert manager.hook.turnout_validate_config(config=config) == []
    arguments = {"artifact": str(artifact), "target": "prod", "config": config}
    assert manager.hook.turnout_probe(**arguments, idempotency_key="k1") is None
    result = manager.hook.turnout_release(
        **arguments, context={"actor": "ci"}, idempotency_key="k1", attempt=1
    )
    assert result["reused"] is False
    assert result["files"] == 1
    probed = manager.hook.turnout_probe(**arguments, idempotency_key="k1")
    assert probed == {**result, "reused": True}
