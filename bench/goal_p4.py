"""P4: resolve a target + context from the in-memory routing snapshot, 10,000 targets holding
100,000 routes: median <= 3 µs and p99 <= 20 µs per lookup.

The registry is real: a SQLite file under the run's temporary folder, migrated with
``Registry(url).upgrade()``, holding 10,000 targets with 100,000 routes in all (4 to 16 a
target). The routes are built with ``turnout.routing.with_route`` (so ``Route`` and
``Split.new`` check them as an edit would): customer pins with 1-3 values each, 1-3 project
pins, 0-2 plan and 0-2 channel rules, about 30% of those rules (and a few pins) a split, and a
split on everyone on about 40% of the targets. The rows, and one revision row each, are written
with SQLAlchemy Core in one transaction (the rows are what matters, not how they got there):
``routes`` is the JSON list of ``Route.to_dict()``, as ``Registry.set_target`` writes it.

The snapshot is loaded as the runtime builds its entries: ``Registry.list_targets()`` on a new
registry handle, then ``Router(spec)`` per target, keyed by name. Its load time is timed (the
read and the compilation apart too), and its memory taken with tracemalloc (what stays
allocated once the load returned and the registry handle is closed) and as the growth of the
process's RSS on the first load. Beside it: the runtime's lazy path for one target
(``get_target`` + ``Router``), which a release pays on first use of a target.

Lookups are pre-generated: a target picked at random per lookup, and a context (customer,
project, plan, channel) made to hit a customer pin, a project pin, a plan rule, a channel rule,
the split on everyone, or nothing (the default); rules and pins that are splits hash the
context's key. The mix that the lookups really hit is counted by resolving each once. Each call
is timed alone: ``time.perf_counter_ns()`` around ``routing.get(name)`` and
``router.resolve(context)`` (what ``Turnout.release`` does once it has checked the context),
after warm-up rounds, with the garbage collector on. Nothing is subtracted: the overhead of
the clock itself (the same two reads around nothing) is measured in the same rounds and shown
as the floor. The table gives, over the rounds, the median of each round's median and the
median of each round's p99; the notes give the median, p99, p99.9 and maximum of all the calls
pooled.
"""

from __future__ import annotations

import gc
import math
import os
import random
import time
import tracemalloc
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from harness import Plan, Report, describe, fmt_time
from world import World

from turnout.models import Target, TargetRevision, utcnow
from turnout.refs import PluginRef
from turnout.registry import Registry, TargetSpec
from turnout.routing import Decision, Route, Router, with_route

TARGETS = 10_000
ROUTES = 100_000
PER_TARGET = (4, 16)  # routes on one target, at least and at most (mean 10)
CUSTOMERS = 200_000  # the pools that pins and contexts draw from
PROJECTS = 50_000
PLANS = ("free", "starter", "pro", "team", "business", "enterprise")
CHANNELS = ("stable", "beta", "canary", "nightly", "lts")
PLUGINS = ("k8s", "lambda", "static-site", "helm", "ecs", "cloud-run", "fly", "nomad")
VERSIONS = ("1.4.0", "1.5.0", "1.5.1", "2.0.0", "2.1.0", "2.2.0rc1")
SPLIT_ON_EVERYONE = 0.4
RULE_SPLIT = 0.3  # share of plan and channel rules that are splits
PIN_SPLIT = 0.04  # share of customer and project pins that are splits
LOOKUPS = 100_000
MIX = (  # what the pre-generated contexts aim at, in percent
    ("customer", 30),
    ("project", 15),
    ("plan", 15),
    ("channel", 10),
    ("everyone", 15),
    ("default", 15),
)
MEDIAN_GOAL = 3e-6
P99_GOAL = 20e-6


@dataclass
class Layout:
    """What one target routes: the values a context must carry to hit each kind of route."""

    name: str
    customers: list[str] = field(default_factory=list)
    projects: list[str] = field(default_factory=list)
    plans: list[str] = field(default_factory=list)
    channels: list[str] = field(default_factory=list)
    everyone: bool = False


def _counts(rng: random.Random) -> list[int]:
    """Routes per target: 4 to 16, exactly ``ROUTES`` in all."""
    low, high = PER_TARGET
    counts = [rng.randint(low, high) for _ in range(TARGETS)]
    missing = ROUTES - sum(counts)
    while missing:
        i = rng.randrange(TARGETS)
        step = 1 if missing > 0 else -1
        if low <= counts[i] + step <= high:
            counts[i] += step
            missing -= step
    return counts


