"""Never twice, never lost: takeovers after a runner died, fencing, unknown, settle, replay."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from helpers import read_calls

from turnout import Status, Turnout
from turnout.cli import cli
from turnout.errors import (
    KeyMismatchError,
    LeaseLostError,
    ReleaseFailedError,
    ReleaseInProgressError,
    ReleaseUnknownError,
    TransientReleaseError,
    UsageError,
)
from turnout.models import utcnow
from turnout.releases import Claim, Ledger, fingerprint
from turnout.store import InstallRequest

pytestmark = pytest.mark.usefixtures("plugin_site")


@pytest.fixture
def tt(db_path: Path) -> Any:
    with Turnout(str(db_path), sleep=lambda _s: None) as handle:
        yield handle


def dead_runner_claim(tt: Turnout, target: str, artifact: str, key: str) -> Claim:
    """Claim a key the way a runner that then died would: its lease is already over."""
    spec = tt.registry.get_target(target)
    past = utcnow() - timedelta(hours=1)
    ledger = Ledger(tt.registry.engine, lease=60, clock=lambda: past)
    claim = ledger.claim(
        target=target,
        key=key,
        fingerprint=fingerprint(target, artifact, spec.plugin_ref, spec.config, {}),
        plugin_ref=spec.plugin_ref,
        artifact=artifact,
        context={},
        decision=tt.resolve(target).record(),
        revision=spec.revision,
    )
    assert isinstance(claim, Claim)
    return claim


def test_idempotency_takeover_probe_says_deployed_runs_nothing(
    tt: Turnout, calls_file: Path
) -> None:
    tt.set_target("site", "echo@1.0.0", config={"calls": str(calls_file)})
    claim = dead_runner_claim(tt, "site", "a.tgz", "k1")
    calls_file.write_text(json.dumps({"key": "k1", "attempt": 1, "version": "1.0.0"}) + "\n")
    record = tt.release("site", "a.tgz", key="k1")
    assert record.id == claim.id
    assert record.status is Status.RECONCILED
    assert record.result == {"probed": "k1", "calls": 1}
    assert record.exit_code == 0
    assert len(read_calls(calls_file)) == 1  # the plugin was asked, not called


def test_idempotency_takeover_probe_says_not_deployed_calls_again_with_the_same_key(
    tt: Turnout, calls_file: Path
) -> None:
    tt.set_target("site", "echo@1.0.0", config={"calls": str(calls_file)})
    claim = dead_runner_claim(tt, "site", "a.tgz", "k1")
    record = tt.release("site", "a.tgz", key="k1")
    assert record.id == claim.id
    assert record.status is Status.SUCCEEDED
    assert record.attempts == 2
    assert read_calls(calls_file) == [
        {"key": "k1", "attempt": 2, "version": "1.0.0", "target": "site"}
    ]


def test_idempotency_takeover_without_probe_is_unknown_and_runs_nothing(
    tt: Turnout, calls_file: Path
) -> None:
    tt.set_target("site", "plain@0.1.0", config={"calls": str(calls_file)})
    claim = dead_runner_claim(tt, "site", "a.tgz", "k1")
    with pytest.raises(ReleaseUnknownError) as raised:
        tt.release("site", "a.tgz", key="k1")
    assert raised.value.exit_code == 75
    assert f"turnout reconcile {claim.id} --as succeeded|failed" in str(raised.value)
    record = tt.ledger.get(claim.id)
    assert record is not None
    assert record.status is Status.UNKNOWN
    assert read_calls(calls_file) == []
    # Asking again asks again (still unknown), and still calls nothing.
    with pytest.raises(ReleaseUnknownError):
        tt.release("site", "a.tgz", key="k1")
    assert read_calls(calls_file) == []


def test_idempotency_takeover_of_an_idempotent_target_calls_again(
    tt: Turnout, calls_file: Path
) -> None:
    tt.set_target("site", "plain@0.1.0", config={"calls": str(calls_file)}, idempotent=True)
    dead_runner_claim(tt, "site", "a.tgz", "k1")
    record = tt.release("site", "a.tgz", key="k1")
    assert record.status is Status.SUCCEEDED
    assert read_calls(calls_file) == [{"key": "k1", "attempt": 2}]


def test_idempotency_takeover_interrupted_while_probing_is_left_unknown_at_once(
    tt: Turnout, calls_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SIGTERM's grace ran out during a takeover's probe: recorded unknown (not held until
    # the lease ends), so that the next call, or turnout reconcile, asks again at once.
    from turnout.errors import Interrupted

    tt.set_target("site", "echo@1.0.0", config={"calls": str(calls_file)}, isolation="inline")
    claim = dead_runner_claim(tt, "site", "a.tgz", "k1")
    releaser = tt._releaser(tt.registry.get_target("site").plugin_ref, "inline")

    def stopped(**_kwargs: Any) -> Any:
        raise Interrupted(1.0)

    monkeypatch.setattr(releaser, "probe", stopped)
    with pytest.raises(Interrupted):
        tt.release("site", "a.tgz", key="k1")
    record = tt.ledger.get(claim.id)
    assert record is not None
    assert (record.status, record.error_type) == (Status.UNKNOWN, "turnout.errors.Interrupted")
    assert "while asking the plugin's probe" in (record.error or "")
    monkeypatch.undo()
    again = tt.release("site", "a.tgz", key="k1")  # at once: no lease to wait for
    assert (again.id, again.status) == (claim.id, Status.SUCCEEDED)
    assert [c["attempt"] for c in read_calls(calls_file)] == [2]


def test_idempotency_settle_unknown_as_succeeded_or_failed(tt: Turnout, calls_file: Path) -> None:
    tt.set_target("site", "plain@0.1.0", config={"calls": str(calls_file)})
    deployed = dead_runner_claim(tt, "site", "a.tgz", "k1")
    lost = dead_runner_claim(tt, "site", "a.tgz", "k2")
    for key in ("k1", "k2"):
        with pytest.raises(ReleaseUnknownError):
            tt.release("site", "a.tgz", key=key)
    assert tt.settle(deployed.id, "succeeded", actor="ana", reason="files are there").status is (
        Status.RECONCILED
    )
    assert tt.release("site", "a.tgz", key="k1").reused
    assert tt.settle(lost.id, "failed", actor="ana").status is Status.FAILED
    with pytest.raises(ReleaseFailedError):
        tt.release("site", "a.tgz", key="k2")
    with pytest.raises(UsageError, match="not unknown"):
        tt.settle(deployed.id, "failed", actor="ana")
    assert read_calls(calls_file) == []


def test_idempotency_a_runner_taken_over_cannot_record_its_outcome(
    tt: Turnout, db_path: Path
) -> None:
    """C3 in one process: A's lease lapses, B takes over and finishes; A's write is refused."""
    tt.set_target("site", "echo@1.0.0")
    spec = tt.registry.get_target("site")
    now = [utcnow()]
    ledger_a = Ledger(tt.registry.engine, lease=5, clock=lambda: now[0])
    ledger_b = Ledger(tt.registry.engine, lease=5, clock=lambda: now[0])
    request: dict[str, Any] = {
        "target": "site",
        "key": "k1",
        "fingerprint": fingerprint("site", "a.tgz", spec.plugin_ref, spec.config, {}),
        "plugin_ref": spec.plugin_ref,
        "artifact": "a.tgz",
        "context": {},
    }
    a = ledger_a.claim(**request)
    assert isinstance(a, Claim)
    with pytest.raises(ReleaseInProgressError):
        ledger_b.claim(**request)  # A's lease is live
    now[0] += timedelta(seconds=6)
    b = ledger_b.claim(**request)
    assert isinstance(b, Claim)
    assert b.takeover
    assert b.token != a.token
    ledger_b.move(b, Status.RUNNING, attempts=2)
    ledger_b.move(b, Status.SUCCEEDED, result={"by": "b"})
    with pytest.raises(LeaseLostError):
        ledger_a.move(a, Status.FAILED, error="A woke up late")
    record = tt.ledger.get(a.id)
    assert record is not None
    assert (record.status, record.result) == (Status.SUCCEEDED, {"by": "b"})


def test_idempotency_heartbeat_keeps_a_long_release_alive(tt: Turnout) -> None:
    tt.set_target("site", "echo@1.0.0")
    spec = tt.registry.get_target("site")
    now = [utcnow()]
    ledger = Ledger(tt.registry.engine, lease=5, clock=lambda: now[0])
    claim = ledger.claim(
        target="site",
        key="k1",
        fingerprint=fingerprint("site", "a.tgz", spec.plugin_ref, spec.config, {}),
        plugin_ref=spec.plugin_ref,
        artifact="a.tgz",
        context={},
    )
    assert isinstance(claim, Claim)
    for _ in range(4):  # 12 s of work, a beat every 3 s: the lease never lapses
        now[0] += timedelta(seconds=3)
        assert ledger.heartbeat([claim]) == []
    other = Ledger(tt.registry.engine, lease=5, clock=lambda: now[0])
    with pytest.raises(ReleaseInProgressError):
        other.claim(
            target="site",
            key="k1",
            fingerprint=claim.values["fingerprint"],
            plugin_ref=spec.plugin_ref,
            artifact="a.tgz",
            context={},
        )


# Replay -----------------------------------------------------------------------------------


# C8: the routing moves after a key was claimed ------------------------------------------------


@pytest.fixture
def moving(db_path: Path, wheelhouse: Path, tmp_path: Path) -> Any:
    """A handle whose store has echo 2.0.0 (turnout's own environment has echo 1.0.0)."""
    with Turnout(str(db_path), home=tmp_path / "home", sleep=lambda _s: None) as handle:
        wheel = next(wheelhouse.glob("turnout_echo-2.0.0-*.whl"))
        handle.install_plugin(
            InstallRequest(spec=str(wheel), find_links=[str(wheelhouse)], no_index=True)
        )
        yield handle


def move_to_2(tt: Turnout, calls_file: Path) -> None:
    tt.set_target(
        "site",
        "echo@2.0.0",
        config={"calls": str(calls_file), "sleep": 0},  # another version and another config
        isolation="process",
        max_attempts=3,
        reason="2.0.0 now",
    )


def test_c8_a_key_asked_again_after_the_routing_moved_answers_with_its_release(
    moving: Turnout, calls_file: Path
) -> None:
    tt = moving
    tt.set_target("site", "echo@1.0.0", config={"calls": str(calls_file)}, isolation="inline")
    first = tt.release("site", "a.tgz", key="k1")
    move_to_2(tt, calls_file)
    again = tt.release("site", "a.tgz", key="k1")  # a redelivered message, say
    assert (again.id, again.reused, again.plugin_ref) == (first.id, True, "echo@1.0.0")
    assert again.exit_code == 0
    with pytest.raises(KeyMismatchError) as other:  # what the caller asks still counts
        tt.release("site", "b.tgz", key="k1")
    assert other.value.differs == ["artifact"]
    assert tt.release("site", "a.tgz", key="k2").plugin_ref == "echo@2.0.0"
    assert [(c["key"], c["version"]) for c in read_calls(calls_file)] == [
        ("k1", "1.0.0"),
        ("k2", "2.0.0"),
    ]


def test_c8_a_transient_failure_resumed_after_the_routing_moved_stays_on_its_version(
    moving: Turnout, calls_file: Path
) -> None:
    tt = moving
    failing = {"calls": str(calls_file), "fail_with": "connection", "fail_times": 2}
    tt.set_target("site", "echo@1.0.0", config=failing, isolation="inline", max_attempts=1)
    with pytest.raises(TransientReleaseError):
        tt.release("site", "a.tgz", key="k1")
    move_to_2(tt, calls_file)
    with pytest.raises(TransientReleaseError):  # attempt 2: revision 1's config still fails
        tt.release("site", "a.tgz", key="k1")
    record = tt.release("site", "a.tgz", key="k1")
    assert (record.status, record.attempts, record.plugin_ref) == (
        Status.SUCCEEDED,
        3,
        "echo@1.0.0",
    )
    assert record.decision is not None
    assert record.decision["revision"] == 1
    assert [(c["key"], c["attempt"], c["version"]) for c in read_calls(calls_file)] == [
        ("k1", 1, "1.0.0"),
        ("k1", 2, "1.0.0"),
        ("k1", 3, "1.0.0"),
    ]


def test_c8_a_takeover_after_the_routing_moved_reconciles_on_the_claimed_version(
    moving: Turnout, calls_file: Path
) -> None:
    tt = moving
    tt.set_target("site", "echo@1.0.0", config={"calls": str(calls_file)}, isolation="inline")
    claim = dead_runner_claim(tt, "site", "a.tgz", "k1")
    move_to_2(tt, calls_file)
    (settled,) = tt.reconcile()
    assert settled.error is None
    after = settled.record
    assert after is not None
    # The probe (1.0.0's) found no call, so 1.0.0 was called again with the same key.
    assert (after.id, after.status, after.plugin_ref) == (claim.id, Status.SUCCEEDED, "echo@1.0.0")
    assert read_calls(calls_file) == [
        {"key": "k1", "attempt": 2, "version": "1.0.0", "target": "site"}
    ]


def test_replay_reruns_failures_under_the_new_mapping_once(tt: Turnout, calls_file: Path) -> None:
    tt.set_target("site", "echo@1.0.0", config={"calls": str(calls_file), "fail_with": "permanent"})
    for i in range(3):
        with pytest.raises(ReleaseFailedError):
            tt.release("site", f"build-{i}.tgz", key=f"k{i}", context={"customer": f"c{i % 2}"})
    tt.set_target("site", "echo@1.0.0", config={"calls": str(calls_file)}, reason="the fix")
    originals = tt.replay_candidates(since=timedelta(minutes=20))
    assert [o.idempotency_key for o in originals] == ["k0", "k1", "k2"]
    replays = tt.replay(originals)
    assert all(r.record is not None and r.record.status is Status.SUCCEEDED for r in replays)
    assert [r.record.replay_of for r in replays if r.record] == [o.id for o in originals]
    assert len(read_calls(calls_file)) == 6  # 3 failures, then 3 replays
    # The same window again: the replays are not candidates, the originals' keys are used.
    again = tt.replay(tt.replay_candidates(since=timedelta(minutes=20)))
    assert all(r.record is not None and r.record.reused for r in again)
    assert len(read_calls(calls_file)) == 6


def test_replay_filters_by_customer_status_and_dry_run(tt: Turnout, calls_file: Path) -> None:
    tt.set_target("site", "echo@1.0.0", config={"calls": str(calls_file)})
    tt.release("site", "a.tgz", key="ok-1", context={"customer": "acme"})
    tt.release("site", "b.tgz", key="ok-2", context={"customer": "globex"})
    assert tt.replay_candidates(since=timedelta(hours=1)) == []
    everything = tt.replay_candidates(since=timedelta(hours=1), statuses=tuple(Status))
    assert len(everything) == 2
    acme = tt.replay_candidates(since=timedelta(hours=1), statuses=tuple(Status), customer="acme")
    assert [r.idempotency_key for r in acme] == ["ok-1"]
    planned = tt.replay(acme, dry_run=True)
    assert planned[0].record is None
    assert planned[0].plugin_ref == "echo@1.0.0"
    assert len(read_calls(calls_file)) == 2


def test_replay_cli_stops_between_releases_on_sigterm(
    db_path: Path, calls_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # F10 for a command of several releases: SIGTERM lets the replay under way finish, then
    # no other starts; running the same replay again does the rest, each once.
    import os
    import signal
    import threading

    with Turnout(str(db_path)) as handle:
        failing = {"calls": str(calls_file), "fail_with": "permanent"}
        handle.set_target("site", "echo@1.0.0", config=failing, isolation="inline")
        for n in range(3):
            with pytest.raises(ReleaseFailedError):
                handle.release("site", "a.tgz", key=f"k{n}")
        fixed = {"calls": str(calls_file), "sleep": 1}
        handle.set_target("site", "echo@1.0.0", config=fixed, isolation="inline")
    monkeypatch.setenv("TURNOUT_TERM_GRACE", "30")
    runner = CliRunner()
    stop = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM))
    stop.start()
    try:
        first = runner.invoke(cli, ["--db", str(db_path), "replay", "--since", "1h"])
    finally:
        stop.cancel()
    assert first.exit_code == 75, first.stderr
    assert "stopped by SIGTERM between two releases" in first.stderr
    assert "run it again for the rest" in first.stderr
    with Turnout(str(db_path)) as handle:
        replays = [r for r in handle.ledger.recent(target="site") if r.replay_of]
    assert [r.status for r in replays] == [Status.SUCCEEDED]  # the one under way finished
    rest = runner.invoke(cli, ["--db", str(db_path), "replay", "--since", "1h"])
    assert rest.exit_code == 0, rest.stderr
    with Turnout(str(db_path)) as handle:
        replays = [r for r in handle.ledger.recent(target="site") if r.replay_of]
    assert sorted(r.replay_of or "" for r in replays) == sorted(
        {r.replay_of or "" for r in replays}
    )
    assert len(replays) == 3


