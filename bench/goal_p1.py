"""P1: what recording and telemetry add to a release: at most 10% over a release without them.

One handle on one registry with an inline no-op target releases in three ways, alternating in
the same rounds with the floor of two single-row Core commits (``naive.py``); each variant
installs its own :class:`turnout.telemetry.Telemetry` on the handle before its batch, so the
variants differ in nothing else (registries of their own differed by more than the goal):

- bare: OpenTelemetry's ``NoOpTracerProvider`` and ``NoOpMeterProvider``, and no attempt log:
  ``_Attempts._note`` is replaced, around this variant's batches only, by a function that
  records nothing (the release still reads the clocks an entry would use, and stores an empty
  log);
- observed: the SDK, as a deployment that exports would run it: a ``TracerProvider`` with a
  ``BatchSpanProcessor`` over an exporter that drops every batch, and a ``MeterProvider`` with
  an ``InMemoryMetricReader``; the real attempt log;
- api-only: the default, global providers with no SDK configured (the API's no-op, behind its
  proxy), and the real attempt log: what a library user who set up nothing pays.

The goal is observed against bare (≤ 1.10); observed against two Core commits is P1 itself
(≤ 1.5), here with telemetry on. P10 reports P1 on the default providers too.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from harness import Plan, Report, alternate, describe, timed_batch
from naive import NaiveLedger
from opentelemetry import metrics, trace
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import NoOpTracerProvider
from world import ARTIFACT, NOOP_REF, World

from turnout import Turnout
from turnout.runtime import _Attempts
from turnout.telemetry import Telemetry

TARGET = "noop-inline"
NOTHING: dict[str, Any] = {"error_type": "", "error": ""}


class DropSpans(SpanExporter):
    """An exporter that accepts every batch and keeps nothing."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def _note_nothing(
    self: _Attempts, number: int, started: object, clock: float, exc: BaseException | None
) -> dict[str, Any]:
    return NOTHING


def run(world: World, plan: Plan, report: Report) -> None:
    # "api-only" means nothing configured: no global provider was set in this process.
    assert not isinstance(trace.get_tracer_provider(), TracerProvider)
    assert not isinstance(metrics.get_meter_provider(), MeterProvider)
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(DropSpans()))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    telemetry = {
        "bare": Telemetry(NoOpTracerProvider(), NoOpMeterProvider()),
        "observed": Telemetry(tracer_provider, meter_provider),
        "api": Telemetry(),
    }
    handle = Turnout(str(world.new_db()), home=world.home)
    handle.set_target(TARGET, NOOP_REF, isolation="inline", actor="bench", reason="benchmark")
    ledger = NaiveLedger(world.root / "p1-naive.db")
    keys = itertools.count()

    def release(variant: str) -> None:
        handle.release(TARGET, ARTIFACT, key=f"p1-{variant}-{next(keys)}")

    def batch(variant: str) -> float:
        handle.telemetry = telemetry[variant]
        return timed_batch(partial(release, variant), n)

    def commits() -> None:
        ledger.two_commits(f"p1-commits-{next(keys)}")

    def without_attempt_log(sample: Callable[[], float]) -> float:
        note = _Attempts._note
        _Attempts._note = _note_nothing  # type: ignore[method-assign]
        try:
            return sample()
        finally:
            _Attempts._note = note  # type: ignore[method-assign]

    n = plan.batch(150)
    try:
        samples = alternate(
            {
                "p1.commits": partial(timed_batch, commits, n),
                "p1.bare": partial(without_attempt_log, partial(batch, "bare")),
                "p1.observed": partial(batch, "observed"),
                "p1.api": partial(batch, "api"),
            },
            plan,
        )
        # Every variant did release (the bare one with an empty attempt log, the others not).
        recorded = handle.ledger.recent(target=TARGET, limit=None)
        for variant in telemetry:
            last = next(r for r in recorded if r.idempotency_key.startswith(f"p1-{variant}-"))
            assert last.status.value == "succeeded"
            assert len(last.attempt_log or ()) == (0 if variant == "bare" else 1), variant
    finally:
        ledger.close()
        handle.close()
        tracer_provider.shutdown()
        meter_provider.shutdown()
    what = "Turnout.release, inline no-op target, one registry for the three; "
    report.record(
        "P1",
        samples,
        describe(
            [
                (
                    "p1.commits",
                    "two single-row Core commits",
                    "floor",
                    n,
                    "INSERT commit + UPDATE commit, SQLAlchemy Core, WAL, synchronous NORMAL",
                ),
                (
                    "p1.bare",
                    "release, no telemetry, no attempt log",
                    "floor",
                    n,
                    what + "NoOpTracerProvider, NoOpMeterProvider, _Attempts._note records nothing",
                ),
                (
                    "p1.observed",
                    "release, SDK telemetry + attempt log",
                    "candidate",
                    n,
                    what + "SDK TracerProvider + BatchSpanProcessor (dropping exporter), "
                    "SDK MeterProvider + InMemoryMetricReader, attempt log",
                ),
                (
                    "p1.api",
                    "release, API no-op telemetry + attempt log",
                    "info",
                    n,
                    what + "default (global, unconfigured) providers, attempt log",
                ),
            ]
        ),
    )
    report.compare("P1", "p1.observed", "p1.bare", 1.10, label="recording + telemetry vs none")
    report.compare("P1", "p1.observed", "p1.commits", 1.5, label="two Core commits (P1)")
    report.compare(
        "P1", "p1.api", "p1.bare", 1.10, label="attempt log, API no-op vs none", advisory=True
    )
    report.compare("P1", "p1.api", "p1.commits", 1.5, label="two Core commits (P1)", advisory=True)