def _target(rng: random.Random, index: int, count: int) -> tuple[TargetSpec, Layout]:
    name = f"site-{index:05d}"
    plugin = PLUGINS[index % len(PLUGINS)]
    default, other, canary = (PluginRef.parse(f"{plugin}@{v}") for v in rng.sample(VERSIONS, 3))
    kinds = ["everyone"] if rng.random() < SPLIT_ON_EVERYONE else []
    kinds += ["plan"] * rng.choice((0, 1, 1, 2))
    kinds += ["channel"] * rng.choice((0, 1, 1, 2))
    kinds += ["project"] * rng.randint(1, 3)
    kinds = kinds[: count - 1]  # at least one customer pin
    kinds += ["customer"] * (count - len(kinds))
    rng.shuffle(kinds)
    sizes = {"customer": (1, 3), "project": (1, 2), "plan": (1, 2), "channel": (1, 2)}
    width = {k: [rng.randint(*sizes[k]) for x in kinds if x == k] for k in sizes}
    pools: dict[str, Iterator[str]] = {
        "customer": (f"cust-{n:06d}" for n in rng.sample(range(CUSTOMERS), sum(width["customer"]))),
        "project": (f"proj-{n:05d}" for n in rng.sample(range(PROJECTS), sum(width["project"]))),
        "plan": iter(rng.sample(PLANS, len(PLANS))),
        "channel": iter(rng.sample(CHANNELS, len(CHANNELS))),
    }
    layout = Layout(name)
    routes: tuple[Route, ...] = ()
    for kind in kinds:
        if kind == "everyone":
            weights = rng.choice(
                (
                    [(default, 95), (canary, 5)],
                    [(default, 90), (other, 10)],
                    [(default, 80), (other, 15), (canary, 5)],
                    [(default, 50), (other, 50)],
                )
            )
            routes = with_route(routes, None, (), weights=weights)
            layout.everyone = True
            continue
        values = [next(pools[kind]) for _ in range(width[kind].pop())]
        getattr(layout, f"{kind}s").extend(values)
        chance = RULE_SPLIT if kind in ("plan", "channel") else PIN_SPLIT
        if rng.random() < chance:
            key = "project" if kind == "customer" else "customer"
            weights = rng.choice(([(other, 90), (canary, 10)], [(other, 50), (canary, 50)]))
            routes = with_route(routes, kind, values, weights=weights, key=key)
        else:
            routes = with_route(routes, kind, values, to=rng.choice((other, canary)))
    spec = TargetSpec(
        name=name,
        plugin_ref=default,
        config={},
        max_attempts=3,
        timeout=60.0,
        isolation="inline",
        revision=1,
        routes=routes,
    )
    return spec, layout


def build(path: Path, rng: random.Random) -> tuple[str, list[Layout]]:
    """A migrated registry with the targets and their routes; its URL and their layouts."""
    url = str(path)
    registry = Registry(url)
    try:
        registry.upgrade()
        now = utcnow()
        targets, revisions, layouts = [], [], []
        for index, count in enumerate(_counts(rng)):
            spec, layout = _target(rng, index, count)
            assert len(spec.routes) == count
            layouts.append(layout)
            snapshot = spec.snapshot()
            targets.append(
                {
                    "name": spec.name,
                    "plugin_id": spec.plugin_ref.plugin_id,
                    "plugin_version": spec.plugin_ref.version,
                    "config": spec.config,
                    "max_attempts": spec.max_attempts,
                    "timeout": spec.timeout,
                    "isolation": spec.isolation,
                    "idempotent": spec.idempotent,
                    "routes": snapshot["routes"],
                    "revision": spec.revision,
                    "created_at": now,
                    "updated_at": now,
                }
            )
            revisions.append(
                {
                    "target": spec.name,
                    "revision": spec.revision,
                    "actor": "bench",
                    "reason": "P4 registry",
                    "snapshot": snapshot,
                    "created_at": now,
                }
            )
        with registry.engine.begin() as conn:
            conn.execute(Target.__table__.insert(), targets)  # type: ignore[attr-defined]
            conn.execute(TargetRevision.__table__.insert(), revisions)  # type: ignore[attr-defined]
    finally:
        registry.close()
    return url, layouts


def load(url: str) -> tuple[dict[str, Router], float, float]:
    """The snapshot as the runtime builds it; with the seconds to read and to compile it."""
    registry = Registry(url)
    try:
        start = time.perf_counter()
        specs = registry.list_targets()
        read = time.perf_counter()
        routing = {spec.name: Router(spec) for spec in specs}
        done = time.perf_counter()
    finally:
        registry.close()
    return routing, read - start, done - read