def test_replay_exit_code_puts_what_retrying_cannot_fix_first(
    db_path: Path, calls_file: Path
) -> None:
    # A job runner retries on 75 only: a replay whose target is gone (a configuration error)
    # must not say "try again later", nor must a permanent failure beside a transient one.
    with Turnout(str(db_path)) as handle:
        failing = {"calls": str(calls_file), "fail_with": "permanent"}
        for target in ("gone", "still-failing", "flaky"):
            handle.set_target(target, "echo@1.0.0", config=failing, isolation="inline")
            with pytest.raises(ReleaseFailedError):
                handle.release(target, "a.tgz", key="k1")
        handle.remove_target("gone")
        handle.set_target(
            "flaky",
            "echo@1.0.0",
            config={"calls": str(calls_file), "fail_with": "connection"},
            isolation="inline",
            max_attempts=1,
        )
    runner = CliRunner()

    def replay(*targets: str) -> tuple[int, list[Any]]:
        codes, rows = set(), []
        for target in targets:
            result = runner.invoke(
                cli, ["--db", str(db_path), "replay", "--since", "1h", "--target", target, "--json"]
            )
            codes.add(result.exit_code)
            rows += json.loads(result.stdout)
        return max(codes), rows

    code, (row,) = replay("gone")
    assert code == 78
    assert "unknown target 'gone'" in row["error"]
    assert replay("flaky")[0] == 75
    both = runner.invoke(cli, ["--db", str(db_path), "replay", "--since", "1h", "--json"])
    assert {r["target"] for r in json.loads(both.stdout)} == {"gone", "still-failing", "flaky"}
    assert both.exit_code == 1  # still-failing failed permanently: the first to look at


