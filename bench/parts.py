"""Where an inline release's time goes: its parts, each timed alone, in one alternation.

Not goals: these rows explain P1, P2 and P10. Each part is what ``Turnout.release`` does once
per release (inline target): resolve from the routing snapshot, claim (with its revision check)
and finish in the ledger, call the plugin through pluggy, the retry policy; beside them what a
release no longer pays (reading the target, reading the record back: only a target's first
release reads it), the naive peer's parts and the floor of two commits with the bare
``sqlite3`` module (same pragmas, BEGIN IMMEDIATE).
"""

from __future__ import annotations

import itertools
import sqlite3
import time
from functools import partial

from harness import Plan, Report, alternate, describe, timed_batch
from naive import NAMESPACE, NaiveLedger
from world import ARTIFACT, NOOP_ID, NOOP_REF, RELEASE_ARGS, World

from turnout import retries
from turnout.releases import Claim, Status


def run(world: World, plan: Plan, report: Report) -> None:
    from stevedore import DriverManager

    turnout = world.turnout
    ledger = turnout.ledger
    releaser = turnout._releaser(NOOP_REF, "inline")
    naive = NaiveLedger(world.root / "parts-naive.db")
    raw = sqlite3.connect(str(world.root / "parts-raw.db"), isolation_level=None)
    raw.execute("PRAGMA journal_mode = WAL")
    raw.execute("PRAGMA synchronous = NORMAL")
    raw.execute("CREATE TABLE releases (id TEXT PRIMARY KEY, key TEXT UNIQUE, status TEXT)")
    keys = itertools.count()
    last: list[str] = []

    router = turnout._router("noop-inline")

    def claim_finish() -> None:
        claim = ledger.claim(
            target="noop-inline",
            key=f"parts-{next(keys)}",
            fingerprint="0" * 64,
            plugin_ref=NOOP_REF,
            artifact=ARTIFACT,
            context={},
            revision=router.spec.revision,
        )
        assert isinstance(claim, Claim)
        ledger.move(claim, Status.SUCCEEDED, result={"ok": True})
        last[:] = [claim.id]

    def raw_commits() -> None:
        key = f"raw-{next(keys)}"
        raw.execute("BEGIN IMMEDIATE")
        raw.execute("INSERT INTO releases VALUES (?, ?, 'running')", (key, key))
        raw.execute("COMMIT")
        raw.execute("BEGIN IMMEDIATE")
        raw.execute("UPDATE releases SET status = 'succeeded' WHERE id = ?", (key,))
        raw.execute("COMMIT")

    def policy() -> None:
        retries.release_policy(max_attempts=3, deadline=180.0, sleep=time.sleep)(dict)

    def naive_commits() -> None:
        naive.two_commits(f"naive-parts-{next(keys)}")

    def get_target() -> None:
        turnout.registry.get_target("noop-inline")

    def resolve() -> None:
        router.resolve({})

    def read_back() -> None:
        ledger.get(last[0])

    claim_finish()
    args = {**RELEASE_ARGS, "timeout": 60.0}
    plugin = partial(releaser.release, **args)
    stevedore = partial(DriverManager, namespace=NAMESPACE, name=NOOP_ID, invoke_on_load=False)
    n = plan.batch(300)
    # (key, name, batch multiplier: cheap parts take more calls per sample, operation)
    parts = [
        ("parts.resolve", "Router.resolve: the routing snapshot (default rule)", 10, resolve),
        ("parts.get_target", "registry.get_target (first release only)", 1, get_target),
        ("parts.claim_finish", "ledger.claim (revision check) + move, 2 commits", 1, claim_finish),
        ("parts.get", "ledger.get: a record by id (not on the release path)", 1, read_back),
        ("parts.plugin", "PluggyReleaser.release (hook + check)", 10, plugin),
        ("parts.policy", "retry policy (tenacity) around one call", 10, policy),
        ("parts.naive_commits", "naive: two Core commits", 1, naive_commits),
        ("parts.stevedore", "naive: DriverManager by name (warm caches)", 10, stevedore),
        ("parts.raw", "bare sqlite3: two commits (BEGIN IMMEDIATE)", 1, raw_commits),
    ]  # fmt: skip
    try:
        samples = alternate(
            {key: partial(timed_batch, operation, n * scale) for key, _, scale, operation in parts},
            plan,
        )
    finally:
        naive.close()
        raw.close()
    report.record(
        "parts",
        samples,
        describe([(key, name, "info", n * scale, "") for key, name, scale, _ in parts]),
    )