def _rss() -> int:
    """Resident set size of this process, in bytes (Linux)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _free(rng: random.Random, taken: list[str], make: str, pool: int) -> str:
    """A value of ``pool`` that ``taken`` does not route."""
    while True:
        value = make.format(rng.randrange(pool))
        if value not in taken:
            return value


def lookups(rng: random.Random, layouts: list[Layout]) -> list[tuple[str, dict[str, str]]]:
    """``LOOKUPS`` pairs of (target, context), each aimed at one kind of route (``MIX``)."""
    kinds = [kind for kind, _ in MIX]
    weights = [share for _, share in MIX]
    made = []
    for kind in rng.choices(kinds, weights, k=LOOKUPS):
        layout = rng.choice(layouts)
        while (kind == "everyone" and not layout.everyone) or (
            kind not in ("everyone", "default") and not getattr(layout, f"{kind}s")
        ):
            layout = rng.choice(layouts)
        context = {
            "customer": _free(rng, layout.customers, "cust-{:06d}", CUSTOMERS),
            "project": _free(rng, layout.projects, "proj-{:05d}", PROJECTS),
            "plan": rng.choice([p for p in PLANS if p not in layout.plans]),
            "channel": rng.choice([c for c in CHANNELS if c not in layout.channels]),
        }
        if kind in ("customer", "project", "plan", "channel"):
            context[kind] = rng.choice(getattr(layout, f"{kind}s"))
        elif kind == "default" and layout.everyone:
            del context["customer"]  # no split key: the split on everyone falls through
        made.append((layout.name, context))
    return made


def kind_of(decision: Decision) -> str:
    """What a lookup hit, from its decision record."""
    if decision.rule == "target default":
        return "default"
    if decision.route is not None and decision.rule.startswith("split by"):
        return "split on everyone"
    selector = decision.rule.split("=", 1)[0]
    what = "pin" if selector in ("customer", "project") else "rule"
    return f"{selector} {what}" + (", split" if decision.bucket is not None else "")


def time_lookups(
    routing: dict[str, Router], window: list[tuple[str, dict[str, str]]], out: list[int]
) -> None:
    """Each lookup of ``window`` timed alone, in nanoseconds, into ``out``."""
    clock = time.perf_counter_ns
    get = routing.get
    for i, (name, context) in enumerate(window):
        start = clock()
        router = get(name)
        router.resolve(context)  # type: ignore[union-attr]
        out[i] = clock() - start


def time_nothing(window: list[tuple[str, dict[str, str]]], out: list[int]) -> None:
    """The clock's own overhead: the same two reads around nothing, as many times."""
    clock = time.perf_counter_ns
    for i, (_name, _context) in enumerate(window):
        start = clock()
        out[i] = clock() - start


def percentile(ordered: list[int], share: float) -> int:
    """Nearest-rank percentile of a sorted list."""
    return ordered[max(1, math.ceil(len(ordered) * share)) - 1]


@dataclass
class Loaded:
    """The snapshot, how long it took to load, and what it holds in memory."""

    routing: dict[str, Router]
    samples: dict[str, list[float]]
    retained: int
    peak: int
    rss_growth: int


def measure_load(url: str, plan: Plan) -> Loaded:
    """RSS growth on the first load, then timed loads, then one under tracemalloc (untimed)."""
    gc.collect()
    rss_before = _rss()
    routing, _, _ = load(url)  # also warms SQLAlchemy's statement caches
    gc.collect()
    rss_growth = _rss() - rss_before
    assert len(routing) == TARGETS
    assert sum(len(r.spec.routes) for r in routing.values()) == ROUTES
    del routing
    samples: dict[str, list[float]] = {"p4.load": [], "p4.load_read": [], "p4.load_compile": []}
    for _ in range(max(1, round(plan.rounds / 7))):
        gc.collect()
        routing, read, compiled = load(url)
        samples["p4.load"].append(read + compiled)
        samples["p4.load_read"].append(read)
        samples["p4.load_compile"].append(compiled)
        del routing
    gc.collect()
    tracemalloc.start()
    routing, _, _ = load(url)
    gc.collect()
    retained, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return Loaded(routing, samples, retained, peak, rss_growth)


def measure_first_use(url: str, names: list[str], plan: Plan, rng: random.Random) -> list[float]:
    """The runtime's lazy path, per target: ``get_target`` + ``Router`` on first use."""
    count = plan.batch(300)
    registry = Registry(url)
    registry.ensure_schema()
    samples: list[float] = []
    try:
        for round_ in range(plan.warmup + plan.rounds):
            picked = rng.sample(names, count)
            gc.collect()
            start = time.perf_counter()
            for name in picked:
                Router(registry.get_target(name))
            if round_ >= plan.warmup:
                samples.append((time.perf_counter() - start) / count)
    finally:
        registry.close()
    return samples


