"""Releases per second of N runners on this machine, each releasing through its own warm worker.

Not one of the goals: a check that the worker's polling (``turnout._serve.spin``) gives way
when the CPUs are busy. Each runner is a process with a registry and a store of its own (so
that the registry's write lock is not what is measured), releasing to ``noop-process`` for
``--seconds`` after a warm-up; the figure is the sum over the runners.

    python bench/runners.py 1 2 4 [--seconds 5]
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import time
from pathlib import Path
from queue import Queue


def runner(root: str, seconds: float, results: Queue[tuple[int, float]]) -> None:
    from world import World

    world = World(Path(root))
    for _ in range(50):
        world.release("noop-process")
    start, cpu, count = time.monotonic(), time.process_time(), 0
    while time.monotonic() - start < seconds:
        world.release("noop-process")
        count += 1
    results.put((count, time.process_time() - cpu))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runners", type=int, nargs="+", help="how many runners, one run each")
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    context = multiprocessing.get_context("spawn")
    for n in args.runners:
        results = context.Queue()
        with tempfile.TemporaryDirectory() as tmp:
            processes = [
                context.Process(target=runner, args=(f"{tmp}/{i}", args.seconds, results))
                for i in range(n)
            ]
            for process in processes:
                process.start()
            done = [results.get() for _ in processes]
            for process in processes:
                process.join()
        rate = sum(count for count, _ in done) / args.seconds
        cpu = sum(seconds for _, seconds in done)
        print(f"{n} runner(s): {rate:,.0f} releases/s, runners' CPU {cpu:.1f} s")


if __name__ == "__main__":
    main()
