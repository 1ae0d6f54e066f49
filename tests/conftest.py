"""Shared fixtures: real fixture-plugin wheels installed into a real folder, real databases."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).parent
ROOT = HERE.parent

sys.path.insert(0, str(HERE))  # for `helpers`, which --import-mode=importlib does not add

from helpers import FIXTURE_PLUGINS, fixture_wheel, install_into  # noqa: E402


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding a wheel of every fixture plugin, plus turnout-echo 2.0.0."""
    house = tmp_path_factory.mktemp("wheelhouse")
    for spec in FIXTURE_PLUGINS:
        fixture_wheel(house, *spec)
    fixture_wheel(house, "turnout-echo", "2.0.0", "echo.py", "echo")
    return house


@pytest.fixture(scope="session")
def plugin_site(wheelhouse: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """turnout's environment, extended with the fixture plugins and the directory releaser.

    The wheels are installed into one folder that goes on ``sys.path`` for this process and on
    ``PYTHONPATH`` for the CLI subprocesses the tests start.
    """
    site = tmp_path_factory.mktemp("site")
    wheels = [
        next(wheelhouse.glob(f"{dist.replace('-', '_')}-{version}-*.whl"))
        for dist, version, *_ in FIXTURE_PLUGINS
    ]
    # The real directory releaser too, built from its folder as pip would build it.
    install_into(site, *wheels, ROOT / "plugins" / "turnout-directory")
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), old]))
    yield site
    sys.path.remove(str(site))
    if old is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = old


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """A registry file at the latest migration."""
    from turnout.registry import Registry

    path = tmp_path / "registry.db"
    registry = Registry(str(path))
    registry.upgrade()
    registry.close()
    return path


@pytest.fixture
def calls_file(tmp_path: Path) -> Path:
    """Where the echo fixture plugin writes one line per call."""
    return tmp_path / "calls.jsonl"
