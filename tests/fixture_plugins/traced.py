"""A releaser that makes its own OpenTelemetry span and prints hostile output, both by config.

Config:
    spans: a file to which each span the plugin ends is appended as one JSON line (name,
        trace_id, span_id, parent_span_id, as 32/16 hex digits; parent_span_id null for a
        root). The plugin sets up its own SDK TracerProvider (never the global one) and makes
        one span, ``plugin.upload``, under whatever trace context is current during the call.
    say: text the plugin writes to its stdout, encoded as UTF-8, before answering.
    say_bytes: the same as a latin-1 string, written byte for byte (for invalid UTF-8).
"""

import json
import os

import pluggy

hookimpl = pluggy.HookimplMarker("turnout")


def _spans_to(path):
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        SimpleSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    class JsonLines(SpanExporter):
        def export(self, spans):
            with open(path, "a", encoding="utf-8") as out:
                for span in spans:
                    parent = None if span.parent is None else span.parent.span_id
                    line = {
                        "name": span.name,
                        "trace_id": format(span.context.trace_id, "032x"),
                        "span_id": format(span.context.span_id, "016x"),
                        "parent_span_id": None if parent is None else format(parent, "016x"),
                    }
                    out.write(json.dumps(line) + "\n")
            return SpanExportResult.SUCCESS

        def shutdown(self):
            pass

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(JsonLines()))
    return provider


def _write(data):
    view = memoryview(data)
    while view:
        view = view[os.write(1, view) :]


@hookimpl
def turnout_release(artifact, config):
    if "say" in config:
        _write(config["say"].encode("utf-8"))
    if "say_bytes" in config:
        _write(config["say_bytes"].encode("latin-1"))
    if "spans" in config:
        provider = _spans_to(config["spans"])
        try:
            with provider.get_tracer("turnout-traced").start_as_current_span("plugin.upload"):
                pass
        finally:
            provider.shutdown()
    return {"artifact": artifact}
