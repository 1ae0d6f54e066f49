"""Timing, statistics and the report: alternating samples, medians with min-max, ratios.

A *variant* is a callable that takes one sample and returns the seconds one operation took
(it batches and averages, and keeps its own setup and teardown out of the clock). Variants that
are compared run in the same rounds, alternating, after a warm-up; each round reverses the order
of the one before, so that neither side always runs first.
"""

from __future__ import annotations

import gc
import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

Variant = Callable[[], float]


@dataclass(frozen=True)
class Plan:
    """How much to measure: rounds after warm-up, and a scale for batch sizes."""

    rounds: int
    warmup: int
    scale: float

    def batch(self, default: int) -> int:
        """A batch size: ``default`` operations per sample at full scale, at least 1."""
        return max(1, round(default * self.scale))


QUICK = Plan(rounds=5, warmup=1, scale=0.3)
FULL = Plan(rounds=21, warmup=2, scale=1.0)


def timed_batch(operation: Callable[[], object], count: int) -> float:
    """Run ``operation`` ``count`` times; return the mean seconds per call."""
    clock = time.perf_counter
    start = clock()
    for _ in range(count):
        operation()
    return (clock() - start) / count


def alternate(variants: dict[str, Variant], plan: Plan) -> dict[str, list[float]]:
    """Warm every variant up, then take ``plan.rounds`` samples of each, alternating."""
    names = list(variants)
    for _ in range(plan.warmup):
        for name in names:
            variants[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(plan.rounds):
        order = names if round_ % 2 == 0 else names[::-1]
        for name in order:
            gc.collect()
            samples[name].append(variants[name]())
    return samples


@dataclass
class Measurement:
    """One measured thing: seconds per operation, one entry per sample."""

    goal: str
    key: str
    name: str
    role: str  # "floor" | "candidate" | "info"
    samples: list[float]
    per_sample: int
    includes: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def low(self) -> float:
        return min(self.samples)

    @property
    def high(self) -> float:
        return max(self.samples)


@dataclass
class Comparison:
    """A goal: candidate / floor (ratio of medians), or an absolute bound on the candidate.

    ``paired_*`` are the ratios of the samples taken side by side in each round: a check on the
    ratio of medians when the machine's load drifts during a run.
    """

    goal: str
    candidate: str
    floor: str
    limit: float
    kind: str = "ratio"  # "ratio": ratio <= limit; "absolute": candidate median <= limit s
    label: str = ""
    ratio: float = 0.0
    paired_median: float = 0.0
    paired_low: float = 0.0
    paired_high: float = 0.0
    passed: bool | None = None
    note: str = ""


@dataclass
class Report:
    """Everything measured in one run, in the order it was measured."""

    measurements: dict[str, Measurement] = field(default_factory=dict)
    comparisons: list[Comparison] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)

    def add(self, measurement: Measurement) -> None:
        self.measurements[measurement.key] = measurement

    def record(
        self,
        goal: str,
        samples: dict[str, list[float]],
        described: dict[str, tuple[str, str, int, str]],
    ) -> None:
        """Add the samples of one alternation; ``described`` maps key to name, role, batch, what."""
        for key, values in samples.items():
            name, role, per_sample, includes = described[key]
            self.add(Measurement(goal, key, name, role, values, per_sample, includes))

    def compare(
        self,
        goal: str,
        candidate: str,
        floor: str,
        limit: float,
        *,
        kind: str = "ratio",
        label: str = "",
        advisory: bool = False,
    ) -> Comparison:
        """Judge ``candidate`` against ``floor``; ``advisory`` ones are shown but not judged."""
        cand, base = self.measurements[candidate], self.measurements[floor]
        paired = [c / f for c, f in zip(cand.samples, base.samples, strict=False) if f > 0]
        comparison = Comparison(goal, candidate, floor, limit, kind, label)
        comparison.ratio = cand.median / base.median
        comparison.paired_median = statistics.median(paired)
        comparison.paired_low = min(paired)
        comparison.paired_high = max(paired)
        if not advisory:
            value = comparison.ratio if kind == "ratio" else cand.median
            comparison.passed = value <= limit
        self.comparisons.append(comparison)
        return comparison

    # Output ------------------------------------------------------------------------------

    def rows(self) -> list[dict[str, str]]:
        """The table: every measurement, and one line per comparison made on it."""
        by_candidate: dict[str, list[Comparison]] = {}
        for comparison in self.comparisons:
            by_candidate.setdefault(comparison.candidate, []).append(comparison)
        rows = []
        for m in self.measurements.values():
            base = {
                "group": m.goal,
                "id": m.goal,
                "measurement": m.name if m.role != "floor" else f"{m.name} [floor]",
                "median": fmt_time(m.median),
                "min-max": f"{fmt_time(m.low)} - {fmt_time(m.high)}",
            }
            comparisons = by_candidate.get(m.key, [])
            if not comparisons:
                rows.append({**base, "ratio": "", "vs": "", "goal": "", "result": ""})
            for c in comparisons:
                vs = self.measurements[c.floor]
                goal = f"<= {c.limit:g}x" if c.kind == "ratio" else f"<= {fmt_time(c.limit)}"
                result = "info" if c.passed is None else ("PASS" if c.passed else "FAIL")
                rows.append(
                    {
                        **base,
                        "id": c.goal,
                        "ratio": f"{c.ratio:.3f}x",
                        "vs": c.label or vs.name,
                        "goal": goal,
                        "result": result,
                    }
                )
        return rows

    def table(self) -> str:
        rows = self.rows()
        columns = ["id", "measurement", "median", "min-max", "ratio", "goal", "result", "vs"]
        widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in columns}
        lines = [
            "  ".join(c.ljust(widths[c]) for c in columns).rstrip(),
            "  ".join("-" * widths[c] for c in columns),
        ]
        previous = None
        for row in rows:
            if previous is not None and row["group"] != previous:
                lines.append("")
            previous = row["group"]
            lines.append("  ".join(row[c].ljust(widths[c]) for c in columns).rstrip())
        return "\n".join(lines)

    def markdown(self) -> str:
        """The table as Markdown (for docs/performance.md)."""
        columns = ["id", "measurement", "median", "min-max", "ratio", "goal", "result", "vs"]
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        for row in self.rows():
            cells = [row[c].replace("|", "\\|") for c in columns]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def to_json(self, meta: dict[str, Any]) -> dict[str, Any]:
        return {
            **meta,
            "notes": self.notes,
            "measurements": [
                {
                    **{k: v for k, v in asdict(m).items() if k != "samples"},
                    "unit": "s",
                    "median": m.median,
                    "min": m.low,
                    "max": m.high,
                    "samples": m.samples,
                }
                for m in self.measurements.values()
            ],
            "goals": [asdict(c) for c in self.comparisons],
            "table": self.rows(),
        }

    def write_json(self, path: Path, meta: dict[str, Any]) -> None:
        """The JSON report at ``path``, and the Markdown table beside it (``.md``)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(meta), indent=2) + "\n")
        path.with_suffix(".md").write_text(self.markdown() + "\n")


def fmt_time(seconds: float) -> str:
    """``12.3 µs``, ``1.23 ms``, ``1.23 s``: three significant figures."""
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale or unit == "µs":
            value = seconds / scale
            digits = 2 if value < 10 else 1 if value < 100 else 0
            return f"{value:.{digits}f} {unit}"
    raise AssertionError  # pragma: no cover


def describe(
    entries: Sequence[tuple[str, str, str, int, str]],
) -> dict[str, tuple[str, str, int, str]]:
    """``[(key, name, role, batch, includes)]`` as the mapping :meth:`Report.record` takes."""
    return {key: (name, role, batch, includes) for key, name, role, batch, includes in entries}
