"""The turnout demo: releases of a small site with the directory releaser, then two versions.

Run through ``python3 noxfile.py -s demo``, which installs the core (with the dashboard) and
the directory releaser into a fresh environment first. Everything it writes lands in
``.demo/`` at the repository root. Each step prints the command it runs, then what turnout
said; a step with an unexpected exit code stops the demo. ``TURNOUT_DEMO_DIR`` moves
``.demo/`` elsewhere.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WORK = Path(os.environ.get("TURNOUT_DEMO_DIR", ROOT / ".demo")).resolve()
DB = WORK / "registry.db"
WWW = WORK / "www"
DEV = "1.1.0.dev1"
# The script installed beside this interpreter, so the demo works without an activated venv.
TURNOUT = shutil.which("turnout", path=str(Path(sys.executable).parent)) or "turnout"


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def turnout(*args: str, expect: int = 0, quiet: bool = False) -> str:
    """Run the turnout CLI against the demo registry; check its exit code; return stdout."""
    command = [TURNOUT, "--db", str(DB), *args]
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=ROOT)
    if not quiet:
        shown = shlex.join(["turnout", *command[1:]]).replace(str(ROOT) + "/", "")
        print(f"$ {shown}", flush=True)
        for stream in (done.stdout, done.stderr):
            if stream.strip():
                print(stream.rstrip(), flush=True)
        print(f"(exit code {done.returncode})", flush=True)
    if done.returncode != expect:
        sys.exit(f"demo: expected exit code {expect}, got {done.returncode}: {done.stderr}")
    return done.stdout


def make_build(number: int, work: Path = WORK) -> Path:
    """A .tar.gz of demo/site with its build number filled in, in ``work``."""
    build = work / f"build-{number}"
    shutil.rmtree(build, ignore_errors=True)
    shutil.copytree(ROOT / "demo" / "site", build)
    index = build / "index.html"
    index.write_text(index.read_text().replace("@BUILD@", str(number)))
    archive = work / f"site-{number}.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(build, arcname=".")
    return archive


def main() -> None:
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir()
    shutil.copy(ROOT / "registry.db.example", DB)
    os.environ.pop("TURNOUT_DATABASE_URL", None)
    os.environ["TURNOUT_HOME"] = str(WORK / "home")  # the plugin store, inside .demo/

    step("The example registry, copied to .demo/registry.db, is at the latest migration")
    turnout("db", "upgrade")
    turnout("target", "list")

    step("Install directory 1.0.0 into the store: an environment and a worker process of its own")
    turnout("plugin", "install", str(ROOT / "plugins" / "turnout-directory"))
    turnout("plugin", "list")

    step("Point a new target at directory@1.0.0, publishing into .demo/www")
    turnout(
        "target",
        "set",
        "demo-site",
        "directory@1.0.0",
        "--config",
        f"root={WWW}",
        "--config",
        "keep=3",
        "--reason",
        "demo",
    )

    step("Release build 1 with key build-1")
    turnout(
        "release", "demo-site", str(make_build(1)), "--key", "build-1", "--context", "customer=acme"
    )

    step("A job runner delivers the same event again: same key, nothing runs")
    turnout(
        "release",
        "demo-site",
        str(WORK / "site-1.tar.gz"),
        "--key",
        "build-1",
        "--context",
        "customer=acme",
    )

    step("Release build 2 with key build-2: a new folder, and current switches to it")
    turnout(
        "release", "demo-site", str(make_build(2)), "--key", "build-2", "--context", "customer=acme"
    )

    step("Reusing key build-1 for another artifact is refused (exit 65); nothing runs")
    turnout(
        "release",
        "demo-site",
        str(WORK / "site-2.tar.gz"),
        "--key",
        "build-1",
        "--context",
        "customer=acme",
        expect=65,
    )

    step("Pointing the target at a version that is not installed is refused (exit 78)")
    turnout("target", "set", "demo-site", "directory@9.9.9", expect=78)
    turnout("target", "show", "demo-site")

    step("What was recorded")
    turnout("releases", "--target", "demo-site")

    recorded = json.loads(turnout("releases", "--target", "demo-site", "--json", quiet=True))
    second, first = (r["result"] for r in recorded)
    current = (WWW / "current").resolve()
    folders = sorted(p.name for p in (WWW / "releases").iterdir() if not p.name.startswith("."))
    step("What happened")
    print(f"release folders: {', '.join(folders)}")
    print(f"build 1 -> {first['path']}")
    print(f"build 2 -> {second['path']}")
    print(f".demo/www/current -> {current.relative_to(WWW)}")
    print(
        f"served page says: {(current / 'index.html').read_text().split('<p>')[1].split('</p>')[0]}"
    )
    if len(folders) != 2 or current.name != second["release_id"]:
        sys.exit("demo: expected two release folders with current on build 2")
    print("\nTwo releases ran; the repeated key ran nothing; the refusals changed nothing.")
    routing()


def dev_build() -> Path:
    """This tree's directory releaser with only its version changed: a build being tried."""
    source = WORK / f"turnout-directory-{DEV}"
    shutil.copytree(
        ROOT / "plugins" / "turnout-directory", source, ignore=shutil.ignore_patterns("tests")
    )
    pyproject = source / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('version = "1.0.0"', f'version = "{DEV}"'))
    return source


