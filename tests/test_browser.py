"""The dashboard in a real browser: Debian's chromium, driven headless by Playwright, against
``turnout serve`` started as its own process on loopback.

The registry holds real releases: turnout-echo 1.0.0 and 2.0.0 are installed into a store and
run in worker processes. Target ``checkout`` sends customer globex to 2.0.0 (its revision 2)
and everyone else to 1.0.0; target ``flaky`` runs 2.0.0 and fails every attempt. Without
chromium or the playwright package these tests skip, except under ``CI``, where they fail
(.ci/run installs chromium). A failed test keeps a screenshot of its page (see conftest.py).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from turnout.errors import ReleaseFailedError
from turnout.refs import PluginRef
from turnout.runtime import Turnout
from turnout.store import InstallRequest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Page, Response

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",  # CI runs as root, where chromium's sandbox refuses to start
    "--disable-gpu",
    # No traffic beyond the loopback server: the test network is closed, and chromium's own
    # calls home (QUIC probes, component and sync updates) would only wait for timeouts.
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOKEN = "browser-test-token-0123456789"
V1, V2 = "echo@1.0.0", "echo@2.0.0"
STARTUP_SECONDS = 60
"""How long ``turnout serve`` may take to answer: seconds when idle, but a cold start that
compiles its imports while a parallel suite and Chromium share two cores passed 20 s."""
SUBRESOURCES = {"script", "stylesheet", "image", "font", "xhr", "fetch"}
"""What a page loads itself (htmx fetches included): none of it may fail."""


@dataclass
class World:
    """The registry the servers read: its URL, the store, and the releases it holds."""

    url: str
    home: Path

    def handle(self) -> Turnout:
        return Turnout(self.url, home=self.home, sleep=lambda _s: None)


@pytest.fixture(scope="module")
def world(wheelhouse: Path, tmp_path_factory: pytest.TempPathFactory) -> World:
    """checkout: echo@1.0.0, globex routed to echo@2.0.0; flaky: echo@2.0.0, always failing.

    acme releases 3x and initech 1x to checkout (1.0.0), globex 2x (2.0.0); acme 2x to flaky
    (2.0.0, two attempts each, both ConnectionError).
    """
    folder = tmp_path_factory.mktemp("browser")
    world = World(f"sqlite:///{folder / 'registry.db'}", folder / "home")
    calls = folder / "calls.jsonl"
    with world.handle() as tt:
        tt.registry.upgrade()
        for version in ("1.0.0", "2.0.0"):
            wheel = next(wheelhouse.glob(f"turnout_echo-{version}-*.whl"))
            tt.install_plugin(
                InstallRequest(spec=str(wheel), find_links=[str(wheelhouse)], no_index=True)
            )
        tt.set_target("checkout", V1, config={"calls": str(calls)}, reason="create checkout")
        tt.add_route("checkout", "customer", ["globex"], V2, reason="globex tries 2.0.0")
        tt.set_target(
            "flaky",
            V2,
            config={"calls": str(calls), "fail_with": "connection"},
            max_attempts=2,
            reason="create flaky",
        )
        for target, customer, count in [
            ("checkout", "acme", 3),
            ("checkout", "globex", 2),
            ("checkout", "initech", 1),
            ("flaky", "acme", 2),
        ]:
            for i in range(count):
                with contextlib.suppress(ReleaseFailedError):
                    tt.release(
                        target, "dist/a.tgz", key=f"{customer}-{i}", context={"customer": customer}
                    )
    return world


@pytest.fixture(scope="module")
def server(world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``turnout serve`` over the world, changes allowed with :data:`TOKEN`; its base URL."""
    with _serve(world, tmp_path_factory.mktemp("serve"), token=TOKEN) as url:
        yield url


