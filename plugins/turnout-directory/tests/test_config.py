from __future__ import annotations

from typing import Any

import pytest

import turnout_directory


@pytest.mark.parametrize(
    "config",
    [
        {"root": "/srv/site"},
        {"root": "/srv/site", "keep": 1},
        {"root": "/srv/site/", "keep": 30},
    ],
)
def test_validate_config_accepts_good_config(config: dict[str, Any]) -> None:
    assert turnout_directory.turnout_validate_config(config=config) is None


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ({}, "config 'root' is required"),
        ({"keep": 3}, "config 'root' is required"),
        ({"root": "site"}, "config 'root' must be an absolute path, got 'site'"),
        ({"root": ""}, "config 'root' must be an absolute path, got ''"),
        ({"root": "~/site"}, "config 'root' must be an absolute path, got '~/site'"),
        ({"root": 5}, "config 'root' must be a string path, got int"),
        ({"root": None}, "config 'root' must be a string path, got NoneType"),
        ({"root": "/srv", "keep": 0}, "config 'keep' must be an integer >= 1, got 0"),
        ({"root": "/srv", "keep": -2}, "config 'keep' must be an integer >= 1, got -2"),
        ({"root": "/srv", "keep": "3"}, "config 'keep' must be an integer >= 1, got str"),
        ({"root": "/srv", "keep": 2.5}, "config 'keep' must be an integer >= 1, got float"),
        ({"root": "/srv", "keep": True}, "config 'keep' must be an integer >= 1, got bool"),
        (
            {"root": "/srv", "kep": 3},
            "unknown config key(s) 'kep'; known keys: 'keep', 'root'",
        ),
        (["root", "/srv"], "config must be a mapping, got list"),
    ],
)
def test_validate_config_refuses_bad_config(config: Any, fragment: str) -> None:
    with pytest.raises(ValueError, match=r"^directory: ") as caught:
        turnout_directory.turnout_validate_config(config=config)
    assert fragment in str(caught.value)


def test_validate_config_lists_every_unknown_key_without_values() -> None:
    config = {"root": "/srv", "token": "s3cr3t-value", "password": "hunter2"}
    with pytest.raises(ValueError, match="unknown config key") as caught:
        turnout_directory.turnout_validate_config(config=config)
    message = str(caught.value)
    assert "'password'" in message
    assert "'token'" in message
    assert "s3cr3t-value" not in message
    assert "hunter2" not in message


def test_validate_config_writes_nothing(tmp_path: Any) -> None:
    root = tmp_path / "site"
    turnout_directory.turnout_validate_config(config={"root": str(root)})
    assert not root.exists()