def test_replay_and_reconcile_cli(db_path: Path, calls_file: Path) -> None:
    runner = CliRunner()

    def run(*args: str) -> Any:
        return runner.invoke(cli, ["--db", str(db_path), *args], catch_exceptions=False)

    with Turnout(str(db_path)) as handle:
        handle.set_target(
            "site", "echo@1.0.0", config={"calls": str(calls_file), "fail_with": "permanent"}
        )
        with pytest.raises(ReleaseFailedError):
            handle.release("site", "a.tgz", key="k1")
        handle.set_target("site", "plain@0.1.0", config={"calls": str(calls_file)})
        stuck = dead_runner_claim(handle, "site", "b.tgz", "k2")
    dry = run("replay", "--since", "20m", "--dry-run", "--json")
    assert dry.exit_code == 0
    (row,) = json.loads(dry.stdout)
    assert (row["was"], row["plugin"], row["release"]) == ("echo@1.0.0 failed", "plain@0.1.0", None)
    done = run("replay", "--since", "20m")
    assert done.exit_code == 0, done.stderr
    assert "succeeded" in done.stdout
    assert run("replay", "--since", "20m", "--status", "bogus").exit_code == 2
    assert run("replay", "--since", "soon").exit_code == 2
    reconciled = run("reconcile", "--json")
    assert reconciled.exit_code == 75
    assert json.loads(reconciled.stdout)[0]["now"] == "unknown"
    settled = run("reconcile", stuck.id, "--as", "succeeded", "--reason", "checked by hand")
    assert settled.exit_code == 0
    assert "reconciled" in settled.stderr
    assert run("reconcile").exit_code == 0
    assert run("reconcile", stuck.id).exit_code == 2