def measure_lookups(
    routing: dict[str, Router], pairs: list[tuple[str, dict[str, str]]], m: int, plan: Plan
) -> tuple[dict[str, list[float]], list[int], list[int]]:
    """Per round: median and p99 of the lookups and of the clock; and every call, sorted."""
    calls: list[int] = []
    overheads: list[int] = []
    rounds: dict[str, list[float]] = {
        k: [] for k in ("p4.timer", "p4.timer_p99", "p4.median", "p4.p99")
    }
    out = [0] * m
    for round_ in range(plan.warmup + plan.rounds):
        start = (round_ * m) % (LOOKUPS - m + 1)
        window = pairs[start : start + m]
        order = ("timer", "lookups") if round_ % 2 == 0 else ("lookups", "timer")
        for what in order:
            gc.collect()
            if what == "timer":
                time_nothing(window, out)
            else:
                time_lookups(routing, window, out)
            if round_ < plan.warmup:
                continue
            ordered = sorted(out)
            (overheads if what == "timer" else calls).extend(ordered)
            keys = ("p4.timer", "p4.timer_p99") if what == "timer" else ("p4.median", "p4.p99")
            rounds[keys[0]].append(percentile(ordered, 0.5) / 1e9)
            rounds[keys[1]].append(percentile(ordered, 0.99) / 1e9)
    calls.sort()
    overheads.sort()
    return rounds, calls, overheads


def run(world: World, plan: Plan, report: Report) -> None:
    rng = random.Random(4)  # noqa: S311 - test data, not secrets
    began = time.perf_counter()
    url, layouts = build(world.root / "p4" / "registry.db", rng)
    built = time.perf_counter() - began
    loaded = measure_load(url, plan)
    firsts = measure_first_use(url, [layout.name for layout in layouts], plan, rng)
    pairs = lookups(rng, layouts)
    hit = Counter(kind_of(loaded.routing[name].resolve(context)) for name, context in pairs)
    m = plan.batch(50_000)
    rounds, calls, overheads = measure_lookups(loaded.routing, pairs, m, plan)

    mix = ", ".join(f"{kind} {count / len(pairs):.1%}" for kind, count in hit.most_common())
    pinned = sum(len(layout.customers) for layout in layouts)
    report.notes["P4"] = (
        f"registry: {TARGETS:,} targets, {ROUTES:,} routes ({pinned:,} customer values pinned, "
        f"{sum(layout.everyone for layout in layouts):,} splits on everyone), built and written "
        f"in {built:.1f} s. Snapshot memory: {loaded.retained / 2**20:.1f} MiB retained after "
        f"the load (tracemalloc; peak {loaded.peak / 2**20:.1f} MiB during it); RSS grew by "
        f"{loaded.rss_growth / 2**20:.1f} MiB on the first load. Lookups hit: {mix}. All "
        f"{len(calls):,} timed calls pooled: median {fmt_time(percentile(calls, 0.5) / 1e9)}, "
        f"p99 {fmt_time(percentile(calls, 0.99) / 1e9)}, "
        f"p99.9 {fmt_time(percentile(calls, 0.999) / 1e9)}, max {fmt_time(calls[-1] / 1e9)}; "
        f"timer overhead (not subtracted): median {percentile(overheads, 0.5)} ns, "
        f"p99 {percentile(overheads, 0.99)} ns."
    )
    what = (
        "time.perf_counter_ns() around routing.get(name) + router.resolve(context), one call "
        f"each, {m:,} calls a round over random targets; GC on"
    )
    timer = "two time.perf_counter_ns() reads around nothing, in the same loop"
    how = f"Registry.list_targets() on a new handle + Router(spec) per target ({TARGETS:,})"
    resolve = "resolve from the snapshot"
    snapshot = f"the snapshot ({TARGETS:,} targets, {ROUTES:,} routes)"
    entries = [
        ("p4.timer", "timer overhead per call (median of a round)", "floor", m, timer),
        ("p4.median", f"{resolve}: median of a round", "candidate", m, what),
        ("p4.timer_p99", "timer overhead per call (p99 of a round)", "floor", m, timer),
        ("p4.p99", f"{resolve}: p99 of a round", "candidate", m, what),
        ("p4.load", f"load {snapshot}", "info", 1, how),
        ("p4.load_read", "load: list_targets (ORM read, routes parsed)", "info", 1, how),
        ("p4.load_compile", "load: Router(spec) per target", "info", 1, how),
        (
            "p4.first_use",
            "first use of one target: get_target + Router (lazy path)",
            "info",
            plan.batch(300),
            "Registry.get_target (Core SELECT, routes parsed) + Router(spec)",
        ),
    ]
    samples = {**rounds, **loaded.samples, "p4.first_use": firsts}
    report.record("P4", samples, describe(entries))
    report.compare("P4", "p4.median", "p4.timer", MEDIAN_GOAL, kind="absolute")
    report.compare("P4", "p4.p99", "p4.timer_p99", P99_GOAL, kind="absolute")