def routing() -> None:
    """Two versions of one releaser serving one target: a pin, a canary, a plan, a rollback."""
    step(f"Install a development build, directory {DEV}, beside 1.0.0 (1.0.0 is not touched)")
    turnout("plugin", "install", str(dev_build()))
    turnout("plugin", "list")

    step(f"A second target on directory {DEV}: two versions of one releaser serve two targets")
    docs = WORK / "docs-www"
    turnout(
        "target", "set", "demo-docs", f"directory@{DEV}", "--config", f"root={docs}",
        "--reason", "docs try the new build", "--actor", "dana",
    )  # fmt: skip
    turnout("release", "demo-docs", str(make_build(5)), "--key", "docs-5")
    turnout(
        "release", "demo-site", str(make_build(4)), "--key", "build-4", "--context", "customer=acme"
    )
    turnout("target", "list")
    served = {
        r["target"]: r["plugin_ref"]
        for r in json.loads(turnout("releases", "--limit", "2", "--json", quiet=True))
    }
    if served != {"demo-docs": f"directory@{DEV}", "demo-site": "directory@1.0.0"}:
        sys.exit(f"demo: expected docs on {DEV} and site on 1.0.0 at once, got {served}")
    if not (docs / "current" / "index.html").is_file():
        sys.exit("demo: the docs target's current release has no index.html")

    step("Pin customer acme to the new build; everyone else stays on the default")
    turnout(
        "route", "add", "demo-site", "--customer", "acme", "--to", f"directory@{DEV}",
        "--reason", "acme tries the new build", "--actor", "dana",
    )  # fmt: skip

    step("Preview a 10% canary of everyone else: who seen in recent releases would move")
    canary = ["--to", f"directory@{DEV}=10", "--to", "directory@1.0.0=90"]
    turnout("plan", "route", "split", "demo-site", *canary)
    turnout(
        "route", "split", "demo-site", *canary, "--reason", "10% canary", "--actor", "dana"
    )  # fmt: skip
    turnout("route", "list", "demo-site")

    step("Which version would each customer get, and why (sticky: the same every time)")
    for customer in ("acme", "globex", "initech", "umbrella"):
        turnout("resolve", "demo-site", "--context", f"customer={customer}")

    step("Release build 3 for acme: the new build publishes it; the record says why")
    out = turnout(
        "release", "demo-site", str(make_build(3)), "--key", "build-3",
        "--context", "customer=acme", "--json",
    )  # fmt: skip
    decision = json.loads(out)["decision"]
    if decision["plugin"] != f"directory@{DEV}" or decision["rule"] != "customer=acme":
        sys.exit(f"demo: acme should have been released by the pinned build, got {decision}")

    step("Something is wrong with the new build: preview, then roll back to before the routes")
    turnout("plan", "rollback", "demo-site", "--to-revision", "1")
    turnout(
        "rollback", "demo-site", "--to-revision", "1", "--reason", "bad build", "--actor", "sam"
    )
    turnout("resolve", "demo-site", "--context", "customer=acme")
    turnout("history", "demo-site")
    after = json.loads(turnout("resolve", "demo-site", "--context", "customer=acme", "--json"))
    if after["plugin"] != "directory@1.0.0":
        sys.exit(f"demo: after the rollback acme should be back on 1.0.0, got {after}")
    print("\nOne command put every customer back on 1.0.0; the history says who did what and why.")
    seeing(json.loads(out)["id"])


