"""One release through the Python API: claim, load exactly the pinned version, retry, record."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import read_calls

import turnout
from turnout import (
    ConfigRejectedError,
    KeyMismatchError,
    PluginLoadError,
    PluginNotInstalledError,
    ReleaseFailedError,
    Status,
    TransientReleaseError,
    Turnout,
    UnknownTargetError,
)
from turnout.errors import InvalidKeyError, SecretNotFoundError
from turnout.releases import plugin_key

pytestmark = pytest.mark.usefixtures("plugin_site")


class Sleeps:
    """An injected sleep that records the waits instead of waiting."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def tt(db_path: Path, sleeps: Sleeps) -> Any:
    with Turnout(str(db_path), sleep=sleeps) as handle:
        yield handle


def echo_target(tt: Turnout, calls: Path, name: str = "site", **config: Any) -> None:
    tt.set_target(name, "echo@1.0.0", config={"calls": str(calls), **config}, reason="test")


def test_release_succeeds_and_records(tt: Turnout, calls_file: Path) -> None:
    echo_target(tt, calls_file)
    record = tt.release(
        "site", "https://ci.example/app.tar.gz", key="build-1", context={"customer": "acme"}
    )
    assert record.status is Status.SUCCEEDED
    assert record.attempts == 1
    assert record.plugin_ref == "echo@1.0.0"
    assert record.plugin_key == plugin_key("build-1", {"customer": "acme"})
    assert record.result == {
        "artifact": "https://ci.example/app.tar.gz",
        "target": "site",
        "key": record.plugin_key,
        "attempt": 1,
        "context": {"customer": "acme"},
        "version": "1.0.0",
        "token_seen": False,
    }
    assert not record.reused
    assert record.exit_code == 0
    stored = tt.ledger.get(record.id)
    assert stored is not None
    assert stored.status is Status.SUCCEEDED
    assert stored.finished_at is not None
    assert stored.result == record.result
    assert read_calls(calls_file) == [
        {"key": record.plugin_key, "attempt": 1, "version": "1.0.0", "target": "site"}
    ]


def test_release_same_key_same_request_runs_nothing(tt: Turnout, calls_file: Path) -> None:
    echo_target(tt, calls_file)
    first = tt.release("site", "a.tgz", key="k1")
    second = tt.release("site", "a.tgz", key="k1")
    assert second.reused
    assert second.id == first.id
    assert second.result == first.result
    assert len(read_calls(calls_file)) == 1


def test_release_same_key_different_request_is_refused(tt: Turnout, calls_file: Path) -> None:
    echo_target(tt, calls_file)
    first = tt.release("site", "a.tgz", key="k1")
    with pytest.raises(KeyMismatchError) as raised:
        tt.release("site", "b.tgz", key="k1")
    assert raised.value.differs == ["artifact"]
    assert raised.value.exit_code == 65
    with pytest.raises(KeyMismatchError):
        tt.release("site", "a.tgz", key="k1", context={"plan": "other"})
    assert len(read_calls(calls_file)) == 1
    assert tt.ledger.get(first.id) == first


def test_release_keys_are_scoped_per_customer(tt: Turnout, calls_file: Path) -> None:
    # S7: two customers using the same low-entropy key on one target get a release each;
    # neither is refused because of the other, nor told about it.
    echo_target(tt, calls_file)
    acme = tt.release("site", "a.tgz", key="42", context={"customer": "acme"})
    globex = tt.release("site", "b.tgz", key="42", context={"customer": "globex", "plan": "pro"})
    nobody = tt.release("site", "c.tgz", key="42")
    assert len({acme.id, globex.id, nobody.id}) == 3
    assert [r.reused for r in (acme, globex, nobody)] == [False] * 3
    assert tt.release("site", "a.tgz", key="42", context={"customer": "acme"}).id == acme.id
    with pytest.raises(KeyMismatchError) as raised:  # within one customer, keys still bind
        tt.release("site", "z.tgz", key="42", context={"customer": "globex"})
    assert raised.value.release_id == globex.id
    assert acme.id not in str(raised.value)
    assert nobody.id not in str(raised.value)
    found = {who: tt.ledger.find("site", "42", who) for who in ("acme", "globex", None)}
    assert {who: r.id for who, r in found.items() if r} == {
        "acme": acme.id,
        "globex": globex.id,
        None: nobody.id,
    }
    # The plugin, which recognises a repeat by its key, is told them apart too: otherwise it
    # would answer globex's release with acme's deploy, recorded as globex's success.
    keys = [c["key"] for c in read_calls(calls_file)]
    assert keys == [acme.plugin_key, globex.plugin_key, "42"]
    assert len(set(keys)) == 3
    assert re.fullmatch(r"42![0-9a-f]{16}", acme.plugin_key)
    assert acme.plugin_key == plugin_key("42", {"customer": "acme", "plan": "other"})
    assert nobody.plugin_key == nobody.idempotency_key == "42"
    assert "acme" not in acme.plugin_key


