"""Reliability with real processes on real databases: RELIABILITY.md C1, C2, C3, F1 and L1.

Each case runs on SQLite and on PostgreSQL (the ``registry_url`` fixture). The runners are real
processes: the ``turnout`` CLI, or ``runner_process.py`` serving a ``Turnout`` handle over pipes
(long-lived, so that many rounds cost no start-ups). Plugins run inline, in the runner's own
process: pausing or killing the runner pauses or kills the plugin with it. The in-process
versions of these cases, with injected clocks, are in test_idempotency.py.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import read_calls
from runner_process import runners
from sqlalchemy.engine import make_url

from turnout import Status, Turnout
from turnout.releases import TERMINAL

pytestmark = [pytest.mark.usefixtures("plugin_site"), pytest.mark.slow]

LEASE = 1.0
"""Seconds: the lease of the CLI runners of C3 and F1 (TURNOUT_LEASE_SECONDS)."""


# Helpers -----------------------------------------------------------------------------------


def turnout_cli() -> str:
    return shutil.which("turnout", path=str(Path(sys.executable).parent)) or "turnout"


def cli_env() -> dict[str, str]:
    return {**os.environ, "TURNOUT_LEASE_SECONDS": str(LEASE)}


def start_cli(
    url: str, *args: str, logs: Path, name: str, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """A ``turnout`` job in a process group of its own, its output in ``logs/name.*``."""
    with (logs / f"{name}.out").open("wb") as out, (logs / f"{name}.err").open("wb") as err:
        return subprocess.Popen(
            [turnout_cli(), "--db", url, *args],
            stdout=out,
            stderr=err,
            env={**cli_env(), **(env or {})},
            start_new_session=True,
        )


def run_cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [turnout_cli(), "--db", url, *args],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=120,
        check=False,
    )


def wait_for(condition: Callable[[], bool], *, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def called(path: Path, key: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return any(call["key"] == key for call in read_calls(path))
        except ValueError:  # a line being written
            return False

    return check


def keys_called(path: Path) -> Counter[str]:
    return Counter(str(call["key"]) for call in read_calls(path))


def busy_in_database(url: str) -> bool:
    """Whether another connection is inside a write transaction on the registry right now."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        conn = sqlite3.connect(str(parsed.database), timeout=0, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
        except sqlite3.OperationalError:
            return True
        finally:
            conn.close()
        return False
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND backend_type = 'client backend' "
            "AND state <> 'idle'"
        ).fetchone()
    return row is not None and row[0] > 0


def pause(process: subprocess.Popen[bytes], url: str) -> None:
    """SIGSTOP a runner, at a moment it holds no transaction open.

    Its heartbeat writes for a millisecond every third of the lease; a runner frozen inside
    that write would hold SQLite's write lock (or a PostgreSQL row lock) until it wakes, and
    every other runner would wait on it. That is not the case under test, so avoid it.
    """
    for _ in range(100):
        os.killpg(process.pid, signal.SIGSTOP)
        time.sleep(0.05)
        if not busy_in_database(url):
            return
        os.killpg(process.pid, signal.SIGCONT)
        time.sleep(0.01)
    raise AssertionError("could not pause the runner outside a database transaction")


