"""P8: a fleet of N worker processes releasing on one PostgreSQL registry, against one worker.

The goal is rate(N) >= 0.7 x N x rate(1), with zero duplicate invocations. Everything runs in a
database of its own, ``turnout_bench_p8_<pid>``, created on the server that
``TURNOUT_BENCH_POSTGRES_URL`` names (default ``postgresql://postgres@127.0.0.1:5432/postgres``)
and dropped afterwards; when the server does not answer, or psycopg is not installed, P8 is
reported as skipped with the reason and the other goals still run.

- **The fleet.** Four OS processes (multiprocessing, ``spawn``), each with its own
  :class:`turnout.Turnout` handle on the database URL, releasing to four targets on the world's
  inline no-op plugin. They start, import, warm up (a few releases each: plugin loaded,
  connection pool open) and wait for work; a sample with N workers gives work to the first N.
- **One shared list.** Each sample releases one list of requests: 70% fresh keys, 30% repeats
  of an earlier request 1-8 places before it, so that with N > 1 the repeat is often taken
  while its original is still running in another process. The workers take the next request
  from one shared cursor, as job-queue consumers do, and start together at a barrier.
- **Rate.** Releases per second = requests handled / wall time, from the barrier's release to
  the last worker's last answer (``time.monotonic``, system-wide on Linux, so comparable across
  processes). A request is handled when ``Turnout.release`` answered: it ran, it returned the
  stored outcome (a repeat after its original finished), or it raised
  ``ReleaseInProgressError`` (a repeat that met its original running elsewhere; nothing ran).
- **Exactly once, measured.** In each worker the plugin module's ``turnout_release`` is wrapped
  before turnout loads it: the wrapper notes (target, key) and calls the original. Each worker
  returns the keys its plugin saw; a duplicate invocation is a (target, key) seen more than
  once across the fleet in a sample (warm-up samples too), a missing one a request whose key
  no plugin saw.

The harness compares times, so each sample is N x wall time / requests (worker-seconds per
release) and the goal is its ratio to N = 1, at most 1 / 0.7 = 1.43; the scaling ratio
rate(N) / (N x rate(1)) is its inverse, and the notes give it with the rates. A sample with a
duplicate invocation fails the goal.
"""

from __future__ import annotations

import contextlib
import importlib
import multiprocessing
import os
import queue
import random
import statistics
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from harness import Plan, Report, describe
from world import ARTIFACT, NOOP_MODULE, NOOP_REF, World

SERVER_ENV = "TURNOUT_BENCH_POSTGRES_URL"
DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
FLEETS = (1, 2, 4)
TARGETS = tuple(f"p8-{i}" for i in range(4))
REPEATS = 0.3
LAG = 8  # a repeat comes 1 to LAG requests after the request it repeats
WARM_RELEASES = 8
GOAL = 0.7
START_TIMEOUT = 180.0
SAMPLE_TIMEOUT = 300.0

Request = tuple[str, str]  # (target, idempotency key)


class Skipped(Exception):
    """P8 cannot run here (no PostgreSQL, no psycopg); the message says why."""


@contextlib.contextmanager
def fresh_database(server_url: str, *, prefix: str = "turnout_bench_p8") -> Iterator[str]:
    """Create ``<prefix>_<pid>`` on the server; yield its URL; drop it.

    Raises:
        Skipped: psycopg is missing or the server does not answer.
    """
    try:
        import psycopg
        from psycopg import sql
    except ImportError as exc:
        raise Skipped(f"psycopg is not installed ({exc}); pip install 'turnout[postgres]'") from exc
    from sqlalchemy.engine import make_url

    server = make_url(server_url).set(drivername="postgresql")
    admin = server.render_as_string(hide_password=False)
    name = f"{prefix}_{os.getpid()}"
    drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            conn.execute(drop)  # a leftover of a killed run with the same pid
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.OperationalError as exc:
        shown = server.render_as_string(hide_password=True)
        reason = " ".join(str(exc).split())
        raise Skipped(f"PostgreSQL at {shown} did not answer: {reason}") from exc
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            conn.execute(drop)


def requests_for(sample: int, count: int, rng: random.Random) -> list[Request]:
    """``count`` requests: fresh keys, and REPEATS of them shortly after an earlier one."""
    repeats = round(count * REPEATS)
    originals = [(rng.choice(TARGETS), f"p8-{sample}-{i}") for i in range(count - repeats)]
    placed = [(float(i), request) for i, request in enumerate(originals)]
    for _ in range(repeats):
        i = rng.randrange(len(originals))
        placed.append((i + rng.randint(1, LAG) - 0.5, originals[i]))
    placed.sort(key=lambda item: item[0])
    return [request for _, request in placed]