def test_release_keys_are_scoped_per_target(tt: Turnout, calls_file: Path) -> None:
    echo_target(tt, calls_file, name="one")
    echo_target(tt, calls_file, name="two")
    a = tt.release("one", "a.tgz", key="shared")
    b = tt.release("two", "a.tgz", key="shared")
    assert a.id != b.id
    assert len(read_calls(calls_file)) == 2


@pytest.mark.parametrize("failure", ["connection", "timeout", "retryable"])
def test_release_transient_error_is_retried_with_the_same_key(
    tt: Turnout, calls_file: Path, sleeps: Sleeps, failure: str
) -> None:
    echo_target(tt, calls_file, fail_with=failure, fail_times=2)
    record = tt.release("site", "a.tgz", key="flaky-1")
    assert record.status is Status.SUCCEEDED
    assert record.attempts == 3
    calls = read_calls(calls_file)
    assert [c["attempt"] for c in calls] == [1, 2, 3]
    assert {c["key"] for c in calls} == {"flaky-1"}
    assert len(sleeps.waits) == 2
    assert all(0 <= wait <= 30 for wait in sleeps.waits)


def test_release_transient_error_gives_up_after_max_attempts(tt: Turnout, calls_file: Path) -> None:
    echo_target(tt, calls_file, fail_with="connection")
    tt.set_target("site", "echo@1.0.0", max_attempts=4)
    with pytest.raises(TransientReleaseError) as raised:
        tt.release("site", "a.tgz", key="down-1")
    record = raised.value.release
    assert raised.value.exit_code == 75
    assert record.status is Status.FAILED
    assert record.attempts == 4
    assert record.retryable is True
    assert record.error_type == "ConnectionError"
    assert len(read_calls(calls_file)) == 4


def test_release_retries_stop_at_the_time_budget_before_the_attempts_run_out(
    db_path: Path, calls_file: Path
) -> None:
    # F3: the budget is the target's timeout times its attempts (here 0.05 s x 20 = 1 s), and
    # no backoff wait starts that would end past it. Real waits: twenty attempts' jittered
    # backoff would take minutes, so the budget, not the count, ends this release.
    with Turnout(str(db_path)) as tt:
        echo_target(tt, calls_file, fail_with="connection")
        tt.set_target("site", "echo@1.0.0", max_attempts=20, timeout=0.05)
        started = time.monotonic()
        with pytest.raises(TransientReleaseError) as raised:
            tt.release("site", "a.tgz", key="down-1")
        elapsed = time.monotonic() - started
    record = raised.value.release
    assert record.status is Status.FAILED
    assert 2 <= record.attempts < 20
    assert len(read_calls(calls_file)) == record.attempts
    assert {c["key"] for c in read_calls(calls_file)} == {"down-1"}
    assert elapsed < 1.0 + 0.5  # the budget, and the last attempt and the bookkeeping


def test_release_asked_again_after_a_transient_failure_resumes_it(
    tt: Turnout, calls_file: Path
) -> None:
    # Exit 75 says "retry later with the same key": asking again runs more attempts of the
    # same release, numbered on, with the same key, and records where they end.
    echo_target(tt, calls_file, fail_with="connection", fail_times=3)
    tt.set_target("site", "echo@1.0.0", max_attempts=2, reason="test")
    with pytest.raises(TransientReleaseError) as first:
        tt.release("site", "a.tgz", key="down-1")
    assert first.value.release.attempts == 2
    record = tt.release("site", "a.tgz", key="down-1")
    assert record.id == first.value.release.id
    assert not record.reused
    assert record.status is Status.SUCCEEDED
    assert record.attempts == 4
    assert (record.error, record.error_type, record.retryable) == (None, None, None)
    assert [entry["outcome"] for entry in record.attempt_log or []] == [
        "error",
        "error",
        "error",
        "succeeded",
    ]
    calls = read_calls(calls_file)
    assert [(call["key"], call["attempt"]) for call in calls] == [
        ("down-1", 1),
        ("down-1", 2),
        ("down-1", 3),
        ("down-1", 4),
    ]
    # Deployed now: asking again answers with the record and runs nothing.
    assert tt.release("site", "a.tgz", key="down-1").reused
    assert len(read_calls(calls_file)) == 4


