"""OpenTelemetry for releases: one span per release, one child span per attempt, two metrics.

The core depends on ``opentelemetry-api`` only and configures nothing: spans and metrics go to
whatever providers the process set up (none: they cost next to nothing and go nowhere). The
``turnout[otel]`` extra adds the SDK and the OTLP exporter, and :func:`configure` (which the CLI
calls) sets them up from the standard ``OTEL_*`` environment variables.

Span attributes carry the customer, plan and project of a release; metric attributes never do
(a customer per time series would not scale): metrics are labelled by target, plugin id,
plugin version and outcome only.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.trace import Span, SpanKind, StatusCode, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from turnout import __version__
from turnout._serve import qualified_name
from turnout.errors import ConfigurationError
from turnout.releases import Status

if TYPE_CHECKING:
    from turnout.errors import TurnoutError
    from turnout.releases import ReleaseRecord

log = logging.getLogger("turnout.telemetry")

SCOPE = "turnout"
RELEASE_SPAN = "turnout.release"
ATTEMPT_SPAN = "turnout.attempt"
RELEASES_METRIC = "turnout.releases"
DURATION_METRIC = "turnout.release.duration"

# Span attribute names.
TARGET = "turnout.target"
PLUGIN_ID = "turnout.plugin.id"
PLUGIN_VERSION = "turnout.plugin.version"
KEY = "turnout.idempotency_key"
REVISION = "turnout.routing.revision"
RELEASE_ID = "turnout.release.id"
ATTEMPT = "turnout.attempt"
OUTCOME = "turnout.outcome"
ERROR_TYPE = "error.type"
CONTEXT_ATTRIBUTES = ("customer", "plan", "project", "channel")
"""Context attributes a release span carries, as ``turnout.<name>``."""

_PROPAGATOR = TraceContextTextMapPropagator()


class Telemetry:
    """The tracer and the two instruments one :class:`~turnout.runtime.Turnout` reports to.

    Args:
        tracer_provider: Where spans go; default the global provider.
        meter_provider: Where metrics go; default the global provider.
    """

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        self.tracer = trace.get_tracer(SCOPE, __version__, tracer_provider)
        meter = metrics.get_meter(SCOPE, __version__, meter_provider)
        self.releases = meter.create_counter(
            RELEASES_METRIC,
            unit="{release}",
            description="Releases this process ran, by target, plugin, version and outcome.",
        )
        self.duration = meter.create_histogram(
            DURATION_METRIC,
            unit="s",
            description="Seconds from claim to outcome of the releases that ran.",
        )

    def release_span(self, target: str, key: str, context: Mapping[str, str]) -> Current:
        """The ``turnout.release`` span, current while inside (it ends on the way out)."""
        attributes: dict[str, Any] = {TARGET: target, KEY: key}
        for name in CONTEXT_ATTRIBUTES:
            if name in context:
                attributes[f"turnout.{name}"] = context[name]
        return self._start(RELEASE_SPAN, attributes)

    def attempt_span(self, number: int) -> Current:
        """A ``turnout.attempt`` span, child of the current release span (which names the
        plugin version: each attribute costs every release a few microseconds)."""
        return self._start(ATTEMPT_SPAN, {ATTEMPT: number})

    def _start(self, name: str, attributes: dict[str, Any]) -> Current:
        # The parent context is read once and handed on: left to itself, the SDK reads the
        # current context again for the parent, the sampler and the trace state.
        parent = otel_context.get_current()
        span = self.tracer.start_span(
            name,
            context=parent,
            kind=SpanKind.INTERNAL,
            attributes=attributes,
            record_exception=False,  # messages may hold secrets; see fail()
            set_status_on_exception=False,
        )
        return Current(span, set_span_in_context(span, parent))

    @staticmethod
    def observe(span: Span, record: ReleaseRecord | None, error: TurnoutError | None) -> None:
        """Put what the record says on the release span, in one call: the version, the
        routing revision, the outcome and, when it failed, why. (A reused key's span names
        the release that answered it; a refused release's, the version it was routed to.)"""
        if not span.is_recording():
            return
        if record is not None:
            attributes: dict[str, Any] = {
                **plugin_attributes(record.plugin_ref),
                RELEASE_ID: record.id,
                OUTCOME: "reused" if record.reused else record.status.value,
            }
            if record.decision is not None:
                attributes[REVISION] = record.decision["revision"]
            span.set_attributes(attributes)
            if record.status in (Status.SUCCEEDED, Status.RECONCILED):
                return
            status = record.status.value
            fail(span, record.error_type or status, record.error or status)
        elif error is not None:
            refused = {OUTCOME: "refused"}
            if isinstance(error, ConfigurationError) and error.plugin_ref:
                refused |= plugin_attributes(error.plugin_ref)
            span.set_attributes(refused)
            fail(span, qualified_name(type(error)), str(error))

    def count(self, record: ReleaseRecord) -> None:
        """Record a release this process ran in the metrics (never labelled by customer)."""
        labels = _labels(record.target, record.plugin_ref, record.status.value)
        self.releases.add(1, labels)
        duration = record.duration
        if duration is not None:
            self.duration.record(duration, labels)

    def count_refused(self, target: str, plugin_ref: str) -> None:
        """Count a release refused for a configuration error (outcome ``refused``), labelled
        by the version the routing had chosen; empty labels when it had none (an unknown
        target)."""
        self.releases.add(1, _labels(target, plugin_ref, "refused"))


def plugin_attributes(plugin_ref: str) -> dict[str, Any]:
    """``turnout.plugin.id`` and ``turnout.plugin.version`` of ``plugin_ref`` (empty: ``""``)."""
    plugin_id, _, version = plugin_ref.rpartition("@")
    return {PLUGIN_ID: plugin_id, PLUGIN_VERSION: version}


def _labels(target: str, plugin_ref: str, outcome: str) -> dict[str, Any]:
    return {TARGET: target, **plugin_attributes(plugin_ref), OUTCOME: outcome}


class Current:
    """Make a started span current while inside and end it on the way out, whatever happens
    (never recording the exception: see :func:`fail`).

    What ``start_as_current_span`` does, without its two generator-based context managers,
    which cost more per release than the span's own bookkeeping in the SDK.
    """

    __slots__ = ("_token", "context", "span")

    def __init__(self, span: Span, context: otel_context.Context) -> None:
        self.span = span
        self.context = context

    def __enter__(self) -> Span:
        self._token = otel_context.attach(self.context)
        return self.span

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        otel_context.detach(self._token)
        self.span.end()


def fail(span: Span, error_type: str, message: str) -> None:
    """Mark ``span`` failed with an already redacted message (never the raw exception)."""
    if not span.is_recording():
        return
    span.set_attribute(ERROR_TYPE, error_type)
    span.set_status(StatusCode.ERROR, message[:1000])
    span.add_event("exception", {"exception.type": error_type, "exception.message": message})


def carrier() -> dict[str, str]:
    """The current trace context as W3C ``traceparent``/``tracestate`` headers (may be empty)."""
    headers: dict[str, str] = {}
    _PROPAGATOR.inject(headers)
    return headers


# Configuration from OTEL_* (the CLI's; a library user sets up their own providers) ---------


def configure(environ: Mapping[str, str] = os.environ) -> Callable[[], None] | None:
    """Set up the SDK's global providers from the standard ``OTEL_*`` variables, if asked.

    Asked means ``OTEL_TRACES_EXPORTER`` or ``OTEL_METRICS_EXPORTER`` is set (``otlp``,
    ``console`` or ``none``), or ``OTEL_EXPORTER_OTLP_ENDPOINT`` is (then both use ``otlp``).
    ``OTEL_SDK_DISABLED=true`` turns it off. The OTLP exporter (HTTP/protobuf) reads its own
    ``OTEL_EXPORTER_OTLP_*`` settings; ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES``
    name the resource.

    Returns:
        A function that flushes and shuts the providers down (call it before exiting), or
        ``None`` when nothing was set up.

    Raises:
        RuntimeError: Telemetry was asked for but the SDK is not installed (the message says
            ``pip install 'turnout[otel]'``), or an exporter name is unknown.
    """
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    default = "otlp" if environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") else None
    traces = _exporter_name(environ, "OTEL_TRACES_EXPORTER", default)
    metric = _exporter_name(environ, "OTEL_METRICS_EXPORTER", default)
    if traces is None and metric is None:
        return None
    try:
        from opentelemetry.sdk.resources import Resource
    except ImportError:
        raise RuntimeError(
            "OTEL_* asks for telemetry but the OpenTelemetry SDK is not installed; "
            "run: pip install 'turnout[otel]'"
        ) from None
    resource = Resource.create({"service.name": environ.get("OTEL_SERVICE_NAME", "turnout")})
    closers: list[Callable[[], Any]] = []
    if traces is not None:
        closers.append(_tracing(traces, resource))
    if metric is not None:
        closers.append(_metering(metric, resource))

    def shutdown() -> None:
        for close in closers:
            try:
                close()
            except Exception:  # an unreachable collector must not fail the command
                log.warning("telemetry export failed at exit", exc_info=True)

    return shutdown


def _exporter_name(environ: Mapping[str, str], variable: str, default: str | None) -> str | None:
    name = environ.get(variable, default or "").strip().lower() or None
    if name in (None, "none"):
        return None
    if name not in ("otlp", "console"):
        raise RuntimeError(f"{variable}={name!r} is not supported; use otlp, console or none")
    return name


def _tracing(exporter: str, resource: Any) -> Callable[[], Any]:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SpanExporter,
    )

    provider = TracerProvider(resource=resource)
    chosen: SpanExporter
    if exporter == "console":
        chosen = ConsoleSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        chosen = OTLPSpanExporter()
    provider.add_span_processor(BatchSpanProcessor(chosen))
    trace.set_tracer_provider(provider)
    return provider.shutdown


def _metering(exporter: str, resource: Any) -> Callable[[], Any]:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import (
        ConsoleMetricExporter,
        MetricExporter,
        PeriodicExportingMetricReader,
    )

    chosen: MetricExporter
    if exporter == "console":
        chosen = ConsoleMetricExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

        chosen = OTLPMetricExporter()
    provider = MeterProvider(
        resource=resource, metric_readers=[PeriodicExportingMetricReader(chosen)]
    )
    metrics.set_meter_provider(provider)
    return provider.shutdown
