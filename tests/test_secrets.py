"""S3: a canary secret given by reference reaches no log, row, CLI output, span or process.

Each test points a target's ``token`` at a fresh canary through ``env:NAME`` or ``file:/path``
and runs releases whose plugin puts that token everywhere it can: in its error messages
(``echo``), and in its printed output and its result too (``leaky``). Then it looks in every
place turnout writes to. The canary must be found zero times in each, and each place must have
been captured (non-empty, and showing the redaction mark where the plugin put the secret), so
that no check passes for having looked at nothing.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from turnout import ReleaseFailedError, Status, TransientReleaseError, Turnout, _secrets
from turnout._logging import JsonFormatter, TextFormatter
from turnout._secrets import REDACTED
from turnout.errors import SecretNotFoundError
from turnout.runtime import OUTPUT_LIMIT

pytestmark = pytest.mark.usefixtures("plugin_site")

VARIABLE = "TURNOUT_TEST_S3_CANARY"
"""The environment variable of the ``env:`` case (not on the worker's allow-list)."""
MARK = f"token={REDACTED}"
"""What the fixture plugins' messages and output say once turnout has redacted them."""


# The canary and the places it is looked for -------------------------------------------------


@dataclass(frozen=True)
class Canary:
    """A unique secret, the reference a target's config holds, and where it lives."""

    value: str
    reference: str
    variable: str | None

    @property
    def core(self) -> str:
        """The random part: finding it means the secret leaked, whatever framed it."""
        return self.value.removeprefix("canary-")

    def assert_absent(self, where: str, text: str) -> None:
        """``text`` was captured, and holds the canary zero times (also across table folds)."""
        assert text.strip(), f"{where}: nothing was captured, so nothing was checked"
        flat = re.sub(r"[\s│|]", "", text)  # a table that folds a long cell splits it
        found = {
            form: haystack.count(form)
            for form in (self.value, self.core)
            for haystack in (text, flat)
            if form in haystack
        }
        if found:
            at = text.find(self.core)
            excerpt = text[max(0, at - 200) : at + 200] if at >= 0 else flat[:400]
            pytest.fail(f"the canary leaked into {where}: {found}\n...{excerpt}...")


@pytest.fixture(params=["env", "file"])
def canary(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Canary:
    """A fresh canary behind ``env:TURNOUT_TEST_S3_CANARY`` or ``file:<tmp>/token``."""
    value = f"canary-{secrets.token_hex(16)}"
    if request.param == "env":
        monkeypatch.setenv(VARIABLE, value)
        return Canary(value, f"env:{VARIABLE}", VARIABLE)
    path = tmp_path / "secret" / "token"
    path.parent.mkdir()
    path.write_text(value + "\n", encoding="utf-8")
    return Canary(value, f"file:{path}", None)


class Records(logging.Handler):
    """Keeps every record of the loggers it is attached to (each once)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if not any(record is seen for seen in self.records):
            self.records.append(record)

    def text(self) -> str:
        """Each record as the CLI's two formatters write it, and its raw parts."""
        text, jsonl = TextFormatter(), JsonFormatter()
        parts = []
        for record in self.records:
            parts += [text.format(record), jsonl.format(record), record.getMessage()]
            parts += [repr(record.msg), repr(record.args), repr(vars(record))]
        return "\n".join(parts)


@pytest.fixture
def logs() -> Iterator[Records]:
    """Every record of the ``turnout`` logger and of its retries logger, at DEBUG."""
    handler = Records()
    loggers = [logging.getLogger("turnout"), logging.getLogger("turnout.retries")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    yield handler
    for logger, level in zip(loggers, levels, strict=True):
        logger.removeHandler(handler)
        logger.setLevel(level)


@dataclass
class Otel:
    """SDK providers of this test only (the global providers are never set)."""

    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader
    tracer_provider: TracerProvider
    meter_provider: MeterProvider

    def spans_text(self) -> str:
        """Every finished span: name, attributes, events and status, as the SDK exports it."""
        parts = []
        for span in self.spans.get_finished_spans():
            parts.append(span.to_json())
            parts.append(repr(dict(span.attributes or {})))
            parts.append(str(span.status.description))
            parts += [f"{e.name} {dict(e.attributes or {})!r}" for e in span.events]
        return "\n".join(parts)

    def metrics_text(self) -> str:
        data = self.metrics.get_metrics_data()
        return data.to_json() if data is not None else ""


@pytest.fixture
def otel() -> Iterator[Otel]:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    yield Otel(spans, reader, tracer_provider, meter_provider)
    tracer_provider.shutdown()
    meter_provider.shutdown()


class Sleeps:
    """An injected sleep that records the waits instead of waiting."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def dump_database(url: str) -> str:
    """Everything the registry holds, as text: SQLite's ``iterdump()``; on PostgreSQL every
    column of every row of every table (``row_to_json``), and ``pg_dump`` when on the PATH."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        assert parsed.database
        with closing(sqlite3.connect(parsed.database)) as conn:
            return "\n".join(conn.iterdump())
    import psycopg
    from psycopg import sql

    plain = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
    parts = []
    with psycopg.connect(plain) as conn:
        tables = [
            name
            for (name,) in conn.execute(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY 1"
            )
        ]
        assert "releases" in tables
        for table in tables:
            query = sql.SQL("SELECT row_to_json(t)::text FROM {} AS t").format(
                sql.Identifier(table)
            )
            parts += [f"{table}: {row}" for (row,) in conn.execute(query)]
    pg_dump = shutil.which("pg_dump")
    if pg_dump:
        done = subprocess.run(
            [pg_dump, "--no-owner", "--dbname", plain], capture_output=True, text=True, check=False
        )
        if done.returncode == 0:  # a client older than the server refuses; the rows still count
            assert "COPY public.releases" in done.stdout
            parts.append(done.stdout)
    return "\n".join(parts)


def _to_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


# Releases through the Python API ------------------------------------------------------------


def test_secret_stays_out_of_errors_records_logs_spans_metrics_and_the_database(
    registry_url: str, canary: Canary, logs: Records, otel: Otel
) -> None:
    sleeps = Sleeps()
    token = {"token": canary.reference}
    places: dict[str, list[str]] = {"raised": [], "records": []}

    with Turnout(
        registry_url,
        sleep=sleeps,
        tracer_provider=otel.tracer_provider,
        meter_provider=otel.meter_provider,
    ) as tt:
        # The plugin's errors carry the secret: transient on every attempt, or permanent; in a
        # worker process and inline.
        tt.set_target(
            "echo-down",
            "echo@1.0.0",
            config={**token, "fail_with": "connection"},
            max_attempts=3,
            isolation="process",
            reason="s3",
        )
        tt.set_target(
            "echo-broken",
            "echo@1.0.0",
            config={**token, "fail_with": "permanent"},
            isolation="inline",
            reason="s3",
        )
        # ...and its output and its result too (in a worker process, which captures output).
        tt.set_target(
            "leaky-down",
            "leaky@0.1.0",
            config={**token, "fail_times": 99},
            max_attempts=3,
            isolation="process",
            reason="s3",
        )
        tt.set_target(
            "leaky-flaky",
            "leaky@0.1.0",
            config={**token, "fail_times": 2},
            max_attempts=3,
            isolation="process",
            reason="s3",
        )
        assert tt.registry.get_target("leaky-flaky").config["token"] == canary.reference

        failed: dict[str, ReleaseFailedError] = {}
        for name, error in (
            ("echo-down", TransientReleaseError),
            ("echo-broken", ReleaseFailedError),
            ("leaky-down", TransientReleaseError),
        ):
            # The second call answers with the recorded permanent failure (nothing runs), or
            # resumes a transient one (three more attempts, failing again).
            for _ in range(2):
                with pytest.raises(error) as raised:
                    tt.release(name, "app.tgz", key=f"s3-{name}")
                failed.setdefault(name, raised.value)
                places["raised"] += [str(raised.value), repr(raised.value)]
                places["records"].append(_to_json(raised.value.release.to_dict()))
        flaky = tt.release("leaky-flaky", "app.tgz", key="s3-leaky-flaky")
        again = tt.release("leaky-flaky", "app.tgz", key="s3-leaky-flaky")
        assert again.reused
        places["records"] += [_to_json(flaky.to_dict()), _to_json(again.to_dict())]

        # A replay of the window's failures runs each failing release again, as a new release.
        replays = tt.replay(tt.replay_candidates(since=timedelta(hours=1)))
        assert len(replays) == 3
        for replay in replays:
            assert replay.record is not None
            places["raised"] += [str(replay.error), repr(replay.error)]
            places["records"].append(_to_json(replay.record.to_dict()))

        stored = tt.ledger.recent(limit=None)
        assert len(stored) == 7
        places["records"] += [_to_json(record.to_dict()) for record in stored]
        history = tt.registry.target_history("leaky-flaky")
        places["records"] += [_to_json(revision.snapshot) for revision in history]

    # What it did: every failure retried with the fake sleep, the secret redacted where it was.
    down = failed["echo-down"].release
    assert (down.status, down.attempts, down.retryable) == (Status.FAILED, 3, True)
    assert down.error is not None
    assert MARK in down.error
    assert [MARK in entry["error"] for entry in down.attempt_log] == [True] * 3
    broken = failed["echo-broken"].release
    assert (broken.status, broken.attempts, broken.retryable) == (Status.FAILED, 1, False)
    assert broken.error == f"RuntimeError: echo failed on attempt 1 with {MARK}"
    leaky = failed["leaky-down"].release
    assert leaky.attempts == 3
    assert leaky.output is not None
    assert leaky.output.count(f"leaky: deploying with {MARK}") == 3
    assert leaky.output.count(f"leaky: stderr {MARK}") == 3
    assert flaky.status is Status.SUCCEEDED
    assert flaky.attempts == 3
    assert flaky.result == {
        "token": REDACTED,
        "nested": {"list": [REDACTED, f"before {REDACTED} after"]},
        REDACTED: "the token as a key",
    }
    # Seven runs of three attempts met transient errors, each waited twice: echo-down and
    # leaky-down twice each (asked again, resumed), leaky-flaky, and the two replays of those.
    assert len(sleeps.waits) == 7 * 2

    for where, texts in places.items():
        canary.assert_absent(where, "\n".join(texts))

    database = dump_database(registry_url)
    assert canary.reference in database  # the reference is stored as written...
    assert MARK in database  # ...and the errors, output and attempt logs, redacted
    canary.assert_absent("the database", database)

    spans = otel.spans.get_finished_spans()
    releases = [s for s in spans if s.name == "turnout.release"]
    assert len(releases) == 3 * 2 + 2 + 3
    failures = [s for s in releases if s.status.status_code is StatusCode.ERROR]
    assert len(failures) == 3 * 2 + 3
    events = [e for s in spans for e in s.events if e.name == "exception"]
    assert events
    assert all(MARK in str((e.attributes or {})["exception.message"]) for e in events)
    canary.assert_absent("span names, attributes, events and statuses", otel.spans_text())
    canary.assert_absent("metrics", otel.metrics_text())

    names = {record.name for record in logs.records}
    assert {"turnout", "turnout.retries"} <= names
    outputs = [r.getMessage() for r in logs.records if "plugin output" in r.getMessage()]
    assert outputs
    assert all(MARK in message for message in outputs)
    canary.assert_absent("log records", logs.text())


# The worker process -------------------------------------------------------------------------


def _worker_pids() -> set[int]:
    """This process's worker children: processes whose parent it is that run ``_serve.py``."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        if ppid == os.getpid() and b"_serve.py" in cmdline:
            found.add(int(entry.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux's /proc")
def test_secret_is_in_no_worker_command_line_or_environment(db_path: Path, canary: Canary) -> None:
    before = _worker_pids()
    with Turnout(str(db_path), sleep=Sleeps()) as tt:
        tt.set_target(
            "slow",
            "leaky@0.1.0",
            config={"token": canary.reference, "sleep": 3},
            isolation="process",
            reason="s3",
        )
        done: dict[str, Any] = {}
        thread = threading.Thread(
            target=lambda: done.update(record=tt.release("slow", "app.tgz", key="s3-slow"))
        )
        thread.start()
        try:
            deadline = time.monotonic() + 20
            while tt.ledger.find("slow", "s3-slow") is None and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.5)  # claimed: the call (and its resolved config) is in the worker now
            (pid,) = _worker_pids() - before
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            environ = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
            in_flight = thread.is_alive()
        finally:
            thread.join(timeout=60)
    assert in_flight, "the release ended before its worker was inspected"
    record = done["record"]
    assert record.status is Status.SUCCEEDED
    assert record.output is not None
    assert MARK in record.output  # the worker did hold the secret, and printed it

    assert "_serve.py" in cmdline
    assert "PATH=" in environ
    canary.assert_absent("the worker's command line", cmdline.replace("\0", " "))
    canary.assert_absent("the worker's environment", environ.replace("\0", "\n"))
    names = {item.partition("=")[0] for item in environ.split("\0") if item}
    assert VARIABLE not in names
    assert not {name for name in names if "TURNOUT" in name}


# The command line, as a job runner calls it -------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("canary", "log_format"), [("env", "text"), ("file", "json")], indirect=["canary"]
)
def test_cli_stdout_stderr_json_and_logs_hold_no_secret(
    db_path: Path, canary: Canary, log_format: str
) -> None:
    """Each command a real process, at ``--log-level debug``: what a job runner would keep."""
    script = shutil.which("turnout", path=str(Path(sys.executable).parent)) or "turnout"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["TURNOUT_DATABASE_URL"] = str(db_path)
    runs: list[tuple[str, subprocess.CompletedProcess[str]]] = []

    def turnout(*args: str, code: int = 0, **extra: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [script, "--log-level", "debug", "--log-format", log_format, *args],
            capture_output=True,
            text=True,
            env={**env, **extra},
            check=False,
            timeout=120,
        )
        assert done.returncode == code, (args, done.stdout, done.stderr)
        runs.append((" ".join(args), done))
        return done

    for name, fail_times in (("leaky", 2), ("leaky-down", 99)):
        turnout(
            "target", "set", name, "leaky@0.1.0", "--config", f"token={canary.reference}",
            "--config", f"fail_times={fail_times}", "--max-attempts", "3",
        )  # fmt: skip

    # Succeeds on its third attempt: the result and the output of all three hold the secret.
    released = json.loads(turnout("release", "leaky", "a.tgz", "--key", "k1", "--json").stdout)
    assert (released["status"], released["attempts"]) == ("succeeded", 3)
    assert released["result"]["token"] == REDACTED
    assert released["output"].count(f"leaky: deploying with {MARK}") == 3
    turnout("release", "leaky", "a.tgz", "--key", "k1")  # reused: the recorded outcome, a table
    # The SDK's console exporters print this release's spans and metrics to stdout.
    traced = turnout(
        "release", "leaky", "a.tgz", "--key", "k2",
        OTEL_TRACES_EXPORTER="console", OTEL_METRICS_EXPORTER="console",
    )  # fmt: skip
    assert '"turnout.attempt"' in traced.stdout
    assert '"turnout.release"' in traced.stdout
    assert "turnout.releases" in traced.stdout
    # Fails transiently on every attempt: exit 75, the error holds the secret.
    failed = json.loads(
        turnout("release", "leaky-down", "a.tgz", "--key", "d1", "--json", code=75).stdout
    )
    assert (failed["status"], failed["attempts"]) == ("failed", 3)
    assert MARK in failed["error"]
    turnout("release", "leaky-down", "a.tgz", "--key", "d1", code=75)  # reused

    listed = json.loads(turnout("releases", "--json").stdout)
    assert len(listed) == 3
    turnout("releases")
    for release in (released, failed):
        turnout("releases", "show", release["id"])
        shown = json.loads(turnout("releases", "show", release["id"], "--json").stdout)
        assert MARK in shown["output"]
    target = json.loads(turnout("target", "show", "leaky", "--json").stdout)
    assert target["config"]["token"] == canary.reference
    turnout("target", "show", "leaky")
    turnout("history", "leaky")
    turnout("history", "leaky", "--json")

    for args, done in runs:
        if done.stdout:
            canary.assert_absent(f"stdout of `turnout {args}`", done.stdout)
        if done.stderr:
            canary.assert_absent(f"stderr of `turnout {args}`", done.stderr)
    stdout = "\n".join(done.stdout for _, done in runs)
    stderr = "\n".join(done.stderr for _, done in runs)
    canary.assert_absent("every command's stdout", stdout)
    canary.assert_absent("every command's stderr", stderr)

    # The debug log did carry what the plugin printed and raised, redacted, in the format asked.
    lines = [line for line in stderr.splitlines() if line.strip()]
    if log_format == "json":
        records = [json.loads(line) for line in lines if line.startswith("{")]
        messages = [record["message"] for record in records]
        assert {record["logger"] for record in records} >= {"turnout", "turnout.retries"}
    else:
        messages = [line for line in lines if line.startswith(("DEBUG ", "INFO ", "WARNING "))]
        assert any(line.startswith("INFO turnout.retries: ") for line in messages)
    assert any("plugin output" in m and MARK in m for m in messages)
    assert any("failed after 3 attempt(s)" in m and MARK in m for m in messages)

    database = dump_database(f"sqlite:///{db_path}")
    assert MARK in database
    canary.assert_absent("the database after the CLI", database)


@pytest.mark.parametrize("isolation", ["inline", "process"])
def test_secret_split_by_the_output_limit_leaves_no_part_behind(
    db_path: Path, canary: Canary, isolation: str
) -> None:
    # The output keeps its last 64 KiB: here the cut falls inside the secret, leaving its last
    # 30 characters at the start of what is kept. They are redacted all the same.
    kept = 30
    config = {"token": canary.reference, "then_print": OUTPUT_LIMIT - 1 - kept}
    with Turnout(str(db_path), sleep=Sleeps()) as tt:
        tt.set_target("cut", "leaky@0.1.0", config=config, isolation=isolation, reason="s3")
        record = tt.release("cut", "app.tgz", key="s3-cut")
    assert record.output is not None
    assert record.output.endswith("f" * 1000)
    assert f"{REDACTED}\n{'f' * 100}" in record.output  # where the cut part of it was
    for size in (kept, 12, 6):
        assert canary.value[-size:] not in record.output, size


def test_secret_references_resolve_at_any_depth_and_are_redacted(
    db_path: Path, canary: Canary, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A credential in a header or a list (e.g. a webhook's Authorization header) is a
    # reference too: resolved for the call, stored as written, redacted from the record.
    config = {"vault": {"token": canary.reference}, "spare": ["plain", canary.reference]}
    resolved, found = _secrets.resolve(config)
    assert resolved == {"vault": {"token": canary.value}, "spare": ["plain", canary.value]}
    assert found == [canary.value, canary.value]
    with Turnout(str(db_path), sleep=Sleeps()) as tt:
        tt.set_target("deep", "leaky@0.1.0", config=config, isolation="inline", reason="s3")
        record = tt.release("deep", "app.tgz", key="s3-deep")
        stored = tt.registry.get_target("deep").config
    assert stored == config  # the references, never the values
    assert record.status is Status.SUCCEEDED
    assert record.result is not None
    assert record.result["token"] == REDACTED  # the plugin did get the value, and returned it
    assert record.output is not None
    assert MARK in record.output
    canary.assert_absent("the record", _to_json(record.to_dict()))
    # An unresolvable nested reference names its path.
    monkeypatch.delenv("TURNOUT_TEST_UNSET", raising=False)
    with pytest.raises(SecretNotFoundError, match=r"config 'spare\[1\]\.key'"):
        _secrets.resolve({"spare": [1, {"key": "env:TURNOUT_TEST_UNSET"}]})
