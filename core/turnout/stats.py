"""Release counts, error rates and durations per version, plugin, target, customer or plan.

The rows come from :meth:`turnout.releases.Ledger.outcomes` (streamed tuples: the group's
values, status, attempts, seconds); grouping and percentiles happen here, the same way on every
database. The error rate is failed releases
over ended ones (succeeded, reconciled, failed, timed out); releases still running and those
left ``unknown`` are counted apart and are not in the rate. Durations (claim to outcome) are
those of the releases that ran to an outcome: succeeded, failed or timed out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from turnout.releases import DIMENSIONS, FAILURES, RAN, TERMINAL, Status

__all__ = ["DIMENSIONS", "GroupStats", "dimensions", "percentile", "summarize"]

_SUCCEEDED = frozenset(status.value for status in TERMINAL - FAILURES)
_FAILED = frozenset(status.value for status in FAILURES)
_TIMED = frozenset(status.value for status in RAN)


@dataclass(slots=True)
class GroupStats:
    """The releases of one group: counts, error rate, duration percentiles, mean attempts."""

    group: dict[str, str | None]
    releases: int = 0
    succeeded: int = 0
    failed: int = 0
    unknown: int = 0
    running: int = 0
    attempts: int = 0
    durations: list[float] = field(default_factory=list, repr=False)

    @property
    def error_rate(self) -> float | None:
        """Failed over ended releases; ``None`` when none ended."""
        ended = self.succeeded + self.failed
        return self.failed / ended if ended else None

    @property
    def mean_attempts(self) -> float | None:
        return self.attempts / self.releases if self.releases else None

    def percentile(self, q: float) -> float | None:
        """The ``q``-th percentile (0-100) of the durations, linearly interpolated."""
        return percentile(sorted(self.durations), q)

    def add(self, status: str, attempts: int, seconds: float | None) -> None:
        self.releases += 1
        self.attempts += attempts
        if status in _SUCCEEDED:
            self.succeeded += 1
        elif status in _FAILED:
            self.failed += 1
        elif status == Status.UNKNOWN.value:
            self.unknown += 1
        else:
            self.running += 1
        if seconds is not None and status in _TIMED:
            self.durations.append(float(seconds))

    def to_dict(self) -> dict[str, Any]:
        ordered = sorted(self.durations)
        return {
            **self.group,
            "releases": self.releases,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "unknown": self.unknown,
            "running": self.running,
            "error_rate": self.error_rate,
            "p50": percentile(ordered, 50),
            "p95": percentile(ordered, 95),
            "p99": percentile(ordered, 99),
            "mean_attempts": self.mean_attempts,
        }


def percentile(ordered: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile of sorted values, interpolated between closest ranks."""
    if not ordered:
        return None
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def dimensions(values: Sequence[str]) -> list[str]:
    """``--by`` values (each may list several, comma-separated) as dimensions; default
    ``version``.

    Raises:
        ValueError: A dimension is not one of :data:`DIMENSIONS`.
    """
    by = [name.strip() for value in values or ("version",) for name in value.split(",")]
    check_dimensions(by)
    return list(dict.fromkeys(by))  # "--by version --by version" groups by version once


def check_dimensions(by: Sequence[str]) -> None:
    """Raise ``ValueError`` naming any dimension that is not one of :data:`DIMENSIONS`."""
    unknown = [name for name in by if name not in DIMENSIONS]
    if unknown:
        raise ValueError(f"cannot group by {', '.join(unknown)}; use {', '.join(DIMENSIONS)}")


def summarize(
    rows: Iterable[Sequence[Any]], by: Sequence[str]
) -> tuple[list[GroupStats], GroupStats]:
    """Group rows of :meth:`~turnout.releases.Ledger.outcomes` by their ``by`` values.

    Returns:
        One :class:`GroupStats` per group, the highest error rate first (then the most
        releases), and the totals over all rows.

    Raises:
        ValueError: A dimension is not one of :data:`DIMENSIONS`.
    """
    check_dimensions(by)
    width = len(by)
    groups: dict[tuple[Any, ...], GroupStats] = {}
    total = GroupStats({})
    for row in rows:
        values = tuple(row[:width])
        stats = groups.get(values)
        if stats is None:
            stats = groups[values] = GroupStats(dict(zip(by, values, strict=True)))
        status, attempts, seconds = row[width:]
        stats.add(status, attempts, seconds)
        total.add(status, attempts, seconds)
    ranked = sorted(
        groups.values(),
        key=lambda g: (-(g.error_rate or 0.0), -g.releases, [v or "" for v in g.group.values()]),
    )
    return ranked, total
