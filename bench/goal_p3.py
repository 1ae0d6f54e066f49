"""P3: cold start of a worker for a plugin version (spawn to ready), against ``python -c pass``.

The worker is the one a release would start for ``noop@1.0.0`` from the store: a
``WorkerProcess`` is created (pipes, ``python -I -S _serve.py``) and ``start()`` returns when it
answers the load request (pluggy imported, the distribution and its entry point checked, the
plugin imported and registered). Stopping it is outside the clock. Bytecode is warm: the
warm-up compiled it into the store's pycache, as the first start on a machine does.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial

from harness import Plan, Report, alternate, describe
from world import NOOP_DIST, NOOP_ID, NOOP_MODULE, NOOP_VERSION, World

from turnout.worker import DEFAULT_MEMORY_LIMIT_MB, WorkerProcess, WorkerSpec

IMPORTS = "import sys; sys.path[:0] = [{env!r}]; import json, faulthandler, resource, pluggy"


def _spawn(command: list[str]) -> None:
    subprocess.run(command, check=True)


def _mean_of(count: int, sample: Callable[[], float]) -> float:
    return sum(sample() for _ in range(count)) / count


def run(world: World, plan: Plan, report: Report) -> None:
    spec = WorkerSpec(NOOP_ID, NOOP_VERSION, NOOP_DIST, NOOP_MODULE, (str(world.env),))
    workers = world.turnout.store.workers
    workers.mkdir(parents=True, exist_ok=True)

    def cold_start() -> float:
        start = time.perf_counter()
        process = WorkerProcess(spec, home=workers, memory_limit_mb=DEFAULT_MEMORY_LIMIT_MB)
        process.start(60.0)
        elapsed = time.perf_counter() - start
        process.stop()
        return elapsed

    def spawn(*flags: str) -> float:
        start = time.perf_counter()
        _spawn([sys.executable, *flags, "-c", "pass"])
        return time.perf_counter() - start

    def imports() -> float:
        start = time.perf_counter()
        _spawn([sys.executable, "-I", "-S", "-c", IMPORTS.format(env=str(world.env))])
        return time.perf_counter() - start

    n = plan.batch(3)
    samples = alternate(
        {
            "p3.pass": partial(_mean_of, n, spawn),
            "p3.pass_isolated": partial(_mean_of, n, partial(spawn, "-I", "-S")),
            "p3.imports": partial(_mean_of, n, imports),
            "p3.worker": partial(_mean_of, n, cold_start),
        },
        plan,
    )
    report.record(
        "P3",
        samples,
        describe(
            [
                (
                    "p3.pass",
                    "spawn `python -c pass`",
                    "floor",
                    n,
                    "subprocess.run of the bench interpreter (a venv; site on), to exit",
                ),
                (
                    "p3.pass_isolated",
                    "spawn `python -I -S -c pass` (the worker's flags)",
                    "info",
                    n,
                    "the interpreter floor a worker starts from",
                ),
                (
                    "p3.imports",
                    "spawn `python -I -S` importing what a worker needs",
                    "info",
                    n,
                    "json, faulthandler, resource and pluggy (from the store environment), "
                    "then exit: the import floor of a worker",
                ),
                (
                    "p3.worker",
                    "worker cold start: WorkerProcess() + start()",
                    "candidate",
                    n,
                    "temp dir, pipes, Popen with an allow-listed env and a new session, output "
                    "thread; in the worker: imports, RLIMIT_AS, hookspecs, pluggy, metadata "
                    "checks, plugin import; up to the 'ready' answer",
                ),
            ]
        ),
    )
    report.compare("P3", "p3.worker", "p3.pass", 4.0)
    report.compare("P3", "p3.worker", "p3.pass_isolated", 4.0, advisory=True)
    report.compare("P3", "p3.worker", "p3.imports", 4.0, advisory=True)