@pytest.fixture(scope="module", autouse=True)
def _browser_available() -> None:
    """Skip before building anything when chromium or a package is missing; under CI, fail."""
    missing = [
        f"the {name} package (pip install 'turnout[test,web]')"
        for name in ("playwright", "fastapi", "uvicorn")
        if find_spec(name) is None
    ]
    if not CHROMIUM.exists():
        missing.append(f"{CHROMIUM} (apt-get install chromium)")
    if missing and os.environ.get("CI"):
        pytest.fail(f"CI must run the browser tests, but these are missing: {'; '.join(missing)}")
    if missing:
        pytest.skip(f"browser tests need {'; '.join(missing)}")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's chromium, headless."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh browser context (no cookies) and page. The test fails if a page's script or
    style fails to load, a script throws, or the console reports an error (a refusal by the
    Content-Security-Policy included)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(10_000)
    opened = context.new_page()
    errors: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        # A failed load is reported below with its URL; a page the test expects to be refused
        # (a 403) is a failed load too.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            errors.append(f"console: {message.text}")

    def on_response(response: Response) -> None:
        if response.status >= 400 and response.request.resource_type in SUBRESOURCES:
            errors.append(f"{response.status} for {response.url}")

    opened.on("pageerror", lambda exc: errors.append(f"script error: {exc}"))
    opened.on("console", on_console)
    opened.on("response", on_response)
    yield opened
    context.close()
    assert errors == []


def test_browser_overview_filter_release_and_rollback(
    page: Page, server: str, world: World
) -> None:
    from playwright.sync_api import expect

    with world.handle() as tt:
        everything = tt.ledger.recent(limit=1000)
        by_v2 = tt.ledger.recent(plugin=PluginRef.parse(V2), limit=1000)
    assert 0 < len(by_v2) < len(everything) == 8

    # The overview: a card per target, a row with charts per version it ran.
    page.goto(server + "/")
    checkout = page.locator('section.card[data-target="checkout"]')
    expect(checkout).to_be_visible()
    expect(page.locator('section.card[data-target="flaky"]')).to_be_visible()
    expect(checkout.locator("h2")).to_contain_text(f"revision 2 · default {V1}")
    for version, releases in ((V1, "4"), (V2, "2")):
        row = checkout.locator(f'tr[data-version="{version}"]')
        expect(row.locator("td.num").first).to_have_text(releases)
        expect(row.locator("svg")).to_have_count(2)
    expect(
        page.locator(f'section.card[data-target="flaky"] tr[data-version="{V2}"]')
    ).to_contain_text("100.0%")

    # Releases, filtered by a version through the form.
    page.get_by_role("link", name="Releases", exact=True).click()
    filters = page.locator("#filters")
    filters.locator('input[name="plugin"]').fill(V2)
    filters.get_by_role("button", name="Filter").click()
    expect(page).to_have_url(re.compile(r"/releases\?.*\bplugin=echo%402\.0\.0\b"))
    rows = page.locator("table.releases tbody tr")
    expect(rows).to_have_count(len(by_v2))
    versions = rows.locator("td:nth-child(3)").all_inner_texts()
    assert versions == [V2] * len(by_v2)
    assert set(rows.locator("td:first-child").all_inner_texts()) == {r.id for r in by_v2}

    # A failed release in full: its error and both attempts.
    failed = next(r for r in by_v2 if r.status.value == "failed")
    page.get_by_role("link", name=failed.id, exact=True).click()
    expect(page).to_have_url(f"{server}/releases/{failed.id}")
    expect(page.locator("h1")).to_contain_text("failed")
    error = page.locator("table.plain tr", has=page.locator("th", has_text=re.compile(r"^error$")))
    expect(error).to_contain_text("echo failed on attempt 2")
    attempts = page.locator("table.attempts tbody tr")
    expect(attempts).to_have_count(2)
    for number, attempt in enumerate(attempts.all(), start=1):
        expect(attempt).to_contain_text("ConnectionError")
        expect(attempt).to_contain_text(f"echo failed on attempt {number}")

    # Sign in with the token, then roll checkout back to revision 1 (before globex's route).
    page.goto(server + "/targets/checkout")
    expect(page.locator("table.history form")).to_have_count(0)
    expect(page.locator("table.routes-table tr[data-route]")).to_have_count(1)
    page.get_by_role("link", name="Sign in to make changes").click()
    page.locator('input[name="token"]').fill(TOKEN)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{server}/targets/checkout")
    history = page.locator("table.history tbody tr")
    expect(history).to_have_count(2)
    rollback = page.locator('table.history tr[data-revision="1"] form.rollback')
    rollback.locator('input[name="reason"]').fill("globex back on 1.0.0: 2.0.0 drops carts")
    rollback.get_by_role("button", name="Roll back to 1").click()

    expect(page.locator("p.notice")).to_have_text("rolled back: revision 3")
    expect(page.locator("h1")).to_contain_text("revision 3")
    expect(history).to_have_count(3)
    newest = page.locator('table.history tr[data-revision="3"]')
    expect(newest).to_contain_text("globex back on 1.0.0: 2.0.0 drops carts")
    expect(newest).to_contain_text("web:127.0.0.1")
    expect(page.locator("table.routes-table tr[data-route]")).to_have_count(0)
    with world.handle() as tt:
        after = tt.registry.get_target("checkout")
    assert (after.revision, str(after.plugin_ref), after.routes) == (3, V1, ())

    # An open overview refreshes on its own: a release made meanwhile shows up in its count.
    from turnout.web.app import REFRESH_SECONDS

    page.goto(server + "/")
    count = page.locator(f'section.card[data-target="checkout"] tr[data-version="{V1}"] td.num')
    expect(count.first).to_have_text("4")
    with world.handle() as tt:
        tt.release("checkout", "dist/site.tar.gz", key="while-open", context={"customer": "acme"})
    expect(count.first).to_have_text("5", timeout=(REFRESH_SECONDS + 10) * 1000)


