"""Telemetry of releases: spans, metrics, trace context into workers, OTLP from the CLI, logs.

Spans and metrics go to the SDK's in-memory exporters, handed to ``Turnout`` as its providers;
the global providers of the pytest process are never set. The CLI cases run the real ``turnout``
script in its own process, exporting OTLP to a small HTTP server in the test.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from turnout import ReleaseFailedError, Status, Turnout, UnknownTargetError
from turnout.errors import SecretNotFoundError

pytestmark = pytest.mark.usefixtures("plugin_site")

CONTEXT = {"customer": "acme", "plan": "enterprise", "project": "shop"}
METRIC_LABELS = {
    "turnout.target",
    "turnout.plugin.id",
    "turnout.plugin.version",
    "turnout.outcome",
}


@dataclass
class Exported:
    """What one ``Turnout`` handle reported: its finished spans and its metric reader."""

    exporter: InMemorySpanExporter
    reader: InMemoryMetricReader

    def spans(self, name: str | None = None) -> list[Any]:
        """The finished spans (``ReadableSpan``), of one name or all."""
        spans: list[ReadableSpan] = list(self.exporter.get_finished_spans())
        return [s for s in spans if name is None or s.name == name]

    def points(self, metric: str | None = None) -> list[tuple[str, Any]]:
        """Every data point of ``metric`` (or of every metric) as (metric name, point)."""
        data = self.reader.get_metrics_data()
        found = []
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for each in scope.metrics:
                    if metric is None or each.name == metric:
                        found += [(each.name, point) for point in each.data.data_points]
        return found


@pytest.fixture
def exported() -> Exported:
    exporter = InMemorySpanExporter()
    reader = InMemoryMetricReader()
    return Exported(exporter, reader)


@pytest.fixture
def tt(db_path: Path, exported: Exported) -> Iterator[Turnout]:
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exported.exporter))
    meter_provider = MeterProvider(metric_readers=[exported.reader])
    with Turnout(
        str(db_path),
        sleep=lambda _seconds: None,
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
    ) as handle:
        yield handle
    tracer_provider.shutdown()
    meter_provider.shutdown()


def echo_target(tt: Turnout, calls: Path, **config: Any) -> int:
    """Target ``site`` on echo 1.0.0, inline; returns its revision."""
    change = tt.set_target(
        "site",
        "echo@1.0.0",
        config={"calls": str(calls), **config},
        isolation="inline",
        reason="test",
    )
    return change.target.revision


def only(items: list[Any]) -> Any:
    assert len(items) == 1, items
    return items[0]


# 1. A release that succeeds -------------------------------------------------------------


def test_succeeded_release_makes_one_release_span_with_one_attempt_child(
    tt: Turnout, exported: Exported, calls_file: Path
) -> None:
    revision = echo_target(tt, calls_file)
    exported.exporter.clear()
    record = tt.release("site", "a.tgz", key="build-1", context=CONTEXT)
    assert record.status is Status.SUCCEEDED
    assert record.decision is not None

    release = only(exported.spans("turnout.release"))
    attempt = only(exported.spans("turnout.attempt"))
    assert len(exported.spans()) == 2
    assert release.parent is None
    assert attempt.parent is not None
    assert attempt.parent.span_id == release.context.span_id
    assert attempt.context.trace_id == release.context.trace_id
    assert release.start_time <= attempt.start_time <= attempt.end_time <= release.end_time

    assert dict(release.attributes) == {
        "turnout.target": "site",
        "turnout.idempotency_key": "build-1",
        "turnout.customer": "acme",
        "turnout.plan": "enterprise",
        "turnout.project": "shop",
        "turnout.plugin.id": "echo",
        "turnout.plugin.version": "1.0.0",
        "turnout.routing.revision": revision,
        "turnout.release.id": record.id,
        "turnout.outcome": "succeeded",
    }
    assert release.status.status_code is StatusCode.UNSET
    assert dict(attempt.attributes) == {"turnout.attempt": 1}
    assert attempt.status.status_code is StatusCode.UNSET
    assert not release.events
    assert not attempt.events

    labels = {
        "turnout.target": "site",
        "turnout.plugin.id": "echo",
        "turnout.plugin.version": "1.0.0",
        "turnout.outcome": "succeeded",
    }
    counted = only(exported.points("turnout.releases"))[1]
    assert counted.value == 1
    assert dict(counted.attributes) == labels
    timed = only(exported.points("turnout.release.duration"))[1]
    assert timed.count == 1
    assert dict(timed.attributes) == labels
    assert timed.sum == pytest.approx(record.duration, abs=1e-3)
    every_key = {key for _, point in exported.points() for key in point.attributes}
    assert every_key == METRIC_LABELS
    assert "turnout.customer" not in every_key


def test_handles_on_one_meter_provider_count_into_one_sum(
    db_path: Path, exported: Exported, calls_file: Path
) -> None:
    # Two handles on one provider (one process serving several registries, say) add into
    # the same instruments: one sum, not one per handle.
    meter_provider = MeterProvider(metric_readers=[exported.reader])
    handles = [
        Turnout(str(db_path), sleep=lambda _seconds: None, meter_provider=meter_provider)
        for _ in range(2)
    ]
    try:
        echo_target(handles[0], calls_file)
        for number, handle in enumerate(handles):
            handle.release("site", "a.tgz", key=f"shared-{number}")
        handles[1].release("site", "a.tgz", key="shared-1")  # reused: not counted
        counted = only(exported.points("turnout.releases"))[1]
        assert counted.value == 2
        assert counted.attributes["turnout.outcome"] == "succeeded"
        assert only(exported.points("turnout.release.duration"))[1].count == 2
        # Collecting again reports the same cumulative sum, not a second one on top.
        assert only(exported.points("turnout.releases"))[1].value == 2
    finally:
        for handle in handles:
            handle.close()
        meter_provider.shutdown()


# 2. A transient failure, then success ---------------------------------------------------


def test_transient_failure_then_success_makes_two_attempt_spans(
    tt: Turnout, exported: Exported, calls_file: Path
) -> None:
    echo_target(tt, calls_file, fail_with="connection", fail_times=1)
    tt.set_target("site", "echo@1.0.0", max_attempts=3, reason="test")
    exported.exporter.clear()
    record = tt.release("site", "a.tgz", key="flaky-1")
    assert record.status is Status.SUCCEEDED
    assert record.attempts == 2

    release = only(exported.spans("turnout.release"))
    first, second = sorted(exported.spans("turnout.attempt"), key=lambda s: s.start_time)
    for attempt in (first, second):
        assert attempt.parent.span_id == release.context.span_id
        assert attempt.context.trace_id == release.context.trace_id
    assert (first.attributes["turnout.attempt"], second.attributes["turnout.attempt"]) == (1, 2)
    assert first.status.status_code is StatusCode.ERROR
    assert first.attributes["error.type"] == "ConnectionError"
    assert "echo failed on attempt 1" in first.status.description
    assert [e.attributes["exception.type"] for e in first.events] == ["ConnectionError"]
    assert second.status.status_code is StatusCode.UNSET
    assert "error.type" not in second.attributes

    assert release.attributes["turnout.outcome"] == "succeeded"
    assert release.status.status_code is StatusCode.UNSET
    assert "error.type" not in release.attributes
    counted = only(exported.points("turnout.releases"))[1]
    assert (counted.value, counted.attributes["turnout.outcome"]) == (1, "succeeded")


# 3. A permanent failure, and a secret that must not reach telemetry ---------------------


def test_permanent_failure_marks_the_span_failed_without_the_secret(
    tt: Turnout, exported: Exported, calls_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    canary = "canary-7f3a9c41e0b2d8"
    monkeypatch.setenv("TURNOUT_TEST_CANARY", canary)
    echo_target(tt, calls_file, fail_with="permanent", token="env:TURNOUT_TEST_CANARY")
    exported.exporter.clear()
    with pytest.raises(ReleaseFailedError) as raised:
        tt.release("site", "a.tgz", key="doomed-1", context=CONTEXT)
    record = raised.value.release
    assert record.status is Status.FAILED
    assert record.error_type == "RuntimeError"

    release = only(exported.spans("turnout.release"))
    attempt = only(exported.spans("turnout.attempt"))
    assert release.status.status_code is StatusCode.ERROR
    assert release.attributes["error.type"] == "RuntimeError"
    assert release.attributes["turnout.outcome"] == "failed"
    assert release.attributes["turnout.release.id"] == record.id
    # The message is there (redacted), so the canary's absence below means something.
    assert "echo failed on attempt 1 with token=" in release.status.description
    assert attempt.status.status_code is StatusCode.ERROR
    assert attempt.attributes["error.type"] == "RuntimeError"
    assert "echo failed on attempt 1 with token=" in attempt.status.description
    for span in (release, attempt):
        assert canary not in span.to_json()
        assert "exception" in {event.name for event in span.events}

    counted = only(exported.points("turnout.releases"))[1]
    assert dict(counted.attributes) == {
        "turnout.target": "site",
        "turnout.plugin.id": "echo",
        "turnout.plugin.version": "1.0.0",
        "turnout.outcome": "failed",
    }
    assert counted.value == 1
    assert canary not in repr(exported.reader.get_metrics_data())


# 4. Reused keys and refused releases ----------------------------------------------------


def test_reused_key_is_traced_as_reused_and_not_counted_again(
    tt: Turnout, exported: Exported, calls_file: Path
) -> None:
    echo_target(tt, calls_file)
    exported.exporter.clear()
    first = tt.release("site", "a.tgz", key="once-1")
    second = tt.release("site", "a.tgz", key="once-1")
    assert second.reused
    assert second.id == first.id

    ran, reused = sorted(exported.spans("turnout.release"), key=lambda s: s.start_time)
    assert ran.attributes["turnout.outcome"] == "succeeded"
    assert reused.attributes["turnout.outcome"] == "reused"
    assert reused.attributes["turnout.release.id"] == first.id  # the record it answered with
    assert reused.attributes["turnout.plugin.id"] == "echo"
    assert reused.status.status_code is StatusCode.UNSET
    assert reused.context.trace_id != ran.context.trace_id
    # Nothing ran the second time: the only attempt span is the first call's.
    attempt = only(exported.spans("turnout.attempt"))
    assert attempt.parent.span_id == ran.context.span_id

    counted = only(exported.points("turnout.releases"))[1]
    assert counted.value == 1
    assert counted.attributes["turnout.outcome"] == "succeeded"
    assert only(exported.points("turnout.release.duration"))[1].count == 1


LABELS = ("turnout.target", "turnout.plugin.id", "turnout.plugin.version")


def test_refused_releases_are_traced_as_refused(
    tt: Turnout, exported: Exported, calls_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TURNOUT_TEST_UNSET", raising=False)
    echo_target(tt, calls_file, token="env:TURNOUT_TEST_UNSET")
    exported.exporter.clear()
    with pytest.raises(UnknownTargetError):
        tt.release("nowhere", "a.tgz", key="lost-1")
    with pytest.raises(SecretNotFoundError):
        tt.release("site", "a.tgz", key="unset-1")

    unknown, unset = sorted(exported.spans("turnout.release"), key=lambda s: s.start_time)
    assert unknown.attributes["turnout.target"] == "nowhere"
    assert unknown.attributes["turnout.outcome"] == "refused"
    assert unknown.attributes["error.type"] == "turnout.errors.UnknownTargetError"
    assert unknown.status.status_code is StatusCode.ERROR
    assert "nowhere" in unknown.status.description
    assert unset.attributes["turnout.target"] == "site"
    assert unset.attributes["turnout.outcome"] == "refused"
    assert unset.attributes["error.type"] == "turnout.errors.SecretNotFoundError"
    assert unset.status.status_code is StatusCode.ERROR
    assert "TURNOUT_TEST_UNSET" in unset.status.description
    assert exported.spans("turnout.attempt") == []
    assert read_lines(calls_file) == []
    # Counted as refused (a setup problem to alert on); nothing ran, so no duration.
    # Labelled by the version the routing had chosen, when it had chosen one.
    counted = {
        tuple(point.attributes[name] for name in LABELS): point.value
        for _, point in exported.points("turnout.releases")
        if point.attributes["turnout.outcome"] == "refused"
    }
    assert counted == {("nowhere", "", ""): 1, ("site", "echo", "1.0.0"): 1}
    assert unset.attributes["turnout.plugin.id"] == "echo"
    assert unset.attributes["turnout.plugin.version"] == "1.0.0"
    assert "turnout.plugin.id" not in unknown.attributes
    assert exported.points("turnout.release.duration") == []


def read_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# 5. The trace context reaches the plugin in its worker process --------------------------


@pytest.mark.slow
def test_trace_context_reaches_the_plugin_in_its_worker_process(
    tt: Turnout, exported: Exported, tmp_path: Path
) -> None:
    spans_file = tmp_path / "plugin-spans.jsonl"
    tt.set_target(
        "traced-site",
        "traced@0.1.0",
        config={"spans": str(spans_file)},
        isolation="process",
        reason="test",
    )
    exported.exporter.clear()
    record = tt.release("traced-site", "a.tgz", key="traced-1")
    assert record.status is Status.SUCCEEDED
    assert record.result == {"artifact": str(Path("a.tgz").absolute())}

    release = only(exported.spans("turnout.release"))
    attempt = only(exported.spans("turnout.attempt"))
    plugin = only(read_lines(spans_file))
    assert plugin["name"] == "plugin.upload"
    assert plugin["trace_id"] == format(release.context.trace_id, "032x")
    assert plugin["parent_span_id"] == format(attempt.context.span_id, "016x")
    # Its own span, from its own provider in the worker: not one of the core's spans.
    assert plugin["span_id"] not in {format(s.context.span_id, "016x") for s in exported.spans()}


# 6. The CLI exports OTLP from OTEL_* ----------------------------------------------------


class Collector:
    """An OTLP/HTTP receiver in a thread: keeps every POST body by path, answers 200."""

    def __init__(self) -> None:
        self.bodies: dict[str, list[bytes]] = {}
        bodies = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                bodies.setdefault(self.path, []).append(body)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def collector() -> Iterator[Collector]:
    server = Collector()
    yield server
    server.close()


def cli_env(db_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a CLI subprocess: this one's, without any OTEL_* of the developer's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    return {**env, "TURNOUT_DATABASE_URL": str(db_path), **extra}


def turnout_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    script = shutil.which("turnout", path=str(Path(sys.executable).parent))
    assert script, "the turnout script is not installed next to this Python"
    return subprocess.run([script, *args], capture_output=True, env=env, check=False, timeout=120)


def attributes_of(resource: Any) -> dict[str, str]:
    return {kv.key: kv.value.string_value for kv in resource.attributes}


@pytest.mark.slow
def test_cli_exports_spans_and_metrics_over_otlp(
    db_path: Path, calls_file: Path, collector: Collector
) -> None:
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
        ExportMetricsServiceRequest,
    )
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    with Turnout(str(db_path)) as setup:
        setup.set_target(
            "site", "echo@1.0.0", config={"calls": str(calls_file)}, isolation="inline"
        )
    env = cli_env(
        db_path,
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_METRICS_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint,
        OTEL_SERVICE_NAME="turnout-e2e",
    )
    result = turnout_cli(
        "release", "site", "a.tgz", "--key", "otlp-1", "--context", "customer=acme", "--json",
        env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    record = json.loads(result.stdout)
    assert record["status"] == "succeeded"

    assert set(collector.bodies) == {"/v1/traces", "/v1/metrics"}
    spans = {}
    for body in collector.bodies["/v1/traces"]:
        for resource in ExportTraceServiceRequest.FromString(body).resource_spans:
            assert attributes_of(resource.resource)["service.name"] == "turnout-e2e"
            for scope in resource.scope_spans:
                assert scope.scope.name == "turnout"
                spans.update({span.name: span for span in scope.spans})
    assert set(spans) == {"turnout.release", "turnout.attempt"}
    release, attempt = spans["turnout.release"], spans["turnout.attempt"]
    assert attempt.trace_id == release.trace_id
    assert attempt.parent_span_id == release.span_id
    release_attributes = {kv.key: kv.value for kv in release.attributes}
    assert release_attributes["turnout.release.id"].string_value == record["id"]
    assert release_attributes["turnout.customer"].string_value == "acme"
    assert release_attributes["turnout.outcome"].string_value == "succeeded"

    metrics = {}
    for body in collector.bodies["/v1/metrics"]:
        for resource in ExportMetricsServiceRequest.FromString(body).resource_metrics:
            assert attributes_of(resource.resource)["service.name"] == "turnout-e2e"
            for scope in resource.scope_metrics:
                metrics.update({metric.name: metric for metric in scope.metrics})
    assert {"turnout.releases", "turnout.release.duration"} <= set(metrics)
    (point,) = metrics["turnout.releases"].sum.data_points
    assert point.as_int == 1
    assert {kv.key: kv.value.string_value for kv in point.attributes} == {
        "turnout.target": "site",
        "turnout.plugin.id": "echo",
        "turnout.plugin.version": "1.0.0",
        "turnout.outcome": "succeeded",
    }


@pytest.mark.slow
def test_cli_refuses_an_unknown_exporter_with_exit_78(db_path: Path, calls_file: Path) -> None:
    with Turnout(str(db_path)) as setup:
        setup.set_target(
            "site", "echo@1.0.0", config={"calls": str(calls_file)}, isolation="inline"
        )
    env = cli_env(db_path, OTEL_TRACES_EXPORTER="bogus")
    result = turnout_cli("release", "site", "a.tgz", "--key", "bogus-1", env=env)
    assert result.returncode == 78
    stderr = result.stderr.decode()
    assert "OTEL_TRACES_EXPORTER='bogus' is not supported" in stderr
    assert "Traceback" not in stderr
    assert read_lines(calls_file) == []  # refused before anything ran


# 7. Logs: JSON lines and text, with hostile plugin output -------------------------------

FORGED = "FORGED-4d1c"
HOSTILE = {
    # A fake JSON log line and a fake text log line, each on a line of its own, an ANSI
    # escape that would turn a terminal red, and bytes that are not UTF-8.
    "say": (
        f'\n{{"level": "error", "logger": "turnout", "message": "{FORGED}"}}\n'
        f"ERROR turnout: {FORGED} [release_id=forged]\n"
        "\x1b[31mred\x1b[0m\n"
    ),
    "say_bytes": "bad \xff\xfe utf-8\n",
}


def traced_target(db_path: Path) -> None:
    with Turnout(str(db_path)) as setup:
        setup.set_target("traced-site", "traced@0.1.0", config=HOSTILE, isolation="process")


@pytest.mark.slow
def test_cli_json_logs_are_one_object_per_line_and_contain_plugin_output(
    db_path: Path,
) -> None:
    traced_target(db_path)
    result = turnout_cli(
        "--log-format", "json", "--log-level", "debug",
        "release", "traced-site", "a.tgz", "--key", "json-1", "--json",
        env=cli_env(db_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode("utf-8", "replace")
    release_id = json.loads(result.stdout)["id"]
    stderr = result.stderr.decode("ascii")  # JSON lines are ASCII: no raw byte got through
    assert "\x1b" not in stderr
    records = [json.loads(line) for line in stderr.splitlines()]
    assert records
    for entry in records:
        assert {"time", "level", "logger", "message"} <= set(entry)
        assert entry["message"] != FORGED
        assert entry.get("release_id") != "forged"

    about = [entry for entry in records if release_id in entry["message"]]
    assert about
    for entry in about:
        assert entry["release_id"] == release_id
        assert entry["target"] == "traced-site"
        assert entry["plugin"] == "traced@0.1.0"
    succeeded = only([e for e in about if "succeeded" in e["message"]])
    assert succeeded["level"] == "info"

    output = only([e for e in records if FORGED in e["message"]])
    assert output["level"] == "debug"
    assert output["release_id"] == release_id
    message = output["message"]
    assert "\n" not in message
    assert "\x1b" not in message
    assert "\\x1b[31mred" in message  # escaped, not dropped
    assert message.count(FORGED) == 2  # both forged lines, inside this one field
    assert "utf-8" in message

    # The same key again: the CLI's own message about it is a JSON line too.
    again = turnout_cli(
        "--log-format", "json", "release", "traced-site", "a.tgz", "--key", "json-1",
        env=cli_env(db_path),
    )  # fmt: skip
    assert again.returncode == 0
    said = [json.loads(line) for line in again.stderr.decode("ascii").splitlines()]
    assert any("nothing ran" in entry["message"] for entry in said)


@pytest.mark.slow
def test_cli_text_logs_name_the_release_and_escape_plugin_output(db_path: Path) -> None:
    traced_target(db_path)
    result = turnout_cli(
        "--log-format", "text", "--log-level", "debug",
        "release", "traced-site", "a.tgz", "--key", "text-1", "--json",
        env=cli_env(db_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode("utf-8", "replace")
    release_id = json.loads(result.stdout)["id"]
    stderr = result.stderr.decode("utf-8")
    assert "\x1b" not in stderr
    lines = stderr.splitlines()
    fields = f"[release_id={release_id} target=traced-site plugin=traced@0.1.0]"
    succeeded = only([line for line in lines if "succeeded" in line])
    assert succeeded.startswith("INFO turnout: release ")
    assert succeeded.endswith(fields)
    assert not [line for line in lines if line.startswith(("ERROR turnout: FORGED", "{"))]
    output = only([line for line in lines if FORGED in line])
    assert output.startswith("DEBUG turnout: ")
    assert output.endswith(fields)
    # Escaped once, like the JSON field: a line break reads \n, not \\n.
    assert "\\n" + "ERROR turnout: " + FORGED in output
    assert "\\x1b[31mred" in output
    # Invalid UTF-8 is stored as text "\xff"; its backslash is escaped like any other.
    assert "bad \\\\xff\\\\xfe utf-8" in output