# The worker side: runs in each spawned process -------------------------------------------


def _count_invocations(seen: list[Request]) -> None:
    """Wrap the no-op plugin's hook so that every call notes its (target, key) in ``seen``."""
    module = importlib.import_module(NOOP_MODULE)
    original: Callable[..., dict[str, Any]] = getattr(module, "turnout_release")  # noqa: B009

    def turnout_release(
        artifact: str,
        target: str,
        config: dict[str, Any],
        context: dict[str, str],
        idempotency_key: str,
        attempt: int,
    ) -> dict[str, Any]:
        seen.append((target, idempotency_key))
        return original(artifact, target, config, context, idempotency_key, attempt)

    # pluggy finds the implementation by its marker attribute (HookimplMarker("turnout")).
    marker = "turnout_impl"
    setattr(turnout_release, marker, getattr(original, marker))
    setattr(module, "turnout_release", turnout_release)  # noqa: B010


def serve(
    index: int,
    url: str,
    home: str,
    site: str,
    commands: Any,
    answers: Any,
    barriers: dict[int, Any],
    cursor: Any,
) -> None:
    """One fleet worker: warm up, then release from the shared list for every job it gets."""
    try:
        if site not in sys.path:
            sys.path.insert(0, site)
        seen: list[Request] = []
        _count_invocations(seen)  # before turnout loads the plugin module's hooks

        from turnout import Turnout
        from turnout.errors import ReleaseInProgressError, TurnoutError

        handle = Turnout(url, home=home)
        for j in range(WARM_RELEASES):
            handle.release(TARGETS[j % len(TARGETS)], ARTIFACT, key=f"p8-warm-{index}-{j}")
        answers.put(("ready", index, None))
        while (job := commands.get()) is not None:
            parties, requests = job
            seen.clear()
            outcomes: Counter[str] = Counter()
            errors: dict[str, str] = {}
            barriers[parties].wait(timeout=SAMPLE_TIMEOUT)
            start, cpu = time.monotonic(), time.process_time()
            while True:
                with cursor.get_lock():
                    at = cursor.value
                    cursor.value = at + 1
                if at >= len(requests):
                    break
                target, key = requests[at]
                try:
                    record = handle.release(target, ARTIFACT, key=key)
                except ReleaseInProgressError:
                    outcomes["in progress"] += 1
                except TurnoutError as exc:
                    outcomes[type(exc).__name__] += 1
                    errors.setdefault(type(exc).__name__, str(exc))
                else:
                    outcomes["reused" if record.reused else "ran"] += 1
            end, cpu = time.monotonic(), time.process_time() - cpu
            answers.put(("done", index, (start, end, cpu, list(seen), dict(outcomes), errors)))
        handle.close()
    except BaseException:
        answers.put(("crashed", index, traceback.format_exc()))
        raise


# The parent side -------------------------------------------------------------------------


@dataclass
class Tally:
    """What one fleet size saw over all its samples."""

    requests: int = 0
    keys: int = 0
    duplicates: int = 0
    missing: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    errors: dict[str, str] = field(default_factory=dict)
    rates: list[float] = field(default_factory=list)
    busy: list[float] = field(default_factory=list)  # CPU-seconds per wall second
    worker_cpu: float = 0.0
    server_cpu: float | None = 0.0


