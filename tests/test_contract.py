"""The releaser contract is public API: group, marker, hook names and arguments, error rule."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pluggy
import pytest

import turnout
from turnout import hookspecs, retries
from turnout.releaser import PluggyReleaser

ROOT = Path(__file__).parent.parent
SPECS = {
    "turnout_release": ["artifact", "target", "config", "context", "idempotency_key", "attempt"],
    "turnout_validate_config": ["config"],
    "turnout_probe": ["artifact", "target", "config", "idempotency_key"],
}


def _spec_functions() -> dict[str, object]:
    return {
        name: fn
        for name, fn in vars(hookspecs).items()
        if name.startswith("turnout_") and callable(fn)
    }


def test_contract_group_and_project_names() -> None:
    assert hookspecs.ENTRY_POINT_GROUP == "turnout.releasers"
    assert turnout.ENTRY_POINT_GROUP == "turnout.releasers"
    assert hookspecs.PROJECT == "turnout"


def test_contract_hook_names_and_arguments_are_exactly_the_documented_ones() -> None:
    specs = _spec_functions()
    assert sorted(specs) == sorted(SPECS)
    for name, arguments in SPECS.items():
        assert list(inspect.signature(specs[name]).parameters) == arguments, name  # type: ignore[arg-type]
        assert inspect.getdoc(specs[name]), f"{name} needs a docstring"


def test_contract_hookspecs_imports_only_pluggy_and_the_standard_library() -> None:
    source = Path(hookspecs.__file__).read_text()
    imports = set(re.findall(r"^(?:from|import) ([\w.]+)", source, flags=re.MULTILINE))
    assert imports <= {"__future__", "collections.abc", "typing", "pluggy"}


def test_contract_every_hook_has_a_docs_section_titled_with_its_signature() -> None:
    guide = (ROOT / "docs" / "writing-plugins.md").read_text()
    for name, arguments in SPECS.items():
        heading = f"### `{name}({', '.join(arguments)})`"
        assert heading in guide, f"docs/writing-plugins.md lacks the section {heading!r}"


def test_contract_every_hook_has_a_test() -> None:
    sources = "\n".join(p.read_text() for p in Path(__file__).parent.glob("test_*.py"))
    for name in SPECS:
        short = name.removeprefix("turnout_")
        assert re.search(rf"def test_hook_{short}_\w+", sources), f"no test_hook_{short}_* test"


# One behaviour test per hook, through a real pluggy manager holding one plugin --------------

hookimpl = pluggy.HookimplMarker("turnout")


class SubsetPlugin:
    """Accepts only some of each hook's arguments, as the contract allows."""

    seen: dict[str, object]

    def __init__(self) -> None:
        self.seen = {}

    @hookimpl
    def turnout_release(self, artifact: str, attempt: int) -> dict[str, object]:
        self.seen["release"] = (artifact, attempt)
        return {"ok": True}

    @hookimpl
    def turnout_validate_config(self, config: dict[str, object]) -> None:
        if "bad" in config:
            raise ValueError("config 'bad' is not allowed")

    @hookimpl
    def turnout_probe(self, idempotency_key: str) -> dict[str, object] | None:
        return {"seen": idempotency_key} if idempotency_key == "done" else None


def _call_release(releaser: PluggyReleaser) -> dict[str, object]:
    return releaser.release(
        artifact="a.tgz", target="t", config={}, context={}, idempotency_key="k", attempt=2
    )


def test_hook_release_may_accept_a_subset_of_arguments() -> None:
    plugin = SubsetPlugin()
    assert _call_release(PluggyReleaser(plugin, "subset@1.0")) == {"ok": True}
    assert plugin.seen["release"] == ("a.tgz", 2)


def test_hook_validate_config_raises_value_error() -> None:
    releaser = PluggyReleaser(SubsetPlugin(), "subset@1.0")
    releaser.validate_config({"fine": 1})
    with pytest.raises(ValueError, match="config 'bad'"):
        releaser.validate_config({"bad": 1})


def test_hook_probe_answers_whether_a_key_was_released() -> None:
    releaser = PluggyReleaser(SubsetPlugin(), "subset@1.0")
    assert releaser.has_probe
    hook = releaser.manager.hook.turnout_probe
    args = {"artifact": "a", "target": "t", "config": {}}
    assert hook(idempotency_key="done", **args) == {"seen": "done"}
    assert hook(idempotency_key="new", **args) is None


def test_hook_release_with_unknown_argument_is_refused() -> None:
    class Extra:
        @hookimpl
        def turnout_release(self, artifact: str, surprise: int) -> dict[str, object]:
            return {}

    with pytest.raises(pluggy.PluginValidationError):
        PluggyReleaser(Extra(), "extra@1.0")


class Marked(Exception):
    def __init__(self, retryable: object) -> None:
        super().__init__("marked")
        self.retryable = retryable


class BrokenAttribute(Exception):
    @property
    def retryable(self) -> bool:
        raise RuntimeError("no")


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (ConnectionError(), True),
        (ConnectionRefusedError(), True),
        (TimeoutError(), True),
        (Marked(True), True),
        (Marked(1), True),
        (Marked(False), False),
        (Marked(None), False),
        (ValueError(), False),
        (RuntimeError(), False),
        (OSError(), False),
        (BrokenAttribute(), False),
        (KeyboardInterrupt(), False),
        (SystemExit(), False),
        (GeneratorExit(), False),
    ],
)
def test_contract_retryable_rule(exc: BaseException, transient: bool) -> None:
    assert retries.is_transient(exc) is transient