def seeing(release_id: str) -> None:
    """What each version did: one release in full, and the numbers per version and customer."""
    step("One release in full: request, routing decision, every attempt, timings")
    turnout("releases", "show", release_id)
    step("Releases, failures, error rate and durations per version, then per version and customer")
    turnout("stats", "--by", "version")
    turnout("stats", "--by", "version", "--by", "customer")
    stats = json.loads(turnout("stats", "--by", "version", "--json", quiet=True))
    counted = {g["version"]: (g["releases"], g["failed"]) for g in stats["groups"]}
    if counted != {"directory@1.0.0": (3, 0), f"directory@{DEV}": (2, 0)}:
        sys.exit(f"demo: expected 3 releases by 1.0.0 and 2 by {DEV}, got {counted}")
    dashboard(stats)


def dashboard(stats: dict[str, Any]) -> None:
    """The same numbers in the dashboard: serve it for a moment and read its API and overview."""
    step("The dashboard: turnout serve, read-only on loopback; its /api/ answers as --json does")
    with serve(str(DB), WORK) as url:
        announced = (WORK / "serve.log").read_text().splitlines()[0]
        print(f"$ turnout --db .demo/registry.db serve --port 0\n{announced}", flush=True)
        served = json.loads(_get(f"{url}/api/stats?by=version"))
        if served["groups"] != stats["groups"]:
            sys.exit(f"demo: /api/stats differs from stats --json: {served} vs {stats}")
        print(f"GET {url}/api/stats?by=version: the same groups as turnout stats --json")
        page = _get(f"{url}/")
        if 'data-target="demo-site"' not in page:
            sys.exit("demo: the overview does not show demo-site")
        print(f"GET {url}/: the overview shows demo-site and its versions ({len(page)} bytes)")
    print("\nTo look around: turnout --db .demo/registry.db serve, then open http://127.0.0.1:8000")


@contextmanager
def serve(db: str, work: Path, env: Mapping[str, str] | None = None) -> Iterator[str]:
    """``turnout --db DB serve --port 0``, read-only, while the block runs; yields its URL once
    it answers. What it says goes to ``work/serve.log``."""
    command = [TURNOUT, "--db", db, "serve", "--host", "127.0.0.1", "--port", "0"]
    environment = {k: v for k, v in (env or os.environ).items() if k != "TURNOUT_SERVE_TOKEN"}
    log = work / "serve.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, env=environment, stdout=output, stderr=subprocess.STDOUT, cwd=ROOT
        )
    try:
        yield _answering(process, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _answering(process: subprocess.Popen[bytes], log: Path) -> str:
    """The URL the server announced, once it answers there."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"demo: turnout serve exited:\n{log.read_text()}")
        found = re.search(r"on (http://127\.0\.0\.1:\d+)/", log.read_text())
        if found:
            try:
                _get(found[1] + "/api/targets")
                return found[1]
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
        time.sleep(0.1)
    sys.exit(f"demo: turnout serve did not answer in 20 s:\n{log.read_text()}")


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback only
        body: bytes = response.read()
    return body.decode()


if __name__ == "__main__":
    main()
