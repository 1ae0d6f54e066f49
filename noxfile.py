"""Every task a developer or CI runs: tests, lint, type checks, the demo.

Run it with nox (``nox -s tests``) or directly: ``python3 noxfile.py [-s SESSION] [-- ARGS]``
works on a fresh machine with nothing but Python 3.11+, because the bootstrap below installs
nox (with uv) into ``.nox/_bootstrap`` first. Without ``-s``, the default sessions run: lint,
typecheck, tests and each plugin's tests. Arguments after ``--`` reach the tool a session
runs (pytest, ruff, mypy).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).parent

try:
    import nox
except ModuleNotFoundError:
    if __name__ != "__main__" or os.environ.get("TURNOUT_NOX_BOOTSTRAPPED"):
        raise
    import subprocess
    import venv

    boot = ROOT / ".nox" / "_bootstrap"
    python = boot / "bin" / "python"
    if not python.exists():
        print("noxfile: installing nox into .nox/_bootstrap (once)", file=sys.stderr)
        venv.create(boot, with_pip=True)
        subprocess.run(
            [
                python,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "nox[uv]>=2025.5.1",
            ],
            check=True,
        )
    os.environ["TURNOUT_NOX_BOOTSTRAPPED"] = "1"
    os.execv(python, [str(python), __file__, *sys.argv[1:]])  # noqa: S606 - no shell wanted

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.sessions = ["lint", "typecheck", "tests", "plugin_tests"]
nox.options.error_on_missing_interpreters = True

PYTHON = "3.11"
PLUGINS = sorted(p.name for p in (ROOT / "plugins").iterdir() if (p / "pyproject.toml").exists())
"""Every plugin folder, ``_template`` (what ``turnout plugin new`` renders) included."""
LINT_TOOLS = ["ruff>=0.8"]
TYPE_TOOLS = ["mypy>=1.13", "celery-types>=0.22"]
BENCH_TOOLS = [
    "stevedore>=5",  # the naive registry that P10 compares against
    "httpx2>=2",  # D1 drives the dashboard through Starlette's TestClient
]
SCREENSHOT_TOOLS = ["playwright>=1.45"]  # drives Debian's chromium, as the browser tests do


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Run the core's test suite with pytest, in parallel on every core.

    The core is installed as a wheel (not editable), so the tests see what users get,
    migrations included. Pass pytest arguments after ``--``, e.g. ``-- -k release -n 0``.
    """
    session.install(".[test,postgres,otel,celery,web]")
    args = session.posargs or ["-n", "auto"]
    session.run("pytest", *args)


@nox.session(python=PYTHON)
@nox.parametrize("plugin", PLUGINS)
def plugin_tests(session: nox.Session, plugin: str) -> None:
    """Run one plugin's own tests with only the core and that plugin installed.

    A dependency the plugin uses but does not declare fails here.
    """
    session.install(".", f"./plugins/{plugin}[test]")
    session.run("pytest", f"plugins/{plugin}/tests", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """Check style and common bugs with ruff (same rules for the core and the plugins)."""
    session.install(*LINT_TOOLS)
    session.run("ruff", "check", *(session.posargs or ["."]))
    session.run("ruff", "format", "--check", *(session.posargs or ["."]))


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """Type-check the core and every plugin with mypy --strict."""
    session.install(
        *TYPE_TOOLS, ".[postgres,otel,celery,web]", *(f"./plugins/{p}" for p in PLUGINS)
    )
    session.run("mypy", *session.posargs)
    for plugin in PLUGINS:
        session.run("mypy", "--strict", f"plugins/{plugin}/src")


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """Install turnout into a fresh environment, the directory releaser into its store, release.

    Uses a copy of registry.db.example in .demo/; the store is .demo/home and the release
    folders land in .demo/www.
    """
    session.install(".[web]")
    session.run("python", "demo/demo.py", *session.posargs)


@nox.session(python=PYTHON)
def screenshot(session: nox.Session) -> None:
    """Retake docs/images/overview.png from the running dashboard (commit the result).

    Builds a registry with an hour of real releases of the directory releaser, starts
    ``turnout serve`` and photographs the overview with /usr/bin/chromium (Debian's).
    """
    session.install(".[web]", *SCREENSHOT_TOOLS)
    session.run("python", "demo/screenshot.py", *session.posargs)


@nox.session(python=PYTHON)
def example_registry(session: nox.Session) -> None:
    """Rebuild registry.db.example at the latest migration (commit the result)."""
    session.install(".", "./plugins/turnout-directory")
    session.run("python", "demo/make_example_registry.py")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Measure the performance goals of PERFORMANCE.md, each as a ratio to a floor in one run.

    Prints a table (median, min-max, ratio, goal, pass/fail) and writes it to
    bench/results/latest.json. Takes a few minutes; ``-- --quick`` runs in well under one,
    ``-- --only P2,P10`` picks goals. Not a default session: a slow machine fails no build.
    """
    session.install(".[otel,postgres,web]", *BENCH_TOOLS)  # postgres: P8 and D1; web: D1
    session.run("python", "bench/run.py", *session.posargs)


if __name__ == "__main__":
    nox.main()