def signal_group(process: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
            os.killpg(process.pid, sig)


def assert_expected(answers: list[dict[str, Any]], allowed: set[str]) -> None:
    unexpected = [a for a in answers if a["outcome"] not in allowed]
    assert not unexpected, unexpected


# C1 ----------------------------------------------------------------------------------------

C1_PROCESSES = 12
C1_ROUNDS = 50


def test_c1_processes_submitting_one_key_at_once_call_the_plugin_once(
    registry_url: str, tmp_path: Path, calls_file: Path
) -> None:
    """12 processes release the same key at the same moment, 50 times, one new key a round.

    Each round is a barrier: every runner is idle, blocked reading its pipe, when the round's
    request is written to all of them. Exactly one call per key reaches the plugin; every other
    process answers "in progress" (exit 75) or with the stored outcome, never another error.
    Those that heard "in progress" ask again once the round is over and get the stored outcome.
    """
    with Turnout(registry_url) as tt:
        # The plugin takes 50 ms, so that the others find the claim held, not yet finished.
        tt.set_target(
            "site",
            "echo@1.0.0",
            config={"calls": str(calls_file), "sleep": 0.05},
            isolation="inline",
        )
    in_progress = 0
    with runners(registry_url, C1_PROCESSES, tmp_path / "logs") as workers:
        for i, worker in enumerate(workers):  # warm: connections, plugin, config validation
            worker.send({"op": "release", "target": "site", "artifact": "w.tgz", "key": f"w{i}"})
        assert_expected([worker.recv() for worker in workers], {"ran"})
        for round_ in range(C1_ROUNDS):
            request = {
                "op": "release",
                "target": "site",
                "artifact": f"build-{round_}.tgz",
                "key": f"round-{round_}",
            }
            for worker in workers:
                worker.send(request)
            answers = [worker.recv() for worker in workers]
            assert_expected(answers, {"ran", "reused", "in_progress"})
            ran = [a for a in answers if a["outcome"] == "ran"]
            assert len(ran) == 1, answers
            (winner,) = ran
            assert (winner["status"], winner["attempts"]) == ("succeeded", 1)
            assert {a["id"] for a in answers} == {winner["id"]}
            for answer in answers:
                if answer["outcome"] == "reused":
                    assert answer["result"] == winner["result"]
            waiting = [
                w for w, a in zip(workers, answers, strict=True) if a["outcome"] == "in_progress"
            ]
            in_progress += len(waiting)
            assert all(a["exit_code"] == 75 for a in answers if a["outcome"] == "in_progress")
            for worker in waiting:
                worker.send(request)
            for worker in waiting:
                again = worker.recv()
                assert again["outcome"] == "reused", again
                assert (again["id"], again["result"]) == (winner["id"], winner["result"])
    # The claim is committed before the plugin runs: the others saw it held.
    assert in_progress > 0
    calls = keys_called(calls_file)
    assert calls == Counter(
        [f"round-{r}" for r in range(C1_ROUNDS)] + [f"w{i}" for i in range(C1_PROCESSES)]
    )
    with Turnout(registry_url) as tt:
        records = tt.ledger.recent(target="site", limit=None)
    assert len(records) == C1_ROUNDS + C1_PROCESSES
    assert {(r.status, r.attempts) for r in records} == {(Status.SUCCEEDED, 1)}


# C2 ----------------------------------------------------------------------------------------

C2_PROCESSES = 8
C2_ROUNDS = 15


def set_target_command(name: str, config: dict[str, Any]) -> dict[str, Any]:
    return {
        "op": "set_target",
        "name": name,
        "plugin": "echo@1.0.0",
        "config": config,
        "isolation": "inline",
    }


def test_c2_processes_reading_then_writing_one_row_never_see_a_lock_error(
    registry_url: str, tmp_path: Path, calls_file: Path
) -> None:
    """8 processes change one target's row at once (read it, validate, write it), and release.

    No "database is locked" (or any registry error) reaches a caller; every change is a new
    revision, none lost (revisions 1..N with no gap); every release succeeds.
    """
    with Turnout(registry_url) as tt:
        tt.set_target("site", "echo@1.0.0", config={"calls": str(calls_file)}, isolation="inline")
    with runners(registry_url, C2_PROCESSES, tmp_path / "logs") as workers:
        for round_ in range(C2_ROUNDS):
            for w, worker in enumerate(workers):
                config = {"calls": str(calls_file), "writer": w, "round": round_}
                worker.send(set_target_command("site", config))
                key = f"w{w}-r{round_}"
                worker.send({"op": "release", "target": "site", "artifact": "a.tgz", "key": key})
            answers = [worker.recv() for worker in workers for _ in range(2)]
            assert_expected(answers, {"ok", "ran"})
    assert len(read_calls(calls_file)) == C2_PROCESSES * C2_ROUNDS
    with Turnout(registry_url) as tt:
        history = tt.registry.target_history("site")
        records = tt.ledger.recent(target="site", limit=None)
    changes = 1 + C2_PROCESSES * C2_ROUNDS
    assert [h.revision for h in history] == list(range(1, changes + 1))
    assert len({json.dumps(h.snapshot, sort_keys=True) for h in history}) == changes
    assert len(records) == C2_PROCESSES * C2_ROUNDS
    assert {r.status for r in records} == {Status.SUCCEEDED}


C2_NEW_TARGETS = 5


def test_c2_processes_creating_one_target_at_once_all_succeed(
    registry_url: str, tmp_path: Path, calls_file: Path
) -> None:
    """8 processes set the same new target at once on an empty registry, then release to it.

    Each finds no row and inserts one (the target; on the first round also the plugin version
    it records on first use): one insert wins, the others' writes become changes of its row.
    No registry error reaches a caller.
    """
    with runners(registry_url, C2_PROCESSES, tmp_path / "logs") as workers:
        for round_ in range(C2_NEW_TARGETS):
            name = f"new-{round_}"
            for w, worker in enumerate(workers):
                worker.send(set_target_command(name, {"calls": str(calls_file), "writer": w}))
                worker.send({"op": "release", "target": name, "artifact": "a.tgz", "key": f"w{w}"})
            answers = [worker.recv() for worker in workers for _ in range(2)]
            assert_expected(answers, {"ok", "ran"})
    assert len(read_calls(calls_file)) == C2_PROCESSES * C2_NEW_TARGETS
    with Turnout(registry_url) as tt:
        for round_ in range(C2_NEW_TARGETS):
            history = tt.registry.target_history(f"new-{round_}")
            assert [h.revision for h in history] == list(range(1, C2_PROCESSES + 1))
        (plugin,) = tt.registry.plugin_versions()
        assert (plugin.plugin_id, plugin.version) == ("echo", "1.0.0")


# C3 ----------------------------------------------------------------------------------------


def test_c3_a_paused_runner_taken_over_cannot_record_its_outcome(
    registry_url: str, tmp_path: Path, calls_file: Path
) -> None:
    """A is frozen (SIGSTOP) mid-call past its lease; B takes over and finishes; A wakes.

    The plugin takes 3 s and records the deploy only when it finishes, so B's probe truthfully
    answers "not deployed" and B calls it again (attempt 2, same key). A's late write of its
    outcome is refused by the fencing token: A exits 75 with the lease-lost message, and the
    record is B's.
    """
    deployed = tmp_path / "deployed.jsonl"
    with Turnout(registry_url) as tt:
        tt.set_target(
            "site",
            "echo@1.0.0",
            config={"calls": str(calls_file), "deployed": str(deployed), "sleep": 3},
            isolation="inline",
        )
    release = ("release", "site", "a.tgz", "--key", "k1", "--json")
    a = start_cli(registry_url, *release, logs=tmp_path, name="a")
    try:
        wait_for(called(calls_file, "k1"), what="A's plugin call")
        pause(a, registry_url)
        time.sleep(LEASE * 1.5)  # A's lease lapses: nothing renews it while A is stopped
        b = run_cli(registry_url, *release)
        assert b.returncode == 0, b.stderr
        by_b = json.loads(b.stdout)
        assert (by_b["status"], by_b["attempts"]) == ("succeeded", 2)
        assert by_b["result"]["attempt"] == 2
        assert [(c["key"], c["attempt"]) for c in read_calls(calls_file)] == [("k1", 1), ("k1", 2)]
        assert [c["attempt"] for c in read_calls(deployed)] == [2]
    finally:
        signal_group(a, signal.SIGCONT)
        code = a.wait(timeout=60)
    assert code == 75
    a_err = (tmp_path / "a.err").read_text()
    assert f"release {by_b['id']} was taken over by another runner" in a_err, a_err
    assert (tmp_path / "a.out").read_text() == ""
    with Turnout(registry_url) as tt:
        record = tt.ledger.find("site", "k1")
    assert record is not None
    assert (record.id, record.status, record.attempts) == (by_b["id"], Status.SUCCEEDED, 2)
    assert record.result == by_b["result"]
    assert len(read_calls(calls_file)) == 2  # A's call finished after waking; nobody called again


# F1 ----------------------------------------------------------------------------------------


def test_f1_runner_killed_after_deploying_is_never_run_blind_again(
    registry_url: str, tmp_path: Path
) -> None:
    """Runners SIGKILLed after their plugin deployed, before the outcome was recorded.

    After the lease, the same key again (from a new process) or ``turnout reconcile``: with a
    probe (echo) the release is ``reconciled`` without a second call; without one (plain, not
    idempotent) it is ``unknown`` (exit 75) and nothing is called, until a human settles it.
    """
    calls = {"echo": tmp_path / "echo.jsonl", "plain": tmp_path / "plain.jsonl"}
    with Turnout(registry_url) as tt:
        for target, plugin in (("echo", "echo@1.0.0"), ("plain", "plain@0.1.0")):
            # Each call records itself (the deploy), then takes 30 s to return.
            config = {"calls": str(calls[target]), "sleep": 30}
            tt.set_target(target, plugin, config=config, isolation="inline")
    jobs = {
        (target, key): start_cli(
            registry_url,
            *("release", target, "a.tgz", "--key", key),
            logs=tmp_path,
            name=f"{target}-{key}",
        )
        for target in calls
        for key in ("k1", "k2")
    }
    try:
        for (target, key), job in jobs.items():
            wait_for(called(calls[target], key), what=f"the call of {target}/{key}")
            signal_group(job)
            assert job.wait(timeout=30) == -signal.SIGKILL
    finally:
        for job in jobs.values():
            signal_group(job)
            job.wait(timeout=30)
    time.sleep(LEASE * 1.5)
    with Turnout(registry_url) as tt:
        abandoned = {(r.target, r.idempotency_key): r for r in tt.ledger.abandoned()}
    assert {k: r.status for k, r in abandoned.items()} == dict.fromkeys(jobs, Status.RUNNING)
    ids = {k: r.id for k, r in abandoned.items()}

    # The event is redelivered: the probe finds the deploy.
    again = run_cli(registry_url, "release", "echo", "a.tgz", "--key", "k1", "--json")
    assert again.returncode == 0, again.stderr
    record = json.loads(again.stdout)
    assert (record["id"], record["status"]) == (ids["echo", "k1"], "reconciled")
    assert record["result"] == {"probed": "k1", "calls": 1}

    # Without a probe, on a target not marked idempotent: unknown, nothing called.
    again = run_cli(registry_url, "release", "plain", "a.tgz", "--key", "k1", "--json")
    assert again.returncode == 75, again.stderr
    assert json.loads(again.stdout)["status"] == "unknown"
    assert "may or may not have deployed" in again.stderr
    assert f"turnout reconcile {ids['plain', 'k1']} --as succeeded|failed" in again.stderr

    # turnout reconcile takes over the rest and reports what it found.
    reconciled = run_cli(registry_url, "reconcile", "--json")
    assert reconciled.returncode == 75, reconciled.stderr
    rows = {row["release"]: (row["was"], row["now"]) for row in json.loads(reconciled.stdout)}
    assert rows == {
        ids["echo", "k2"]: ("running", "reconciled"),
        ids["plain", "k1"]: ("unknown", "unknown"),
        ids["plain", "k2"]: ("running", "unknown"),
    }
    assert keys_called(calls["echo"]) == keys_called(calls["plain"]) == Counter(["k1", "k2"])

    # A human settles the unknown ones; redeliveries then answer from the record.
    with Turnout(registry_url) as tt:
        tt.settle(ids["plain", "k1"], "succeeded", actor="ops", reason="the files are there")
        tt.settle(ids["plain", "k2"], "failed", actor="ops", reason="nothing there")
    assert run_cli(registry_url, "release", "plain", "a.tgz", "--key", "k1").returncode == 0
    assert run_cli(registry_url, "release", "plain", "a.tgz", "--key", "k2").returncode == 1
    done = run_cli(registry_url, "reconcile")
    assert done.returncode == 0, done.stderr
    assert "nothing to reconcile" in done.stderr
    assert keys_called(calls["echo"]) == keys_called(calls["plain"]) == Counter(["k1", "k2"])
    with Turnout(registry_url) as tt:
        final = {(r.target, r.idempotency_key): r.status for r in tt.ledger.recent(limit=None)}
    assert final == {
        ("echo", "k1"): Status.RECONCILED,
        ("echo", "k2"): Status.RECONCILED,
        ("plain", "k1"): Status.RECONCILED,
        ("plain", "k2"): Status.FAILED,
    }


# L1 ----------------------------------------------------------------------------------------

# RELIABILITY.md L1 at full size: 2,000 deliveries over 50 targets.
L1_TARGETS = 50
L1_EVENTS = 1400
L1_DUPLICATES = 600  # 30% of the 2,000 deliveries
L1_LATE = 200  # 10% of the deliveries arrive later than their place
L1_BROKEN = range(5)  # targets whose releases fail until their config is fixed
L1_FLAKY = range(5, 8)  # targets whose first attempt fails transiently


def l1_config(n: int, calls: Path, deployed: Path, *, fixed: bool = False) -> dict[str, Any]:
    config: dict[str, Any] = {"calls": str(calls), "deployed": str(deployed)}
    if n in L1_BROKEN and not fixed:
        config["fail_with"] = "permanent"
    if n in L1_FLAKY:
        config |= {"fail_with": "connection", "fail_times": 1}
    return config


def l1_stream(rng: random.Random) -> tuple[list[list[str]], list[list[str]]]:
    """The events, and their delivery: 30% duplicates, 10% out of order."""
    events = [
        [f"t{n % L1_TARGETS:02d}", f"/builds/build-{n}.tgz", f"ev-{n}"] for n in range(L1_EVENTS)
    ]
    stream = list(events)
    for event in rng.sample(events, L1_DUPLICATES):
        stream.insert(rng.randint(stream.index(event) + 1, len(stream)), event)
    for _ in range(L1_LATE):
        late = stream.pop(rng.randrange(len(stream) - 1))
        stream.insert(rng.randint(len(stream) // 2, len(stream)), late)
    return events, stream


def test_l1_replay_storm_deploys_each_artifact_once(registry_url: str, tmp_path: Path) -> None:
    """2,000 deliveries over 50 targets, redelivered twice, failures replayed twice.

    Delivered by two runners sharing the stream, then redelivered in full by one runner, then
    by two runners at once; the broken targets are fixed and their failures replayed by two
    runners at once, then once more. One effective deploy per (target, artifact); every record
    terminal; a failed release's replay runs once.
    """
    calls, deployed = tmp_path / "calls.jsonl", tmp_path / "deployed.jsonl"
    events, stream = l1_stream(random.Random(1842))  # noqa: S311 - test data
    with Turnout(registry_url) as tt:
        for n in range(L1_TARGETS):
            config = l1_config(n, calls, deployed)
            tt.set_target(f"t{n:02d}", "echo@1.0.0", config=config, isolation="inline")
    broken = {f"t{n:02d}" for n in L1_BROKEN}
    flaky = {f"t{n:02d}" for n in L1_FLAKY}
    failing = {key for target, _, key in events if target in broken}

    def deliver(workers: list[Any], shares: list[list[list[str]]]) -> list[dict[str, Any]]:
        for worker, share in zip(workers, shares, strict=True):
            worker.send({"op": "deliver", "events": share})
        return [a for worker in workers for a in worker.recv(timeout=300)["answers"]]

    with runners(registry_url, 2, tmp_path / "logs", backoff=False) as workers:
        # Two consumers of one queue.
        first = deliver(workers, [stream[0::2], stream[1::2]])
        assert_expected(first, {"ran", "reused", "in_progress", "failed"})
        assert {a["key"] for a in first if a["outcome"] == "ran"} == {
            key for target, _, key in events if target not in broken
        }
        assert {a["key"] for a in first if a["outcome"] == "failed"} == failing
        assert {a["error_type"] for a in first if a["outcome"] == "failed"} == {
            "ReleaseFailedError"
        }
        attempts = {(a["key"], a["attempts"]) for a in first if a["outcome"] == "ran"}
        assert attempts == {(k, 2 if t in flaky else 1) for t, _, k in events if t not in broken}
        # Everything again, from one runner, then from both at once: all answered from records.
        for shares in ([stream], [stream, stream[::-1]]):
            again = deliver(workers[: len(shares)], shares)
            assert_expected(again, {"reused", "failed"})
            assert all(a["reused"] for a in again)
        assert len(read_calls(calls)) == L1_EVENTS + len([e for e in events if e[0] in flaky])

        with Turnout(registry_url) as tt:
            for n in L1_BROKEN:
                config = l1_config(n, calls, deployed, fixed=True)
                tt.set_target(f"t{n:02d}", "echo@1.0.0", config=config, reason="the fix")
        # The failures, replayed from two runners at once, then once more from one.
        for worker in workers:
            worker.send({"op": "replay", "since": 3600})
        replayed = [a for worker in workers for a in worker.recv(timeout=300)["answers"]]
        assert_expected(replayed, {"ran", "reused", "in_progress"})
        assert len(replayed) == 2 * len(failing)
        ran = Counter(a["original"] for a in replayed if a["outcome"] == "ran")
        assert len(ran) == len(failing)
        assert set(ran.values()) == {1}
        once_more = workers[0].request({"op": "replay", "since": 3600}, timeout=300)["answers"]
        assert_expected(once_more, {"reused"})
        assert len(once_more) == len(failing)

    effective = Counter((d["target"], d["artifact"]) for d in read_calls(deployed))
    assert effective == Counter((target, artifact) for target, artifact, _ in events)
    per_key = keys_called(calls)
    for target, _, key in events:
        assert per_key[key] == (2 if target in flaky else 1), key
    assert sum(1 for key in per_key if key.startswith("replay.")) == len(failing)
    assert all(count == 1 for key, count in per_key.items() if key.startswith("replay."))
    with Turnout(registry_url) as tt:
        records = tt.ledger.recent(limit=None)
    assert len(records) == L1_EVENTS + len(failing)
    assert all(r.status in TERMINAL for r in records)
    originals = {r.id: r for r in records if r.replay_of is None}
    replays = [r for r in records if r.replay_of is not None]
    assert {r.idempotency_key for r in originals.values() if r.status is Status.FAILED} == failing
    assert sorted(originals[r.replay_of].idempotency_key for r in replays) == sorted(failing)
    assert {r.status for r in replays} == {Status.SUCCEEDED}


def _serving_children(pid: int) -> set[int]:
    """The processes whose parent is ``pid`` and that run a plugin worker (``_serve.py``)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            if ppid == pid and b"_serve.py" in (entry / "cmdline").read_bytes():
                found.add(int(entry.name))
    return found


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_no_plugin_worker_survives_a_killed_runner(db_path: Path, tmp_path: Path) -> None:
    # A runner (a job, a Celery pool process) dies with SIGKILL while it owns a warm plugin
    # worker in a session of its own: the worker sees its request pipe close and exits,
    # instead of lingering for every runner that ever died.
    calls = tmp_path / "calls.jsonl"
    with runners(f"sqlite:///{db_path}", 1, tmp_path / "logs") as (runner,):
        target = {"name": "site", "plugin": "echo@1.0.0", "config": {"calls": str(calls)}}
        assert runner.request({"op": "set_target", **target, "isolation": "process"})
        answer = runner.request({"op": "release", "target": "site", "artifact": "a", "key": "k1"})
        assert answer["outcome"] == "ran", answer
        workers = _serving_children(runner.process.pid)
        assert len(workers) == 1, workers
        runner.process.kill()
        runner.process.wait()
        wait_for(
            lambda: not any(_running(pid) for pid in workers),
            what="the orphaned plugin worker to exit",
            timeout=15,
        )
    assert len(read_calls(calls)) == 1


# F10: SIGTERM during a release ------------------------------------------------------------


def test_f10_sigterm_lets_a_release_finish_in_its_grace_else_records_it_unknown(
    registry_url: str, tmp_path: Path
) -> None:
    """A job runner stops a ``turnout release`` with SIGTERM (a pod deleted, a job cancelled).

    A call that ends within ``TURNOUT_TERM_GRACE`` is recorded as usual and the exit code is
    the release's. One that does not is recorded ``unknown`` (it may have deployed), its
    worker is stopped, and turnout exits 75; the same key again reconciles it with the probe.
    """
    calls = tmp_path / "calls.jsonl"
    with Turnout(registry_url) as tt:
        config = {"calls": str(calls), "note_pid": True}
        tt.set_target("quick", "echo@1.0.0", config={**config, "sleep": 1}, isolation="inline")
        tt.set_target("slow", "echo@1.0.0", config={**config, "sleep": 60}, isolation="process")
    release = ("release", "quick", "a.tgz", "--key", "q1", "--json")
    quick = start_cli(
        registry_url, *release, logs=tmp_path, name="quick", env={"TURNOUT_TERM_GRACE": "10"}
    )
    release = ("release", "slow", "a.tgz", "--key", "s1", "--json")
    slow = start_cli(
        registry_url, *release, logs=tmp_path, name="slow", env={"TURNOUT_TERM_GRACE": "0.5"}
    )
    try:
        wait_for(called(calls, "q1"), what="the quick call")
        quick.send_signal(signal.SIGTERM)
        assert quick.wait(timeout=30) == 0, (tmp_path / "quick.err").read_text()
        assert "letting the release under way finish" in (tmp_path / "quick.err").read_text()
        assert json.loads((tmp_path / "quick.out").read_text())["status"] == "succeeded"

        wait_for(called(calls, "s1"), what="the slow call")
        started = time.monotonic()
        slow.send_signal(signal.SIGTERM)
        assert slow.wait(timeout=30) == 75
        assert time.monotonic() - started < 0.5 + 2 * worker_grace() + 5
        err = (tmp_path / "slow.err").read_text()
        assert "interrupted: stopped by SIGTERM after its grace period of 0.5 s" in err
        left = json.loads((tmp_path / "slow.out").read_text())  # --json: the record as left
        assert (left["status"], left["idempotency_key"]) == ("unknown", "s1")
    finally:
        for job in (quick, slow):
            signal_group(job)
            job.wait(timeout=30)
    (worker_pid,) = {int(call["pid"]) for call in read_calls(calls) if call["key"] == "s1"}
    with pytest.raises(ProcessLookupError):  # the worker went with it
        os.kill(worker_pid, 0)
    with Turnout(registry_url) as tt:
        record = tt.ledger.find("slow", "s1")
    assert record is not None
    assert (record.status, record.error_type) == (Status.UNKNOWN, "turnout.errors.Interrupted")
    assert "it may have deployed" in (record.error or "")

    again = run_cli(registry_url, "release", "slow", "a.tgz", "--key", "s1", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["status"] == "reconciled"  # the probe found the call
    assert keys_called(calls) == {"q1": 1, "s1": 1}


def worker_grace() -> float:
    from turnout.worker import GRACE

    return GRACE


# F7: the database goes away mid-release ----------------------------------------------------


def test_f7_registry_lost_mid_release_is_a_clear_temporary_error_then_reconciled(
    postgres_registry_url: str, tmp_path: Path
) -> None:
    """PostgreSQL stops taking connections while the plugin runs (its sessions are ended):
    the outcome cannot be written. The runner gets exit 75 with what failed; the claim, made
    before the call, holds; once the database is back and the lease has run out, the same
    key reconciles by the probe, without a second call."""
    import psycopg

    url = postgres_registry_url
    name = make_url(url).database
    server = make_url(url).set(database="postgres").render_as_string(hide_password=False)
    calls = tmp_path / "calls.jsonl"
    with Turnout(url) as tt:
        config = {"calls": str(calls), "sleep": 3}
        tt.set_target("site", "echo@1.0.0", config=config, isolation="inline")
    job = start_cli(url, "release", "site", "a.tgz", "--key", "k1", logs=tmp_path, name="lost")
    try:
        wait_for(called(calls, "k1"), what="the call")
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )
        assert job.wait(timeout=60) == 75
    finally:
        signal_group(job)
        job.wait(timeout=30)
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    err = (tmp_path / "lost.err").read_text()
    where = url.split("://", 1)[1]  # as errors show it: with its driver, without a password
    assert "error: release " in err
    assert "but its outcome could not be recorded: " in err
    assert f"registry postgresql+psycopg://{where} is unavailable" in err
    assert "Traceback" not in err  # the heartbeat's failures too are one line each
    with Turnout(url) as tt:
        record = tt.ledger.find("site", "k1")
    assert record is not None
    assert record.status is Status.RUNNING  # claimed before the call; nothing half-written
    time.sleep(LEASE * 1.5)
    again = run_cli(url, "release", "site", "a.tgz", "--key", "k1", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["status"] == "reconciled"
    assert keys_called(calls)["k1"] == 1


# L2: minutes of two runners and a replay on one SQLite file --------------------------------

L2_SECONDS = 30.0
L2_WAL_LIMIT_MB = 4


@pytest.mark.slow
def test_l2_two_runners_and_replays_on_one_sqlite_file_meet_no_lock_error_and_a_bounded_wal(
    db_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two runners release without pause while a third replays the window's failures, all on
    one SQLite file: every call ends as a release (or a recorded failure), never as a lock
    error, and the WAL file stays bounded. Without turnout's own checkpoints the WAL grows by
    about 1 MB a second here (26-30 MB after 30 s, 54 MB after a minute); with them, and a
    limit of 4 MB, it is emptied whenever it passes the limit."""
    url = str(db_path)
    monkeypatch.setenv("TURNOUT_SQLITE_WAL_LIMIT_MB", str(L2_WAL_LIMIT_MB))
    with Turnout(url) as tt:
        for n in range(4):
            tt.set_target(f"ok{n}", "echo@1.0.0", isolation="inline")
        tt.set_target("broken", "echo@1.0.0", config={"fail_with": "permanent"}, isolation="inline")
    wal = db_path.with_name(db_path.name + "-wal")
    batches = itertools.count()

    def batch(runner: int) -> list[list[str]]:
        number = next(batches)
        return [
            ["broken" if i % 10 == 0 else f"ok{i % 4}", "a.tgz", f"r{runner}-{number}-{i}"]
            for i in range(200)
        ]

    outcomes: Counter[str] = Counter()
    wal_sizes = [0]
    with runners(url, 3, tmp_path / "logs", backoff=False) as workers:
        releasing, replaying = workers[:2], workers[2]
        for n, worker in enumerate(releasing):
            worker.send({"op": "deliver", "events": batch(n)})
        replaying.send({"op": "replay", "since": 3600})
        stop = time.monotonic() + L2_SECONDS
        busy = set(range(3))
        while busy:
            for n in list(busy):
                if not workers[n].answered():
                    continue
                answers = workers[n].recv()["answers"]
                outcomes.update(a["outcome"] for a in answers)
                if time.monotonic() > stop:
                    busy.discard(n)
                elif n < 2:
                    workers[n].send({"op": "deliver", "events": batch(n)})
                else:
                    workers[n].send({"op": "replay", "since": 3600})
            with contextlib.suppress(FileNotFoundError):
                wal_sizes.append(wal.stat().st_size)
            time.sleep(0.02)
    assert set(outcomes) <= {"ran", "failed", "reused"}, outcomes  # no "error", no "crash"
    assert outcomes["ran"] > 1000
    # Without turnout's checkpoints the file only grows (SQLite reuses it from the start, but
    # never makes it smaller): 26-30 MB after 30 s here. With them it is emptied again and
    # again, and spends most of the time near the limit (peaks of 8-17 MB were seen, under
    # load: busy writers fill it at tens of MB a second between two looks).
    limit = L2_WAL_LIMIT_MB << 20
    emptied = sum(1 for before, after in itertools.pairwise(wal_sizes) if after < before)
    assert emptied >= 3, f"the WAL was emptied {emptied} times; sizes up to {max(wal_sizes)}"
    assert statistics.median(wal_sizes) <= 2 * limit, statistics.median(wal_sizes)
    assert max(wal_sizes) <= 8 * limit, max(wal_sizes)