def test_browser_without_a_token_is_read_only(page: Page, world: World, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    with _serve(world, tmp_path, token=None) as url:
        page.goto(url + "/targets/checkout")
        expect(page.locator("header.bar")).to_contain_text("read-only")
        expect(page.locator("table.history tbody tr").first).to_be_visible()
        expect(page.locator('form[method="post"]')).to_have_count(0)
        expect(page.get_by_role("link", name="Sign in to make changes")).to_have_count(0)
        refused = page.goto(url + "/login")
        assert refused is not None
        assert refused.status == 403
        expect(page.locator("p.failure")).to_contain_text("read-only")
        page.goto("about:blank")  # no page left polling a server about to stop


def test_browser_says_when_a_page_can_no_longer_refresh(
    browser: Browser, world: World, tmp_path: Path
) -> None:
    """Not through the ``page`` fixture: the failed refreshes are what this test is about."""
    from playwright.sync_api import expect

    from turnout.web.app import REFRESH_SECONDS

    context = browser.new_context()
    try:
        page = context.new_page()
        with _serve(world, tmp_path, token=None) as url:
            page.goto(url + "/")
            stale = page.locator("#stale")
            expect(page.locator('section.card[data-target="checkout"]')).to_be_visible()
            expect(stale).to_be_hidden()
        # The server has stopped; the next refresh fails and the page says so.
        expect(stale).to_be_visible(timeout=(REFRESH_SECONDS + 10) * 1000)
        expect(stale).to_contain_text("may be out of date")
        expect(page.locator('section.card[data-target="checkout"]')).to_be_visible()
    finally:
        context.close()


# The server ----------------------------------------------------------------------------------


@contextlib.contextmanager
def _serve(world: World, folder: Path, *, token: str | None) -> Iterator[str]:
    """Run ``turnout serve --port 0`` until the block ends; yield the URL it announces."""
    env = {**os.environ, "TURNOUT_HOME": str(world.home)}
    env.pop("TURNOUT_SERVE_TOKEN", None)
    if token is not None:
        env["TURNOUT_SERVE_TOKEN"] = token
    script = shutil.which("turnout", path=str(Path(sys.executable).parent)) or "turnout"
    command = [script, "--db", world.url, "serve", "--host", "127.0.0.1", "--port", "0"]
    log = folder / "serve.log"
    with log.open("wb") as output:
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        yield _wait_until_it_answers(process, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_until_it_answers(process: subprocess.Popen[bytes], log: Path) -> str:
    """The server's URL, once it has said it and answers there."""
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"turnout serve exited with {process.returncode}:\n{log.read_text()}")
        announced = re.search(r"turnout dashboard on (http://127\.0\.0\.1:\d+)/", log.read_text())
        if announced is None:
            time.sleep(0.05)
            continue
        url = announced[1]
        try:
            with urllib.request.urlopen(url + "/api/targets", timeout=1) as answer:  # noqa: S310 - our own http:// URL
                if answer.status == 200:
                    return url
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.05)
    pytest.fail(f"turnout serve did not answer in {STARTUP_SECONDS} s:\n{log.read_text()}")
