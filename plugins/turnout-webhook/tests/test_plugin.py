from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

import pluggy
import respx

import turnout_webhook

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
    assert project["name"] == "turnout-webhook"
    assert project["version"] == "1.1.0"
    assert project["entry-points"]["turnout.releasers"] == {"webhook": "turnout_webhook"}


def test_pyproject_depends_on_pluggy_and_httpx_only() -> None:
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    assert project["dependencies"] == ["httpx>=0.27,<1", "pluggy>=1.5,<2"]
    assert project["requires-python"] == ">=3.11"
    assert project["optional-dependencies"] == {"test": ["pytest>=8", "respx>=0.21"]}


def test_installed_entry_point_loads_this_module() -> None:
    (entry_point,) = [
        ep
        for ep in metadata.entry_points(group="turnout.releasers")
        if ep.dist is not None and ep.dist.name == "turnout-webhook"
    ]
    assert entry_point.name == "webhook"
    assert entry_point.value == "turnout_webhook"
    assert entry_point.load() is turnout_webhook
    assert entry_point.dist is not None
    assert entry_point.dist.version == "1.1.0"


def test_plugin_registers_and_answers_through_pluggy(
    router: respx.MockRouter, config: dict[str, Any], stored_config: dict[str, Any]
) -> None:
    manager = pluggy.PluginManager("turnout")
    manager.add_hookspecs(_Spec)
    manager.register(turnout_webhook)
    manager.check_pending()
    router.get(config["probe_url"]).respond(404)
    router.post(config["url"]).respond(202)

    assert manager.hook.turnout_validate_config(config=stored_config) == []
    arguments = {"artifact": "site.tgz", "target": "prod", "config": config}
    assert manager.hook.turnout_probe(**arguments, idempotency_key="k1") is None
    result = manager.hook.turnout_release(
        **arguments, context={"actor": "ci"}, idempotency_key="k1", attempt=1
    )
    assert result["status_code"] == 202
    assert result["idempotency_key"] == "k1"


def test_errors_are_named_by_their_public_module() -> None:
    # turnout records and groups errors by qualified type name; a private module would leak.
    for name in ("WebhookError", "WebhookStatusError", "ProbeUnavailableError"):
        error = getattr(turnout_webhook, name)
        assert f"{error.__module__}.{error.__qualname__}" == f"turnout_webhook.{name}"
    assert sorted(turnout_webhook.__all__) == [
        "ProbeUnavailableError",
        "WebhookConnectionError",
        "WebhookError",
        "WebhookStatusError",
        "WebhookTimeoutError",
        "hookimpl",
        "turnout_probe",
        "turnout_release",
        "turnout_validate_config",
    ]
