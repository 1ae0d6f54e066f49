"""P9: a replay of recorded releases (30% of the events duplicated) against the same number of
fresh releases; with the count of double deploys, which must be zero.

Each round first makes a batch of fresh releases on the inline no-op target (timed: the floor),
then replays that batch's originals with 30% of them listed twice, as a replay storm does
(timed: the candidate). A replay is ``Turnout.replay``: per event, the target's current
revision, a key derived from the original, and a full release (claim, run, fenced finish); a
duplicate finds its key claimed and runs nothing. Double deploys are counted from the
registry: replays per original above one.
"""

from __future__ import annotations

import gc
import random
import time

import sqlalchemy as sa
from harness import Plan, Report, describe
from world import World

from turnout.releases import TABLE, ReleaseRecord

DUPLICATES = 0.3


def run(world: World, plan: Plan, report: Report) -> None:
    n = plan.batch(400)
    turnout = world.turnout
    pending: list[ReleaseRecord] = []
    rng = random.Random(9)  # noqa: S311 - a shuffle, not a secret

    def fresh() -> float:
        start = time.perf_counter()
        for _ in range(n):
            world.release("noop-inline")
        elapsed = time.perf_counter() - start
        pending[:] = turnout.ledger.recent(target="noop-inline", limit=n, originals_only=True)
        return elapsed / n

    def replay() -> float:
        originals = list(pending)
        events = originals[: round(n * (1 - DUPLICATES))]
        events += rng.sample(events, n - len(events))
        rng.shuffle(events)
        start = time.perf_counter()
        turnout.replay(events)
        return (time.perf_counter() - start) / n

    # A replay needs its round's fresh batch, so the pair keeps its order in every round.
    samples: dict[str, list[float]] = {"p9.fresh": [], "p9.replay": []}
    for round_ in range(plan.warmup + plan.rounds):
        gc.collect()
        pair = (fresh(), replay())
        if round_ >= plan.warmup:
            samples["p9.fresh"].append(pair[0])
            samples["p9.replay"].append(pair[1])
    with turnout.registry.engine.connect() as conn:
        doubles = conn.execute(
            sa.select(sa.func.count()).select_from(
                sa.select(TABLE.c.replay_of)
                .where(TABLE.c.replay_of.is_not(None))
                .group_by(TABLE.c.replay_of)
                .having(sa.func.count() > 1)
                .subquery()
            )
        ).scalar_one()
    report.record(
        "P9",
        samples,
        describe(
            [
                (
                    "p9.fresh",
                    f"{n} fresh releases, per release",
                    "floor",
                    n,
                    "Turnout.release with a new key, inline no-op target",
                ),
                (
                    "p9.replay",
                    f"replay of those {n} events (30% duplicates), per event",
                    "candidate",
                    n,
                    f"Turnout.replay; duplicates run nothing; double deploys seen: {doubles}",
                ),
            ]
        ),
    )
    report.compare("P9", "p9.replay", "p9.fresh", 1.5)
    if doubles:
        raise AssertionError(f"P9: {doubles} originals were replayed more than once")