class Fleet:
    """Four warm worker processes on one database, given work N at a time."""

    def __init__(self, world: World, url: str) -> None:
        import psycopg

        self.monitor = psycopg.connect(url, autocommit=True)
        context = multiprocessing.get_context("spawn")
        self.size = max(FLEETS)
        self.commands = [context.Queue() for _ in range(self.size)]
        self.answers = context.Queue()
        self.barriers = {n: context.Barrier(n) for n in FLEETS}
        self.cursor = context.Value("q", 0)
        self.processes = [
            context.Process(
                target=serve,
                args=(
                    i,
                    url,
                    str(world.home),
                    str(world.site),
                    self.commands[i],
                    self.answers,
                    self.barriers,
                    self.cursor,
                ),
                name=f"turnout-bench-p8-{i}",
                daemon=True,
            )
            for i in range(self.size)
        ]
        for process in self.processes:
            process.start()
        self._collect("ready", self.size, START_TIMEOUT)

    def _collect(self, kind: str, count: int, timeout: float) -> list[Any]:
        deadline = time.monotonic() + timeout
        got: list[Any] = []
        while len(got) < count:
            try:
                what, index, payload = self.answers.get(timeout=1.0)
            except queue.Empty:
                dead = [p.name for p in self.processes if not p.is_alive()]
                if dead or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"P8: fleet workers {dead or 'are'} stopped answering"
                    ) from None
                continue
            if what == "crashed":
                raise RuntimeError(f"P8: fleet worker {index} failed:\n{payload}")
            assert what == kind, (what, kind)
            got.append(payload)
        return got

    def server_cpu(self) -> dict[int, float] | None:
        """CPU-seconds so far of each server backend on the bench database (``/proc``).

        ``None`` when the server's processes are not readable here (not on this machine).
        """
        rows = self.monitor.execute(
            "SELECT pid FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
        ticks = os.sysconf("SC_CLK_TCK")
        used = {}
        for (pid,) in rows:
            try:
                with open(f"/proc/{pid}/comm") as comm:
                    if not comm.read().startswith("postgres"):
                        return None  # that pid is some other process: a server elsewhere
                with open(f"/proc/{pid}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                return None
            used[pid] = (int(fields[11]) + int(fields[12])) / ticks  # utime + stime
        return used

    def sample(self, parties: int, requests: list[Request], tally: Tally) -> float:
        """Release ``requests`` with ``parties`` workers; return worker-seconds per release."""
        before = self.server_cpu()
        self.cursor.value = 0
        for i in range(parties):
            self.commands[i].put((parties, requests))
        done = self._collect("done", parties, SAMPLE_TIMEOUT)
        after = self.server_cpu()
        wall = float(max(d[1] for d in done) - min(d[0] for d in done))
        worker_cpu = sum(d[2] for d in done)
        server_cpu = None
        if before is not None and after is not None:
            server_cpu = sum(used - before.get(pid, 0.0) for pid, used in after.items())
        tally.worker_cpu += worker_cpu
        if tally.server_cpu is not None and server_cpu is not None:
            tally.server_cpu += server_cpu
        else:
            tally.server_cpu = None
        tally.busy.append((worker_cpu + (server_cpu or 0.0)) / wall)
        invoked: Counter[Request] = Counter()
        for _start, _end, _cpu, seen, outcomes, errors in done:
            invoked.update(seen)
            tally.outcomes.update(outcomes)
            for name, message in errors.items():
                tally.errors.setdefault(name, message)
        unique = set(requests)
        tally.requests += len(requests)
        tally.keys += len(unique)
        tally.duplicates += sum(1 for count in invoked.values() if count > 1)
        tally.missing += len(unique - set(invoked))
        handled = sum(count for d in done for count in d[4].values())
        assert handled == len(requests), (handled, len(requests))
        tally.rates.append(len(requests) / wall)
        return parties * wall / len(requests)

    def close(self) -> None:
        for commands in self.commands:
            commands.put(None)
        for process in self.processes:
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)
        self.monitor.close()


def _server_stats(url: str) -> dict[str, int]:
    """Rolled-back transactions and deadlocks the server counted in the bench database."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        with contextlib.suppress(psycopg.Error):  # PostgreSQL 15+; older servers flush later
            conn.execute("SELECT pg_stat_force_next_flush()")
        row = conn.execute(
            "SELECT xact_commit, xact_rollback, deadlocks FROM pg_stat_database "
            "WHERE datname = current_database()"
        ).fetchone()
    assert row is not None
    return {"commits": row[0], "rollbacks": row[1], "deadlocks": row[2]}


def run(world: World, plan: Plan, report: Report) -> None:
    server = os.environ.get(SERVER_ENV) or DEFAULT_SERVER
    try:
        with fresh_database(server) as url:
            _measure(world, plan, report, url)
    except Skipped as exc:
        report.notes["P8"] = f"skipped: {exc}"
        print(f"  P8 skipped: {exc}", flush=True)


def _measure(world: World, plan: Plan, report: Report, url: str) -> None:
    from turnout import Turnout

    setup = Turnout(url, home=world.home)
    try:
        setup.registry.upgrade()
        for name in TARGETS:
            setup.set_target(name, NOOP_REF, isolation="inline", actor="bench", reason="P8")
    finally:
        setup.close()

    n = plan.batch(240)
    tallies = {parties: Tally() for parties in FLEETS}
    warmup = Tally()  # not timed, but its duplicates count as much as the others
    samples = _rounds(world, plan, url, n, tallies, warmup)
    _report(report, n, samples, tallies, warmup, _server_stats(url))


def _rounds(
    world: World, plan: Plan, url: str, n: int, tallies: dict[int, Tally], warmup: Tally
) -> dict[str, list[float]]:
    """Every fleet size once per round, alternating the order; the samples after warm-up."""
    rng = random.Random(8)  # noqa: S311 - which keys repeat, not a secret
    samples: dict[str, list[float]] = {f"p8.n{parties}": [] for parties in FLEETS}
    fleet = Fleet(world, url)
    try:
        for round_ in range(plan.warmup + plan.rounds):
            order = FLEETS if round_ % 2 == 0 else FLEETS[::-1]
            for parties in order:
                requests = [(t, f"{k}-n{parties}") for t, k in requests_for(round_, n, rng)]
                if round_ < plan.warmup:
                    fleet.sample(parties, requests, warmup)
                else:
                    samples[f"p8.n{parties}"].append(
                        fleet.sample(parties, requests, tallies[parties])
                    )
    finally:
        fleet.close()
    return samples


def _report(
    report: Report,
    n: int,
    samples: dict[str, list[float]],
    tallies: dict[int, Tally],
    warmup: Tally,
    server_stats: dict[str, int],
) -> None:
    duplicates = warmup.duplicates + sum(t.duplicates for t in tallies.values())
    missing = warmup.missing + sum(t.missing for t in tallies.values())
    what = (
        f"{n} requests per sample ({round(n * REPEATS)} repeats of a request 1-{LAG} places "
        f"earlier), {len(TARGETS)} inline no-op targets, PostgreSQL; each worker its own "
        "Turnout handle; N x wall time / requests"
    )
    described = []
    for parties in FLEETS:
        t = tallies[parties]
        described.append(
            (
                f"p8.n{parties}",
                f"{parties} worker{'s' if parties > 1 else ''}: {parties} x wall / release",
                "floor" if parties == 1 else "candidate",
                n,
                f"{what}; duplicate invocations {t.duplicates}, missing {t.missing}; "
                f"answers {dict(t.outcomes)}",
            )
        )
    report.record("P8", samples, describe(described))
    lines = []
    for parties in FLEETS:
        t = tallies[parties]
        rate = statistics.median(t.rates)
        line = (
            f"N={parties}: {rate:.0f} releases/s ({min(t.rates):.0f}-{max(t.rates):.0f}), "
            f"duplicate invocations {t.duplicates} over {t.keys} keys ({t.requests} requests), "
            f"missing {t.missing}; answers {dict(sorted(t.outcomes.items()))}"
        )
        if parties > 1:
            comparison = report.compare(
                "P8",
                f"p8.n{parties}",
                "p8.n1",
                1 / GOAL,
                label=f"1 worker; scaling = 1/ratio, goal >= {GOAL}, 0 duplicates",
            )
            scaling = 1 / comparison.ratio  # = rate(N) / (N x rate(1)), medians
            comparison.passed = scaling >= GOAL and duplicates == 0 and missing == 0
            comparison.note = f"scaling {scaling:.3f} (goal >= {GOAL}); duplicates {t.duplicates}"
            line += f"; scaling rate(N)/(N x rate(1)) = {scaling:.3f} (goal >= {GOAL})"
        cpu = f"worker CPU {t.worker_cpu / t.requests * 1e3:.2f} ms"
        if t.server_cpu is not None:
            cpu += f" + server backends {t.server_cpu / t.requests * 1e3:.2f} ms"
        line += (
            f"; CPU per request: {cpu}; cores kept busy {statistics.median(t.busy):.2f} "
            "(median; server backends included when on this machine)"
        )
        if t.errors:
            line += f"; errors: {t.errors}"
        lines.append(line)
    cores = len(os.sched_getaffinity(0))
    local = tallies[1].server_cpu is not None
    machine = f"This machine has {cores} cores" + (
        ", and the PostgreSQL server runs on them too" if local else ""
    )
    if cores < max(FLEETS) * (2 if local else 1):
        machine += (
            f": {max(FLEETS)} workers (and their server backends) cannot scale linearly here, "
            f"so N={max(FLEETS)} measures contention for the cores more than the fleet's scaling"
        )
    report.notes["P8"] = (
        "; ".join(lines) + f". Duplicate invocations in all (warm-up samples included): "
        f"{duplicates} (goal 0), missing {missing}. Server counters for the bench database: "
        f"{server_stats}. {machine}."
    )
    if warmup.errors:
        report.notes["P8"] += f" Errors in warm-up samples: {warmup.errors}."
