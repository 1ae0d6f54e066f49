"""The dashboard's overview as a picture, taken from the running app: docs/images/overview.png.

Run through ``python3 noxfile.py -s screenshot``. It builds a registry with an hour of real
releases: three versions of the directory releaser (this tree's, built as 0.9.0, 1.0.0 and
1.1.0) installed into a store, three targets, a customer pinned to 1.1.0 and a 10% canary of
it. Each release really runs; the ledger's clock is set back so that they spread over the last
hour, and the failures are releases of a build that was never uploaded (a missing artifact),
more often on the canary. Then ``turnout serve`` starts on loopback and Debian's chromium,
driven by Playwright, saves the overview 1280 pixels wide. ``--keep DIR`` keeps the registry
and store there instead of in a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import sys
import tempfile
from contextlib import suppress
from datetime import timedelta
from pathlib import Path

from demo import ROOT, make_build, serve  # demo/demo.py, beside this file

from turnout import Turnout
from turnout.errors import ReleaseFailedError
from turnout.models import utcnow
from turnout.store import InstallRequest

OUT = ROOT / "docs" / "images" / "overview.png"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",  # as root, chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-quic",  # no traffic beyond the loopback server
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
CUSTOMERS = [
    "acme", "globex", "initech", "umbrella", "hooli", "stark", "wayne", "wonka", "tyrell",
    "cyberdyne", "soylent", "oscorp", "aperture", "massive", "vandelay", "gringotts",
    "monarch", "dunder", "prestige", "nakatomi",
]  # fmt: skip
FAILING = {"directory@0.9.0": 0.06, "directory@1.0.0": 0.02, "directory@1.1.0": 0.12}
"""How often a release on each version is of a build that was never uploaded."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="build the registry and store in this new folder")
    parser.add_argument("--out", type=Path, default=OUT, help=f"default: {OUT}")
    args = parser.parse_args()
    if args.keep and args.keep.exists() and any(args.keep.iterdir()):
        sys.exit(f"screenshot: --keep {args.keep} is not empty; name a new folder")
    if not Path(CHROMIUM).exists():
        sys.exit(f"screenshot: {CHROMIUM} is missing; run: apt-get install chromium")
    with tempfile.TemporaryDirectory(prefix="turnout-screenshot-") as scratch:
        work = args.keep.resolve() if args.keep else Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{work / 'registry.db'}"
        build_world(url, work)
        with serve(url, work, {**os.environ, "TURNOUT_HOME": str(work / "home")}) as base:
            photograph(base + "/", args.out)
    print(f"screenshot: wrote {args.out}")


# The registry: an hour of releases ----------------------------------------------------------


def build_world(url: str, work: Path) -> None:
    """Three targets, their edits and an hour of releases, in the order they would happen."""
    rng = random.Random(7)  # noqa: S311 - a repeatable picture, not a secret
    back = [timedelta(0)]
    with Turnout(url, home=work / "home", sleep=lambda _s: None) as tt:
        tt.registry.upgrade()
        for version in ("0.9.0", "1.0.0", "1.1.0"):
            tt.install_plugin(InstallRequest(spec=str(plugin_build(work, version))))
        # Releases happen now; the ledger records them as if they had started `back` ago.
        tt.ledger.clock = lambda: utcnow() - back[0]
        builds = [make_build(n, work) for n in range(1, 6)]
        www = work / "www"

        def target(name: str, version: str, why: str) -> None:
            tt.set_target(
                name,
                f"directory@{version}",
                config={"root": str(www / name), "keep": 3},
                actor="dana",
                reason=why,
            )

        def releases(name: str, minutes: range, per_minute: int) -> None:
            for minute in minutes:
                for _ in range(per_minute):
                    back[0] = timedelta(minutes=minute, seconds=rng.uniform(0, 59))
                    customer = rng.choice(CUSTOMERS)
                    context = {"customer": customer}
                    version = str(tt.resolve(name, context).plugin_ref)
                    artifact = builds[rng.randrange(len(builds))]
                    if rng.random() < FAILING[version]:
                        artifact = artifact.with_name("site-never-uploaded.tar.gz")
                    key = f"{name}-{minute}-{rng.randrange(1 << 30):x}"
                    with suppress(ReleaseFailedError):
                        tt.release(name, str(artifact), key=key, context=context)

        target("shop", "1.0.0", "shop on the directory releaser")
        target("docs", "1.0.0", "docs on the directory releaser")
        target("status-page", "0.9.0", "status page")
        releases("shop", range(59, 45, -1), 2)
        releases("docs", range(59, 45, -2), 1)
        releases("status-page", range(59, 45, -2), 1)

        target("status-page", "1.0.0", "0.9.0 is end of life")
        tt.add_route(
            "shop", "customer", ["acme"], "directory@1.1.0", actor="dana", reason="acme tries 1.1.0"
        )
        target("docs", "1.1.0", "docs move to 1.1.0")
        releases("shop", range(45, 25, -1), 2)
        releases("docs", range(45, 25, -2), 1)
        releases("status-page", range(45, 25, -2), 1)

        tt.split(
            "shop",
            [("directory@1.0.0", 90), ("directory@1.1.0", 10)],
            actor="sam",
            reason="10% canary of 1.1.0",
        )
        releases("shop", range(25, 0, -1), 3)
        releases("docs", range(25, 0, -2), 1)
        releases("status-page", range(25, 0, -2), 1)


def plugin_build(work: Path, version: str) -> Path:
    """This tree's directory releaser with its version set to ``version``."""
    source = work / f"turnout-directory-{version}"
    shutil.rmtree(source, ignore_errors=True)
    shutil.copytree(
        ROOT / "plugins" / "turnout-directory", source, ignore=shutil.ignore_patterns("tests")
    )
    pyproject = source / "pyproject.toml"
    text = re.sub(r'(?m)^version = ".*"$', f'version = "{version}"', pyproject.read_text())
    pyproject.write_text(text)
    return source


# The server and the browser -----------------------------------------------------------------


def photograph(url: str, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    out.parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(url, wait_until="networkidle")
        page.screenshot(path=str(out), full_page=True)
        browser.close()


if __name__ == "__main__":
    main()
