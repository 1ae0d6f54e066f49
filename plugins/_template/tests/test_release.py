"""The hooks called as plain functions, the way turnout calls them: by keyword."""

from __future__ import annotations

import fcntl
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import turnout_template
from turnout_template import ReleaseError, TransientReleaseError


def _release(config: dict[str, Any], key: str = "build-1", target: str = "site") -> Any:
    return turnout_template.turnout_release(
        artifact="dist/site.tgz",
        target=target,
        config=config,
        context={"customer": "acme"},
        idempotency_key=key,
    )


def _lines(config: dict[str, Any]) -> list[dict[str, Any]]:
    text = Path(config["path"]).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


def test_validate_config_accepts_an_absolute_path(config: dict[str, Any]) -> None:
    assert turnout_template.turnout_validate_config(config=config) is None


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        ({}, "config 'path' is required"),
        ({"path": "relative/releases.jsonl"}, "must be an absolute file path"),
        ({"path": 7}, "must be an absolute file path"),
        ({"path": "/srv/r.jsonl", "pth": "x"}, "unknown config key(s) 'pth'; known keys: 'path'"),
    ],
)
def test_validate_config_names_the_field(bad: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValueError, match="config") as caught:
        turnout_template.turnout_validate_config(config=bad)
    assert fragment in str(caught.value)
    assert "relative/releases" not in str(caught.value)  # values are never echoed


def test_release_appends_one_line_describing_the_release(config: dict[str, Any]) -> None:
    result = _release(config)
    assert result == {
        "path": config["path"],
        "line": 1,
        "idempotency_key": "build-1",
        "reused": False,
    }
    (line,) = _lines(config)
    assert line["artifact"] == "dist/site.tgz"
    assert line["target"] == "site"
    assert line["context"] == {"customer": "acme"}
    assert line["plugin"] == turnout_template.PLUGIN_ID
    assert json.dumps(result)  # turnout stores the result as JSON


def test_release_same_key_appends_nothing(config: dict[str, Any]) -> None:
    first = _release(config)
    again = _release(config)
    assert again == {**first, "reused": True}
    assert len(_lines(config)) == 1


def test_release_new_key_or_other_target_appends(config: dict[str, Any]) -> None:
    _release(config)
    assert _release(config, key="build-2")["line"] == 2
    assert _release(config, target="docs")["line"] == 3
    assert len(_lines(config)) == 3


def test_release_busy_file_is_transient(
    config: dict[str, Any], transient: Callable[[BaseException], bool]
) -> None:
    path = Path(config["path"])
    path.parent.mkdir(parents=True)
    with path.open("a") as other_writer:
        fcntl.flock(other_writer, fcntl.LOCK_EX)
        with pytest.raises(TransientReleaseError, match="another release") as caught:
            _release(config)
    assert transient(caught.value)
    assert _release(config)["line"] == 1  # a retry, once the file is free, succeeds


def test_release_damaged_file_is_permanent(
    config: dict[str, Any], transient: Callable[[BaseException], bool]
) -> None:
    path = Path(config["path"])
    path.parent.mkdir(parents=True)
    path.write_text("not json\n", encoding="utf-8")
    with pytest.raises(ReleaseError, match=r"line 1 .* is not a JSON object") as caught:
        _release(config)
    assert not transient(caught.value)
    assert path.read_text(encoding="utf-8") == "not json\n"  # nothing was appended
