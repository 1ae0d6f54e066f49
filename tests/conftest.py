"""Shared fixtures: real fixture-plugin wheels installed into a real folder, real databases."""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).parent
ROOT = HERE.parent
ARTIFACTS = HERE / ".artifacts"
"""What failed tests leave behind to look at (git-ignored): browser screenshots."""

sys.path.insert(0, str(HERE))  # for `helpers`, which --import-mode=importlib does not add

from helpers import (  # noqa: E402
    FIXTURE_PLUGINS,
    POSTGRES_URL_ENV,
    fixture_wheel,
    fresh_postgres_registry,
    install_into,
    wheel_from_installed,
)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item) -> Iterator[pytest.TestReport]:
    """A failed test that drove a browser ``page`` keeps a screenshot of it in ARTIFACTS.

    Taken here, while the page is still open; the report names the file.
    """
    report: pytest.TestReport = yield
    page = getattr(item, "funcargs", {}).get("page")
    if report.when == "call" and report.failed and page is not None:
        path = ARTIFACTS / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', item.name)}.png"
        ARTIFACTS.mkdir(exist_ok=True)
        try:
            page.screenshot(path=str(path), full_page=True)
        except Exception as exc:  # noqa: BLE001 - a failed screenshot must not hide the failure
            report.sections.append(("screenshot", f"none taken: {exc}"))
        else:
            report.sections.append(("screenshot", f"{path} (page {page.url})"))
    return report


@pytest.fixture(autouse=True)
def _no_telemetry_export(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's own OTEL_* settings never make the CLI export from the test process."""
    for name in [n for n in os.environ if n.startswith("OTEL_")]:
        monkeypatch.delenv(name)


@pytest.fixture(scope="session", autouse=True)
def _session_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """No test touches the real user's store: TURNOUT_HOME points into the test's temp folder."""
    home = tmp_path_factory.mktemp("turnout-home")
    old = os.environ.get("TURNOUT_HOME")
    os.environ["TURNOUT_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("TURNOUT_HOME", None)
    else:
        os.environ["TURNOUT_HOME"] = old


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty plugin store for one test (TURNOUT_HOME)."""
    path = tmp_path / "home"
    monkeypatch.setenv("TURNOUT_HOME", str(path))
    return path


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel of every fixture plugin, turnout-echo 2.0.0, and pluggy, for --no-index installs."""
    house = tmp_path_factory.mktemp("wheelhouse")
    for spec in FIXTURE_PLUGINS:
        fixture_wheel(house, *spec)
    fixture_wheel(house, "turnout-echo", "2.0.0", "echo.py", "echo")
    wheel_from_installed(house, "pluggy")
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


@pytest.fixture(params=["sqlite", "postgresql"])
def registry_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty registry at the latest migration, on each database turnout supports.

    ``sqlite``: a file in the test's temp folder. ``postgresql``: a database of its own, created
    on the server that ``TURNOUT_TEST_POSTGRES_URL`` names and dropped after the test; without
    that variable this case is skipped, except under ``CI``, where it fails (.ci/run sets it).
    """
    from turnout.registry import Registry

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'registry.db'}"
        registry = Registry(url)
        registry.upgrade()
        registry.close()
        yield url
        return
    with fresh_postgres_registry(_postgres_server()) as url:
        yield url


@pytest.fixture
def postgres_registry_url() -> Iterator[str]:
    """An empty registry on PostgreSQL only, as ``registry_url``'s ``postgresql`` case, for the
    checks that only PostgreSQL can make (its statistics, say)."""
    with fresh_postgres_registry(_postgres_server()) as url:
        yield url


def _postgres_server() -> str:
    """The server of ``TURNOUT_TEST_POSTGRES_URL``; skip without it, but fail under CI."""
    server = os.environ.get(POSTGRES_URL_ENV)
    if not server and os.environ.get("CI"):
        pytest.fail(f"CI must test PostgreSQL too: {POSTGRES_URL_ENV} is not set (see .ci/run)")
    if not server:
        pytest.skip(
            f"PostgreSQL case: set {POSTGRES_URL_ENV} (e.g. "
            "postgresql://postgres@127.0.0.1:5432/test) to run it"
        )
    return server


@pytest.fixture
def calls_file(tmp_path: Path) -> Path:
    """Where the echo fixture plugin writes one line per call."""
    return tmp_path / "calls.jsonl"