def test_release_a_permanent_or_timed_out_failure_is_not_resumed(
    tt: Turnout, calls_file: Path
) -> None:
    echo_target(tt, calls_file, fail_with="permanent")
    with pytest.raises(ReleaseFailedError):
        tt.release("site", "a.tgz", key="bad-1")
    with pytest.raises(ReleaseFailedError) as again:
        tt.release("site", "a.tgz", key="bad-1")
    assert again.value.release.reused
    assert len(read_calls(calls_file)) == 1


def test_release_a_replayed_failure_is_not_resumed(tt: Turnout, calls_file: Path) -> None:
    # The replay runs it again under a key of its own; resuming the original too would
    # deploy the same release twice.
    echo_target(tt, calls_file, fail_with="connection")
    tt.set_target("site", "echo@1.0.0", max_attempts=1, reason="test")
    with pytest.raises(TransientReleaseError) as first:
        tt.release("site", "a.tgz", key="down-1")
    [replay] = tt.replay([first.value.release])
    assert replay.record is not None
    assert replay.record.replay_of == first.value.release.id
    with pytest.raises(TransientReleaseError) as again:
        tt.release("site", "a.tgz", key="down-1")
    assert again.value.release.reused
    assert again.value.release.id == first.value.release.id
    assert [call["key"] for call in read_calls(calls_file)] == ["down-1", replay.key]


def test_release_a_resumed_failure_is_not_replayed_while_it_runs(
    tt: Turnout, calls_file: Path
) -> None:
    echo_target(tt, calls_file, fail_with="connection")
    tt.set_target("site", "echo@1.0.0", max_attempts=1, reason="test")
    with pytest.raises(TransientReleaseError) as first:
        tt.release("site", "a.tgz", key="down-1")
    original = first.value.release
    # Its job runner asks again, and is still running when an operator replays the window.
    outcome = tt.ledger.claim(
        target="site",
        key="down-1",
        fingerprint=original.fingerprint,
        plugin_ref=turnout.PluginRef.parse(original.plugin_ref),
        artifact="a.tgz",
        context={},
    )
    assert not isinstance(outcome, turnout.ReleaseRecord)
    assert outcome.resumed
    [replay] = tt.replay([original])
    assert isinstance(replay.error, turnout.ReleaseInProgressError)
    assert replay.error.release_id == original.id
    assert tt.ledger.find("site", replay.key or "") is None  # nothing was claimed
    assert len(read_calls(calls_file)) == 1


def test_release_permanent_error_is_tried_once(
    tt: Turnout, calls_file: Path, sleeps: Sleeps
) -> None:
    echo_target(tt, calls_file, fail_with="permanent")
    with pytest.raises(ReleaseFailedError) as raised:
        tt.release("site", "a.tgz", key="bad-1")
    assert type(raised.value) is ReleaseFailedError
    assert raised.value.exit_code == 1
    assert raised.value.release.attempts == 1
    assert raised.value.release.retryable is False
    assert raised.value.release.error == "RuntimeError: echo failed on attempt 1 with token="
    assert len(read_calls(calls_file)) == 1
    assert sleeps.waits == []


