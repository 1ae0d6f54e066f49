"""P11: a release through a warm isolated worker, against a fresh subprocess per release.

The peer is the Meltano / pre-commit model: for every release, spawn ``python -c`` that
imports pluggy and the plugin (from the plugin's store environment, on ``PYTHONPATH``), calls
``turnout_release`` and prints the result as JSON, which the parent reads back. It writes no
database rows; turnout's figure is the full ``Turnout.release`` on the process target, commits
included, so the comparison favours the peer. A leaner peer (``python -I -S``, the worker's
own flags, no ``site``) is shown too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from functools import partial

from harness import Plan, Report, alternate, describe, timed_batch
from world import ARTIFACT, NOOP_MODULE, World

CALL = (
    "import json, pluggy, {module}\n"
    "result = {module}.turnout_release(artifact={artifact!r}, target='fresh', config={{}}, "
    "context={{}}, idempotency_key='k', attempt=1)\n"
    "print(json.dumps(result))\n"
)


def run(world: World, plan: Plan, report: Report) -> None:
    code = CALL.format(module=NOOP_MODULE, artifact=ARTIFACT)
    isolated = f"import sys; sys.path[:0] = [{str(world.env)!r}]\n" + code
    env = {**os.environ, "PYTHONPATH": str(world.env)}

    def fresh(*command: str) -> float:
        start = time.perf_counter()
        done = subprocess.run(command, check=True, capture_output=True, env=env)
        assert json.loads(done.stdout) == {"ok": True}
        return time.perf_counter() - start

    def mean(count: int, operation: partial[float]) -> float:
        return sum(operation() for _ in range(count)) / count

    n = plan.batch(100)
    f = plan.batch(4)
    samples = alternate(
        {
            "p11.fresh": partial(mean, f, partial(fresh, sys.executable, "-c", code)),
            "p11.fresh_isolated": partial(
                mean, f, partial(fresh, sys.executable, "-I", "-S", "-c", isolated)
            ),
            "p11.worker": partial(timed_batch, partial(world.release, "noop-process"), n),
        },
        plan,
    )
    report.record(
        "P11",
        samples,
        describe(
            [
                (
                    "p11.fresh",
                    "fresh `python -c` per release (pluggy + plugin)",
                    "floor",
                    f,
                    "spawn, site, import pluggy and the plugin, call turnout_release, print "
                    "JSON, parent decodes; no database",
                ),
                (
                    "p11.fresh_isolated",
                    "fresh `python -I -S -c` per release",
                    "info",
                    f,
                    "the same without site (the worker's interpreter flags)",
                ),
                (
                    "p11.worker",
                    "no-op release, warm worker (store env)",
                    "candidate",
                    n,
                    "Turnout.release on the process target (see P2), commits included",
                ),
            ]
        ),
    )
    report.compare("P11", "p11.worker", "p11.fresh", 0.05)
    report.compare("P11", "p11.worker", "p11.fresh_isolated", 0.05, advisory=True)
