"""P10: a full inline release against the naive registry, with and without 2,000 more
distributions on ``sys.path``; and P1 (core overhead against two Core commits) on the way.

Turnout's figure is ``Turnout.release`` on the inline target (one handle, as the module-level
``turnout.release`` keeps). The naive registry is stevedore's ``DriverManager`` by name per
release, a call of the plugin's ``turnout_release`` and the same two commits (``naive.py``), in
this process. stevedore keeps in-process caches (entry points per namespace, and its on-disk
cache's contents per ``sys.path``), so a long-lived process that uses it stops scanning after its
first lookup: that is the peer the goal is judged against. The "rescan" variant drops those
in-process caches before every lookup, which is what each new process pays (stat and glob of
every ``*.dist-info/entry_points.txt`` on ``sys.path``, and reading the cache file).
"""

from __future__ import annotations

import itertools
from functools import partial

from harness import Plan, Report, alternate, describe, timed_batch
from naive import (
    NaiveLedger,
    forget_stevedore_caches,
    make_distributions,
    naive_release,
    on_path,
)
from world import NOOP_ID, World

EXTRA = 2000


def run(world: World, plan: Plan, report: Report) -> None:
    extra = make_distributions(world.root / "p10-dists", EXTRA)
    ledger = NaiveLedger(world.root / "p10-naive.db")
    keys = itertools.count()

    def naive(rescan: bool) -> None:
        if rescan:
            forget_stevedore_caches()
        naive_release(ledger, NOOP_ID, f"naive-{next(keys)}")

    def commits() -> None:
        ledger.two_commits(f"commits-{next(keys)}")

    def sample(operation: partial[None], count: int, present: bool) -> float:
        with on_path(extra, present):
            return timed_batch(operation, count)

    n = plan.batch(150)
    r = max(1, n // 5)
    turnout = partial(world.release, "noop-inline")
    try:
        samples = alternate(
            {
                "p10.commits": partial(sample, commits, n, False),
                "p10.naive.plain": partial(sample, partial(naive, False), n, False),
                "p10.turnout.plain": partial(sample, turnout, n, False),
                "p10.rescan.plain": partial(sample, partial(naive, True), r, False),
                "p10.naive.many": partial(sample, partial(naive, False), n, True),
                "p10.turnout.many": partial(sample, turnout, n, True),
                "p10.rescan.many": partial(sample, partial(naive, True), r, True),
            },
            plan,
        )
    finally:
        ledger.close()
    naive_what = (
        "DriverManager('turnout.releasers', 'noop') per release + turnout_release + "
        "INSERT commit + UPDATE commit (Core, WAL, NORMAL)"
    )
    rescan_what = "the same, with stevedore's in-process caches dropped before each lookup"
    turnout_what = "Turnout.release, inline target (see P2)"
    plus = f" +{EXTRA:,} dists"
    report.record(
        "P10",
        samples,
        describe(
            [
                (
                    "p10.commits",
                    "two single-row Core commits",
                    "floor",
                    n,
                    "INSERT commit + UPDATE commit, SQLAlchemy Core, WAL, synchronous NORMAL",
                ),
                ("p10.naive.plain", "naive: stevedore by name + 2 commits", "floor", n, naive_what),
                ("p10.turnout.plain", "turnout inline release", "candidate", n, turnout_what),
                ("p10.rescan.plain", "naive, rescan per release", "info", r, rescan_what),
                (
                    "p10.naive.many",
                    "naive: stevedore by name + 2 commits" + plus,
                    "floor",
                    n,
                    naive_what,
                ),
                ("p10.turnout.many", "turnout inline release" + plus, "candidate", n, turnout_what),
                ("p10.rescan.many", "naive, rescan per release" + plus, "info", r, rescan_what),
            ]
        ),
    )
    report.compare("P10", "p10.turnout.plain", "p10.naive.plain", 1.0)
    report.compare("P10", "p10.turnout.many", "p10.naive.many", 1.0)
    report.compare(
        "P10", "p10.turnout.many", "p10.turnout.plain", 1.1, label="itself, plain env (flat?)"
    )
    report.compare(
        "P10", "p10.naive.many", "p10.naive.plain", 1.1, label="itself, plain env", advisory=True
    )
    report.compare(
        "P10", "p10.rescan.many", "p10.rescan.plain", 1.1, label="itself, plain env",
        advisory=True,
    )  # fmt: skip
    report.compare("P1", "p10.turnout.plain", "p10.commits", 1.5, label="two Core commits (P1)")
