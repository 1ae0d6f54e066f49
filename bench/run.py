"""Measure PERFORMANCE.md's goals P1 to P11 (P7: the CLI's cold start), and D1.

Every goal is a ratio to a floor or a peer measured in the same run: both sides alternate,
after a warm-up, and the table gives medians with min-max. Run it with ``nox -s bench``
(``-- --quick`` for a short run, ``-- --only P2,P10`` for some goals). The table is printed and
written as JSON to ``bench/results/latest.json``. P8 needs a PostgreSQL server
(``TURNOUT_BENCH_POSTGRES_URL``, default ``postgresql://postgres@127.0.0.1:5432/postgres``) and
psycopg; without them it is reported as skipped. D1 (the dashboard's pages over 100,000
releases) is the one absolute goal, the issue's 0.5 s per page; its floors, the queries behind
each page, are context, and it runs on that PostgreSQL server too when it answers. Failing a
goal does not fail the run (pass ``--strict`` for that): the numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import goal_dashboard
import goal_p1
import goal_p2
import goal_p3
import goal_p4
import goal_p5
import goal_p6
import goal_p7
import goal_p8
import goal_p9
import goal_p10
import goal_p11
import parts
from harness import FULL, QUICK, Plan, Report
from world import ROOT, World

GOALS: dict[str, Callable[[World, Plan, Report, argparse.Namespace], None]] = {
    "P1": lambda w, p, r, _a: goal_p1.run(w, p, r),
    "P2": lambda w, p, r, _a: goal_p2.run(w, p, r),
    "P11": lambda w, p, r, _a: goal_p11.run(w, p, r),
    "P3": lambda w, p, r, _a: goal_p3.run(w, p, r),
    "P4": lambda w, p, r, _a: goal_p4.run(w, p, r),
    "P5": lambda w, p, r, _a: goal_p5.run(w, p, r),
    "P10": lambda w, p, r, _a: goal_p10.run(w, p, r),
    "P9": lambda w, p, r, _a: goal_p9.run(w, p, r),
    "P8": lambda w, p, r, _a: goal_p8.run(w, p, r),
    "P6": lambda w, p, r, a: goal_p6.run(w, p, r, cli=not a.quick),
    "P7": lambda w, p, r, _a: goal_p7.run(w, p, r),
    "D1": lambda w, p, r, _a: goal_dashboard.run(w, p, r),
    "parts": lambda w, p, r, _a: parts.run(w, p, r),
}
DB_SETTINGS = (
    "SQLite file per registry; journal_mode=WAL, synchronous=NORMAL, busy_timeout=30 s, "
    "foreign_keys=ON; writes BEGIN IMMEDIATE (turnout's engine); the naive peer's table is the "
    "same definition in its own file with the same pragmas (pysqlite's default BEGIN); P8 "
    "alone: a PostgreSQL database of its own (psycopg 3, turnout's engine, the server's "
    "settings)"
)


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _run(*command: str) -> str | None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT)
    except (OSError, subprocess.CalledProcessError):
        return None
    return done.stdout.strip()


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def machine(uv: str) -> dict[str, Any]:
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": _cpu_model(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "sqlite": sqlite3.sqlite_version,
        "sqlalchemy": _version("sqlalchemy"),
        "pluggy": _version("pluggy"),
        "stevedore": _version("stevedore"),
        "turnout": _version("turnout"),
        "uv": _run(uv, "--version"),
        "git_commit": _run("git", "rev-parse", "--short", "HEAD"),
        "git_changed_files": (
            _run("git", "status", "--porcelain", "--untracked-files=no") or ""
        ).splitlines(),
        "loadavg_start": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and smaller batches")
    parser.add_argument("--only", help="comma-separated goal ids, e.g. P2,P10")
    parser.add_argument(
        "--json", type=Path, default=ROOT / "bench" / "results" / "latest.json", help="output"
    )
    parser.add_argument(
        "--rounds", type=int, help="rounds after warm-up (default: 5 quick, 21 full)"
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when a goal fails")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.rounds:
        plan = dataclasses.replace(plan, rounds=args.rounds)
    wanted = [g.strip() for g in args.only.split(",")] if args.only else list(GOALS)
    if args.quick and not args.only:
        wanted.remove("parts")  # the breakdown of the inline release: full runs only
    unknown = sorted(set(wanted) - set(GOALS))
    if unknown:
        parser.error(f"unknown goal(s) {', '.join(unknown)}; known: {', '.join(GOALS)}")

    started = time.perf_counter()
    report = Report()
    with tempfile.TemporaryDirectory(prefix="turnout-bench-") as tmp:
        world = World(Path(tmp))
        meta: dict[str, Any] = {
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "mode": "quick" if args.quick else "full",
            "plan": {"rounds": plan.rounds, "warmup": plan.warmup, "scale": plan.scale},
            "machine": machine(world.uv),
            "database": DB_SETTINGS,
            "processes": "this process, plus one warm worker (P2, P10's registry, P11), "
            "P8's four fleet processes and PostgreSQL's backends, and the spawned children "
            "each goal names; nothing else of the benchmark's runs",
        }
        print(
            f"turnout bench ({meta['mode']}): Python {meta['machine']['python']}, "
            f"SQLite {meta['machine']['sqlite']}, {meta['machine']['nproc']} cores, "
            f"{plan.rounds} rounds after {plan.warmup} warm-up",
            flush=True,
        )
        seconds: dict[str, float] = {}
        loads: dict[str, tuple[float, float]] = {}
        try:
            for goal in [g for g in GOALS if g in wanted]:
                began = time.perf_counter()
                load = os.getloadavg()[0]
                GOALS[goal](world, plan, report, args)
                seconds[goal] = round(time.perf_counter() - began, 1)
                loads[goal] = (round(load, 2), round(os.getloadavg()[0], 2))
                print(
                    f"  {goal} measured in {seconds[goal]} s "
                    f"(1-min load average {loads[goal][0]} -> {loads[goal][1]})",
                    flush=True,
                )
        finally:
            world.close()
    meta["machine"]["loadavg_end"] = os.getloadavg()
    meta["seconds"] = {**seconds, "total": round(time.perf_counter() - started, 1)}
    meta["loadavg_per_goal"] = loads
    print()
    print(report.table())
    print()
    for goal, note in report.notes.items():
        print(f"{goal}: {note}")
        print()
    report.write_json(args.json, meta)
    failed = [c for c in report.comparisons if c.passed is False]
    print(
        f"{sum(c.passed is True for c in report.comparisons)} passed, {len(failed)} failed "
        f"({meta['seconds']['total']} s); JSON: {args.json}"
    )
    return 1 if failed and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