@pytest.mark.parametrize(
    ("failure", "exc_type"), [("keyboard", KeyboardInterrupt), ("systemexit", SystemExit)]
)
def test_release_inline_interrupt_is_tried_once_recorded_and_reraised(
    tt: Turnout,
    calls_file: Path,
    failure: str,
    exc_type: type[BaseException],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    canary = "canary-0e5d-interrupt"
    monkeypatch.setenv("ECHO_TOKEN", canary)
    echo_target(tt, calls_file, fail_with=failure, token="env:ECHO_TOKEN")
    tt.set_target("site", "echo@1.0.0", isolation="inline")
    with pytest.raises(exc_type) as raised:
        tt.release("site", "a.tgz", key="int-1")
    # Re-raised without the secret the plugin put in it (SystemExit's message is printed).
    assert "token=***" in str(raised.value)
    assert canary not in str(raised.value)
    assert canary not in repr(raised.value.args)
    assert len(read_calls(calls_file)) == 1
    (record,) = tt.ledger.recent(target="site")
    assert record.status is Status.FAILED
    assert record.error_type == exc_type.__name__
    assert record.attempts == 1


@pytest.mark.parametrize(
    ("failure", "exc_type"), [("keyboard", KeyboardInterrupt), ("systemexit", SystemExit)]
)
def test_release_worker_interrupt_is_a_permanent_failure_tried_once(
    tt: Turnout, calls_file: Path, failure: str, exc_type: type[BaseException]
) -> None:
    """Raised inside a worker, it stops the plugin's process, not the caller: tried once."""
    echo_target(tt, calls_file, fail_with=failure)
    with pytest.raises(ReleaseFailedError) as raised:
        tt.release("site", "a.tgz", key="int-2")
    assert type(raised.value) is ReleaseFailedError
    assert raised.value.release.error_type == exc_type.__name__
    assert raised.value.release.attempts == 1
    assert len(read_calls(calls_file)) == 1


@pytest.mark.parametrize("kind", ["list", "none", "object", "big"])
def test_release_malformed_result_is_never_success(tt: Turnout, kind: str) -> None:
    tt.set_target("bad", "badresult@0.1.0", config={"kind": kind})
    with pytest.raises(ReleaseFailedError) as raised:
        tt.release("bad", "a.tgz", key=f"r-{kind}")
    record = raised.value.release
    assert record.status is Status.FAILED
    assert record.error_type == "turnout.MalformedResultError"
    assert record.attempts == 1
    assert record.result is None


def test_release_secret_reference_is_resolved_for_the_call_and_redacted(
    tt: Turnout, calls_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    canary = "canary-4f1d9b7e-secret"
    monkeypatch.setenv("ECHO_TOKEN", canary)
    echo_target(tt, calls_file, token="env:ECHO_TOKEN", fail_with="permanent")
    assert tt.registry.get_target("site").config["token"] == "env:ECHO_TOKEN"
    with pytest.raises(ReleaseFailedError) as raised:
        tt.release("site", "a.tgz", key="s-1")
    assert canary not in str(raised.value)
    assert raised.value.release.error == "RuntimeError: echo failed on attempt 1 with token=***"


def test_release_missing_secret_is_a_configuration_error(tt: Turnout, calls_file: Path) -> None:
    echo_target(tt, calls_file, token="env:TURNOUT_TEST_UNSET_VARIABLE")
    with pytest.raises(SecretNotFoundError) as raised:
        tt.release("site", "a.tgz", key="s-2")
    assert raised.value.exit_code == 78
    assert "TURNOUT_TEST_UNSET_VARIABLE" in str(raised.value)
    assert read_calls(calls_file) == []
    assert tt.ledger.recent() == []


def test_release_unknown_target_runs_nothing(tt: Turnout) -> None:
    with pytest.raises(UnknownTargetError) as raised:
        tt.release("nowhere", "a.tgz", key="k")
    assert raised.value.target == "nowhere"
    assert "turnout target list" in str(raised.value)


@pytest.mark.parametrize(
    "key",
    ["", "x" * 201, "has space", "nul\x00", "bell\x07", "'; DROP TABLE releases; --", "-leading"],
)
def test_release_malformed_key_is_refused_before_any_lookup(tmp_path: Path, key: str) -> None:
    # No database exists at this path: a refusal before any lookup cannot touch it.
    missing = tmp_path / "never-created.db"
    with Turnout(str(missing)) as handle, pytest.raises(InvalidKeyError):
        handle.release("site", "a.tgz", key=key)
    assert not missing.exists()


def test_release_import_failure_is_a_configuration_error_and_nothing_is_recorded(
    tt: Turnout, db_path: Path
) -> None:
    from sqlalchemy import text

    # Write the row directly: `target set` refuses plugins that fail to load.
    with tt.registry.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO targets (name, plugin_id, plugin_version, config, max_attempts, "
                "timeout, revision, created_at, updated_at) VALUES ('b', 'broken', '0.1.0', '{}', "
                "3, 60, 1, '2026-01-01 00:00:00', '2026-01-01 00:00:00')"
            )
        )
    with pytest.raises(PluginLoadError) as raised:
        tt.release("b", "a.tgz", key="k")
    assert raised.value.exit_code == 78
    assert "turnout-broken" in str(raised.value)
    assert "turnout_fixture_missing_dependency" in str(raised.value)
    assert tt.ledger.recent() == []


def test_release_refuses_a_row_pinned_to_another_installed_version(
    tt: Turnout, calls_file: Path
) -> None:
    echo_target(tt, calls_file)
    from sqlalchemy import text

    with tt.registry.engine.begin() as conn:
        conn.execute(text("UPDATE targets SET plugin_version = '2.0.0' WHERE name = 'site'"))
    with pytest.raises(PluginNotInstalledError) as raised:
        tt.release("site", "a.tgz", key="k")
    message = str(raised.value)
    assert "echo@2.0.0 is not installed" in message
    assert "turnout-echo==2.0.0" in message
    assert read_calls(calls_file) == []
    assert tt.ledger.recent() == []


def test_release_config_rejected_at_release_time_runs_nothing(
    tt: Turnout, calls_file: Path
) -> None:
    echo_target(tt, calls_file)
    from sqlalchemy import text

    with tt.registry.engine.begin() as conn:
        conn.execute(text("UPDATE targets SET config = '{\"invalid\": 1}' WHERE name = 'site'"))
    with pytest.raises(ConfigRejectedError):
        tt.release("site", "a.tgz", key="k")
    assert tt.ledger.recent() == []


def test_module_level_release_uses_the_given_database(db_path: Path, calls_file: Path) -> None:
    with Turnout(str(db_path)) as handle:
        echo_target(handle, calls_file)
    record = turnout.release("site", "a.tgz", key="api-1", db=str(db_path))
    assert record.status is Status.SUCCEEDED
    assert turnout.release("site", "a.tgz", key="api-1", db=str(db_path)).reused


def test_release_stores_its_decision_record_and_later_changes_never_alter_it(
    tt: Turnout, calls_file: Path
) -> None:
    echo_target(tt, calls_file)
    record = tt.release("site", "a.tgz", key="d-1")
    decision = {
        "revision": 1,
        "rule": "target default",
        "route": None,
        "bucket": None,
        "key": None,
        "plugin": "echo@1.0.0",
    }
    assert record.decision == decision
    tt.set_target("site", "echo@1.0.0", config={"calls": str(calls_file), "x": 1})
    stored = tt.ledger.get(record.id)
    assert stored is not None
    assert stored.decision == decision
    assert tt.release("site", "a.tgz", key="d-2").decision == {**decision, "revision": 2}


def test_inline_capture_keeps_bytes_written_as_text() -> None:
    # Some libraries write bytes to sys.stdout; kept as text, they never fail a release.
    import sys

    from turnout import _capture

    with _capture.captured() as buffer:
        sys.stdout.write("text, ")
        sys.stdout.write(b"bytes \xff\n")  # type: ignore[call-overload]
    assert _capture.text(buffer) == "text, bytes \\xff\n"


def test_inline_plugin_output_is_captured_per_thread_and_redacted(
    tt: Turnout, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An inline plugin's prints are stored with the release, redacted, as a worker's are;
    another thread printing meanwhile still reaches the real stream."""
    import sys
    import threading
    import time

    from turnout._capture import _Routed

    canary = "canary-51c3-inline-output"
    monkeypatch.setenv("LEAKY_TOKEN", canary)
    tt.set_target(
        "site", "leaky@0.1.0", config={"token": "env:LEAKY_TOKEN", "sleep": 0.5}, isolation="inline"
    )
    done: list[Any] = []
    worker = threading.Thread(target=lambda: done.append(tt.release("site", "a", key="out-1")))
    worker.start()
    deadline = time.monotonic() + 10
    while not isinstance(sys.stdout, _Routed) and time.monotonic() < deadline:
        time.sleep(0.005)
    assert isinstance(sys.stdout, _Routed)  # the plugin is running, its thread captured
    print("the caller's own line")
    worker.join()
    (record,) = done
    assert record.output is not None
    assert "leaky: deploying with token=***" in record.output
    assert "leaky: stderr token=***" in record.output
    assert canary not in record.output
    assert "the caller's own line" not in record.output
    assert canary not in repr(record.to_dict())
    printed = capsys.readouterr()
    assert "the caller's own line" in printed.out
    assert "leaky" not in printed.out + printed.err
    assert not isinstance(sys.stdout, _Routed)  # the wrappers came off with the last capture


def test_release_lease_setting_that_is_not_a_number_is_refused(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TURNOUT_LEASE_SECONDS", "a minute")
    with pytest.raises(turnout.ConfigurationError, match="TURNOUT_LEASE_SECONDS must be a number"):
        Turnout(str(db_path))
