"""P7: the CLI's cold start, against the import floor of what each command truly needs.

Each sample is a new process, as a shell or a job runner starts it: the ``turnout`` console
script of the bench's environment, timed from spawn to exit, alternating with its floor:

- ``turnout --help`` needs an interpreter and click: its floor is ``python -c "import click"``
  (goal: at most 7 times);
- ``turnout --db DB target list --json`` (a command that reads the registry) needs click, the
  registry's models (sqlmodel, with SQLAlchemy and pydantic) and the SQLite driver (SQLAlchemy's
  dialect, which imports ``sqlite3``): its floor is
  ``python -c "import click, sqlmodel, sqlalchemy.dialects.sqlite"`` (goal: at most 1.1 times).

Bytecode is warm, as on a machine where the CLI has run before: the processes run without
``PYTHONDONTWRITEBYTECODE`` (some sandboxes set it, and then every process compiles every
module it imports from source), so the warm-up rounds write ``__pycache__`` for both sides.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

from harness import Plan, Report, alternate, describe
from world import NOOP_REF, World

from turnout import Turnout

HELP_FLOOR = "import click"
DB_FLOOR = "import click, sqlmodel, sqlalchemy.dialects.sqlite"


_ENV = {name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"}


def _timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env=_ENV)
    return time.perf_counter() - start


def run(world: World, plan: Plan, report: Report) -> None:
    turnout = str(Path(sys.executable).parent / "turnout")
    db = world.new_db()
    with Turnout(str(db), home=world.home) as handle:
        for n in range(5):
            handle.set_target(f"site-{n}", NOOP_REF, isolation="inline", reason="benchmark")
    samples = alternate(
        {
            "p7.pass": partial(_timed, [sys.executable, "-c", "pass"]),
            "p7.help_floor": partial(_timed, [sys.executable, "-c", HELP_FLOOR]),
            "p7.help": partial(_timed, [turnout, "--help"]),
            "p7.db_floor": partial(_timed, [sys.executable, "-c", DB_FLOOR]),
            "p7.db": partial(_timed, [turnout, "--db", str(db), "target", "list", "--json"]),
        },
        plan,
    )
    report.record(
        "P7",
        samples,
        describe(
            [
                ("p7.pass", "spawn `python -c pass`", "info", 1, "the interpreter alone"),
                (
                    "p7.help_floor",
                    f'`python -c "{HELP_FLOOR}"`',
                    "floor",
                    1,
                    "what `--help` truly needs: the interpreter and click",
                ),
                (
                    "p7.help",
                    "`turnout --help`",
                    "candidate",
                    1,
                    "the console script, the CLI's imports, the help text printed",
                ),
                (
                    "p7.db_floor",
                    f'`python -c "{DB_FLOOR}"`',
                    "floor",
                    1,
                    "what a registry command truly needs: click, the registry's models "
                    "(sqlmodel: SQLAlchemy, pydantic) and the SQLite driver (SQLAlchemy's "
                    "dialect and sqlite3)",
                ),
                (
                    "p7.db",
                    "`turnout --db DB target list --json` (5 targets)",
                    "candidate",
                    1,
                    "the console script, imports, engine, schema check, one query, JSON out",
                ),
            ]
        ),
    )
    report.compare("P7", "p7.help", "p7.help_floor", 7.0)
    report.compare("P7", "p7.db", "p7.db_floor", 1.1)
