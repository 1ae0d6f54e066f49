"""Plugin refs: exact pins only, normalised as packaging does."""

from __future__ import annotations

import pytest

from turnout.errors import InvalidPluginRefError
from turnout.refs import PluginRef, normalize_plugin_id


@pytest.mark.parametrize(
    ("text", "plugin_id", "version"),
    [
        ("webhook@2.0.1", "webhook", "2.0.1"),
        ("Web_Hook@2.0.1", "web-hook", "2.0.1"),
        ("web.hook@2.0", "web-hook", "2.0"),
        ("webhook@2.0.0-RC1", "webhook", "2.0.0rc1"),
        ("webhook@v1.0", "webhook", "1.0"),
        (" webhook@1.0.0+local.1 ", "webhook", "1.0.0+local.1"),
    ],
)
def test_refs_parse_normalises(text: str, plugin_id: str, version: str) -> None:
    ref = PluginRef.parse(text)
    assert (ref.plugin_id, ref.version) == (plugin_id, version)
    assert str(ref) == f"{plugin_id}@{version}"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "webhook",
        "webhook@",
        "@1.0",
        "webhook@>=2",
        "webhook@2.*",
        "webhook@~=2.0",
        "webhook@1.0,<2",
        "webhook@latest",
        "web hook@1.0",
        "webhook@1.0@2.0",
        "-x@1.0",
        "webhook@==1.0",
    ],
)
def test_refs_parse_refuses_anything_but_an_exact_pin(text: str) -> None:
    with pytest.raises(InvalidPluginRefError) as raised:
        PluginRef.parse(text)
    assert "webhook@2.0.1" in str(raised.value)  # the message shows what to write
    assert raised.value.exit_code == 2


def test_refs_equal_spellings_compare_equal() -> None:
    assert PluginRef.parse("A_b@1.0.0") == PluginRef.parse("a-b@1.0.0")


@pytest.mark.parametrize(
    "name",
    ["echo", "My_Plugin", "a.b-c_d", "A--B__C..D", "x-_.y", "UPPER", "a1.2-b", "_lead", "trail."],
)
def test_refs_ids_are_normalised_as_packaging_normalises_names(name: str) -> None:
    from packaging.utils import canonicalize_name

    assert normalize_plugin_id(name) == canonicalize_name(name)
