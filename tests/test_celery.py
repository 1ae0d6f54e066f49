"""The Celery integration (``turnout[celery]``): the task's outcome mapping, then a real fleet.

The first cases run the task in this process (Celery's ``apply``) against a real registry on
each database, to pin how each outcome maps onto Celery. The last starts real Celery worker
processes on a real Redis broker and a real PostgreSQL registry, enqueues 1,000 releases with
duplicates, kills a worker mid-release and checks that nothing deployed twice.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import celery
import pytest
from helpers import read_calls

import turnout.celery as turnout_celery
from turnout import InvalidKeyError, Status, Turnout, UsageError, runtime
from turnout.releases import TERMINAL, Claim, fingerprint
from turnout.retries import task_countdown
from turnout.store import InstallRequest

pytestmark = pytest.mark.usefixtures("plugin_site")

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379


@pytest.fixture
def task(registry_url: str) -> Iterator[Any]:
    """The ``turnout.release`` task; the registry's default handle is closed afterwards."""
    yield turnout_celery.app.tasks[turnout_celery.TASK_NAME]
    handle = runtime._default.pop(str(runtime._db.database_url(registry_url)), None)
    if handle is not None:
        handle.close()


@pytest.fixture
def tt(registry_url: str) -> Iterator[Turnout]:
    with Turnout(registry_url) as handle:
        yield handle


@pytest.fixture
def countdowns(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every retry the task schedules, by the retry count it was computed for."""
    asked: list[int] = []

    def countdown(retries: int) -> float:
        asked.append(retries)
        return 0.0

    monkeypatch.setattr(turnout_celery, "task_countdown", countdown)
    return asked


def echo_target(tt: Turnout, name: str, calls: Path, **config: Any) -> None:
    tt.set_target(
        name, "echo@1.0.0", config={"calls": str(calls), **config}, isolation="inline", reason="t"
    )


def claim_as_another_runner(handle: Turnout, target: str, key: str) -> Claim:
    """Claim ``key`` for ``a.tgz`` as a release would, without running it (a runner that is
    still at work, or that died)."""
    router = handle._router(target)
    decision = router.resolve({})
    claim = handle.ledger.claim(
        target=target,
        key=key,
        fingerprint=fingerprint(target, "a.tgz", decision.plugin_ref, router.spec.config, {}),
        plugin_ref=decision.plugin_ref,
        artifact="a.tgz",
        context={},
        decision=decision.record(),
        revision=router.spec.revision,
    )
    assert isinstance(claim, Claim)
    return claim


def apply(task: Any, url: str, key: str, target: str = "site") -> Any:
    kwargs = {"target": target, "artifact": "a.tgz", "key": key, "db": url}
    return task.apply(kwargs=kwargs)


# The outcome mapping, in process -----------------------------------------------------------


def test_celery_task_returns_the_release_record_as_json(
    tt: Turnout, task: Any, registry_url: str, calls_file: Path
) -> None:
    echo_target(tt, "site", calls_file)
    result = apply(task, registry_url, "k1")
    assert result.state == "SUCCESS"
    record = result.result
    assert json.loads(json.dumps(record)) == record  # what a JSON result backend stores
    stored = tt.ledger.find("site", "k1")
    assert stored is not None
    assert record == {**stored.to_dict(), "reused": False}
    assert record["status"] == "succeeded"
    assert record["plugin_ref"] == "echo@1.0.0"
    # A duplicate message answers with the same release and runs nothing.
    again = apply(task, registry_url, "k1")
    assert again.state == "SUCCESS"
    assert again.result["id"] == record["id"]
    assert again.result["reused"] is True
    assert len(read_calls(calls_file)) == 1


def test_celery_task_permanent_failure_fails_without_retry(
    tt: Turnout, task: Any, registry_url: str, calls_file: Path, countdowns: list[int]
) -> None:
    echo_target(tt, "site", calls_file, fail_with="permanent")
    result = apply(task, registry_url, "bad-1")
    assert result.state == "FAILURE"
    assert type(result.result).__name__ == "ReleaseFailedError"
    assert countdowns == []
    assert len(read_calls(calls_file)) == 1
    stored = tt.ledger.find("site", "bad-1")
    assert stored is not None
    assert stored.status is Status.FAILED
    assert stored.retryable is False


def test_celery_task_transient_failure_is_retried_with_backoff_and_resumed(
    tt: Turnout, task: Any, registry_url: str, calls_file: Path, countdowns: list[int]
) -> None:
    # The target's own attempts (2) run inside the task; once they are spent, Celery retries
    # the task later, and that try resumes the same release with the same key.
    echo_target(tt, "site", calls_file, fail_with="connection", fail_times=3)
    tt.set_target("site", "echo@1.0.0", max_attempts=2, reason="t")
    result = apply(task, registry_url, "down-1")
    assert result.state == "SUCCESS"
    assert countdowns == [0]
    assert result.result["attempts"] == 4
    assert result.result["status"] == "succeeded"
    calls = read_calls(calls_file)
    assert [(call["key"], call["attempt"]) for call in calls] == [
        ("down-1", n) for n in range(1, 5)
    ]


def test_celery_task_timed_out_release_is_not_retried(
    tt: Turnout, task: Any, registry_url: str, calls_file: Path, countdowns: list[int]
) -> None:
    # Cut off at its deadline, it may have deployed: a decided outcome, left to a replay.
    tt.set_target(
        "site",
        "echo@1.0.0",
        config={"calls": str(calls_file), "sleep": 5},
        timeout=0.5,
        max_attempts=1,
        reason="t",
    )
    result = apply(task, registry_url, "slow-1")
    assert result.state == "FAILURE"
    assert type(result.result).__name__ == "TransientReleaseError"
    assert result.result.release.status is Status.TIMED_OUT
    assert countdowns == []
    assert len(read_calls(calls_file)) == 1


def test_celery_task_refusals_fail_without_retry(
    tt: Turnout, task: Any, registry_url: str, calls_file: Path, countdowns: list[int]
) -> None:
    missing = apply(task, registry_url, "k1", target="nowhere")
    assert missing.state == "FAILURE"
    assert type(missing.result).__name__ == "UnknownTargetError"
    echo_target(tt, "site", calls_file)
    assert apply(task, registry_url, "k1").state == "SUCCESS"
    other = task.apply(
        kwargs={"target": "site", "artifact": "b.tgz", "key": "k1", "db": registry_url}
    )
    assert other.state == "FAILURE"
    assert type(other.result).__name__ == "KeyMismatchError"
    assert countdowns == []
    assert len(read_calls(calls_file)) == 1


def test_celery_task_retries_while_this_machine_lacks_the_version_and_runs_it_once_synced(
    task: Any,
    registry_url: str,
    wheelhouse: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The operator's machine installed echo 2.0.0 and routed to it; this worker's machine
    # (another store) has not synced yet. Its task waits, and runs once the machine has.
    operator = Turnout(registry_url, home=tmp_path / "operator-home")
    wheel = next(wheelhouse.glob("turnout_echo-2.0.0-*.whl"))
    operator.install_plugin(
        InstallRequest(spec=str(wheel), find_links=[str(wheelhouse)], no_index=True)
    )
    calls = tmp_path / "calls.jsonl"
    operator.set_target("site", "echo@2.0.0", config={"calls": str(calls)}, reason="for all")
    worker_home = tmp_path / "worker-home"
    monkeypatch.setenv("TURNOUT_HOME", str(worker_home))
    refused: list[int] = []

    def countdown(retries: int) -> float:
        refused.append(retries)
        if retries == 1:  # the machine runs `turnout plugin sync` meanwhile
            with Turnout(registry_url, home=worker_home) as machine:
                (synced,) = machine.sync_plugins(find_links=[str(wheelhouse)])
                assert synced.status == "installed"
        return 0.0

    monkeypatch.setattr(turnout_celery, "task_countdown", countdown)
    result = apply(task, registry_url, "k1")
    assert result.state == "SUCCESS"
    assert refused == [0, 1]  # two refusals, nothing recorded for them
    assert result.result["plugin_ref"] == "echo@2.0.0"
    assert result.result["attempts"] == 1
    assert [call["key"] for call in read_calls(calls)] == ["k1"]
    assert len(operator.ledger.recent()) == 1
    operator.close()


def test_celery_task_retries_with_backoff_while_the_key_is_held_elsewhere(
    tt: Turnout, task: Any, registry_url: str, calls_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    echo_target(tt, "site", calls_file)
    # Another runner claims the key and is still running it (a live lease).
    claim = claim_as_another_runner(tt, "site", "k1")
    waits: list[float] = []

    def countdown(retries: int) -> float:
        wait = task_countdown(retries)
        waits.append(wait)
        if retries == 2:  # the other runner finishes while this task waits
            tt.ledger.move(claim, Status.SUCCEEDED, result={"by": "the other runner"})
        return wait

    monkeypatch.setattr(turnout_celery, "task_countdown", countdown)
    result = apply(task, registry_url, "k1")
    assert result.state == "SUCCESS"
    assert result.result["reused"] is True
    assert result.result["result"] == {"by": "the other runner"}
    assert len(waits) == 3
    # Exponential with equal jitter: retry n waits between 2**n / 2 and 2**n seconds.
    assert [
        ceiling / 2 <= wait <= ceiling for wait, ceiling in zip(waits, (1, 2, 4), strict=True)
    ] == [True] * 3
    assert read_calls(calls_file) == []  # this task never ran the plugin


def test_celery_reconcile_task_settles_a_release_whose_runner_died(
    tt: Turnout, registry_url: str, calls_file: Path
) -> None:
    echo_target(tt, "site", calls_file)
    # A runner claimed the key and died before calling the plugin; its lease has run out.
    with Turnout(registry_url, lease=0.05) as runner:
        claim = claim_as_another_runner(runner, "site", "k1")
    time.sleep(0.1)
    reconcile = turnout_celery.app.tasks[turnout_celery.RECONCILE_TASK_NAME]
    try:
        result = reconcile.apply(kwargs={"db": registry_url})
    finally:
        handle = runtime._default.pop(str(runtime._db.database_url(registry_url)), None)
        if handle is not None:
            handle.close()
    assert result.state == "SUCCESS"
    # The probe found no call, so the plugin was called again with the same key.
    assert result.result == [
        {"release": claim.id, "target": "site", "was": "running", "now": "succeeded", "error": None}
    ]
    assert [(call["key"], call["attempt"]) for call in read_calls(calls_file)] == [("k1", 2)]
    beat = turnout_celery.app.conf.beat_schedule["turnout-reconcile"]
    assert beat == {"task": "turnout.reconcile", "schedule": 60.0}


def test_celery_enqueue_checks_the_request_in_the_producer() -> None:
    with pytest.raises(InvalidKeyError):
        turnout_celery.enqueue("site", "a.tgz", key="no spaces allowed")
    with pytest.raises(UsageError, match="context"):
        turnout_celery.enqueue("site", "a.tgz", key="k1", context={"customer": 7})
    with pytest.raises(UsageError, match="artifact"):
        turnout_celery.enqueue("site", "", key="k1")


def test_celery_enqueue_puts_the_release_on_the_queue(redis_broker: str) -> None:
    queue = f"turnout-test-{uuid.uuid4().hex[:12]}"
    producer = celery.Celery("producer", broker=redis_broker)
    producer.conf.update(task_default_queue=queue, task_serializer="json")
    context = {"customer": "acme"}
    sent = turnout_celery.enqueue(
        "site", "a.tgz", key="build-1", context=context, celery_app=producer
    )
    with producer.connection_for_read() as conn:
        inbox = conn.SimpleQueue(queue)
        try:
            message = inbox.get(timeout=5)
            message.ack()
            assert message.headers["task"] == "turnout.release"
            assert message.headers["id"] == sent.id
            args, kwargs, _ = message.decode()
            assert args == []
            assert kwargs == {
                "target": "site",
                "artifact": "a.tgz",
                "key": "build-1",
                "context": context,
            }
        finally:
            inbox.queue.delete()
            inbox.close()


@pytest.mark.parametrize(
    ("name", "value"),
    [("TURNOUT_CELERY_VISIBILITY_TIMEOUT", "an hour"), ("TURNOUT_CELERY_MAX_RETRIES", "2.5")],
)
def test_celery_app_refuses_a_bad_setting_with_the_fix(name: str, value: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import turnout.celery"],
        env={**os.environ, name: value},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode != 0
    assert f"{name} must be" in done.stderr
    assert repr(value) in done.stderr


# A real fleet: Celery workers on Redis, the registry on PostgreSQL --------------------------

UNIQUE = 700
DUPLICATES = 300
TARGETS = 20
PERMANENT = {"t18"}  # fails permanently: one failed record per key, never retried
FLAKY = {"t19"}  # one attempt per try; fails twice: Celery retries, the key resumes, succeeds
LEASE = 2.0
VISIBILITY = 8.0


@pytest.fixture
def redis_broker() -> str:
    """The URL of the Redis broker on 127.0.0.1:6379; skipped without it, but failed under CI."""
    with contextlib.suppress(OSError), socket.create_connection((REDIS_HOST, REDIS_PORT), 2):
        return f"redis://{REDIS_HOST}:{REDIS_PORT}/0"
    if os.environ.get("CI"):
        pytest.fail(
            f"CI must run the Celery cases: Redis does not answer on {REDIS_HOST}:{REDIS_PORT}"
        )
    pytest.skip(f"needs Redis on {REDIS_HOST}:{REDIS_PORT}")


class Fleet:
    """Celery worker nodes in process groups of their own, and a producer, on one queue."""

    def __init__(self, url: str, broker: str, logs: Path) -> None:
        self.queue = f"turnout-test-{uuid.uuid4().hex[:12]}"
        self.broker = broker
        self.logs = logs
        self.env = {
            **os.environ,
            "TURNOUT_DATABASE_URL": url,
            "TURNOUT_CELERY_BROKER_URL": self.broker,
            "TURNOUT_CELERY_RESULT_BACKEND": self.broker,
            "TURNOUT_CELERY_QUEUE": self.queue,
            "TURNOUT_CELERY_VISIBILITY_TIMEOUT": str(VISIBILITY),
            "TURNOUT_LEASE_SECONDS": str(LEASE),
            # Each pool process sets up OpenTelemetry from OTEL_*: spans printed to the log.
            "OTEL_TRACES_EXPORTER": "console",
            "OTEL_METRICS_EXPORTER": "none",
        }
        self.nodes: dict[str, subprocess.Popen[bytes]] = {}
        self.producer = celery.Celery("producer", broker=self.broker, backend=self.broker)
        self.producer.conf.update(task_serializer="json", result_serializer="json")

    def start(self, name: str, concurrency: int = 2) -> None:
        with (self.logs / f"{name}.log").open("wb") as log:
            self.nodes[name] = subprocess.Popen(
                [
                    *(sys.executable, "-m", "celery", "-A", "turnout.celery", "worker"),
                    *("--hostname", f"{name}@{self.queue}", "--queues", self.queue),
                    *("--concurrency", str(concurrency), "--pool", "prefork"),
                    *("--without-gossip", "--without-mingle", "--loglevel", "INFO"),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )

    def kill(self, name: str) -> None:
        """SIGKILL the node and its pool processes at once, as when its machine dies."""
        node = self.nodes.pop(name)
        os.killpg(node.pid, signal.SIGKILL)
        node.wait(10)

    def send(self, target: str, artifact: str, key: str) -> Any:
        kwargs = {"target": target, "artifact": artifact, "key": key}
        return self.producer.send_task("turnout.release", kwargs=kwargs, queue=self.queue)

    def stop(self) -> None:
        for name in list(self.nodes):
            self.kill(name)
        with contextlib.suppress(Exception), self.producer.connection() as conn:
            conn.default_channel.queue_delete(self.queue)


def wait_for(
    condition: Callable[[], bool], *, what: str, timeout: float, every: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(every)


def lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    # The last line may be half written while workers run.
    return [json.loads(line) for line in text.splitlines() if line.endswith("}")]


@pytest.mark.slow
def test_celery_fleet_kills_a_worker_midway_and_deploys_nothing_twice(
    postgres_registry_url: str, redis_broker: str, tmp_path: Path
) -> None:
    calls, deployed = tmp_path / "calls.jsonl", tmp_path / "deployed.jsonl"
    targets = [f"t{n:02d}" for n in range(TARGETS)]
    with Turnout(postgres_registry_url) as tt:
        for name in targets:
            config: dict[str, Any] = {
                "calls": str(calls),
                "deployed": str(deployed),
                "note_pid": True,
                "sleep": 0.05,
            }
            if name in PERMANENT:
                config["fail_with"] = "permanent"
            attempts = 3
            if name in FLAKY:
                config.update(fail_with="connection", fail_times=2)
                attempts = 1
            tt.set_target(
                name,
                "echo@1.0.0",
                config=config,
                isolation="inline",
                max_attempts=attempts,
                reason="fleet",
            )
    rng = random.Random(8)  # noqa: S311 - a reproducible order, not a secret
    unique = [(targets[n % TARGETS], f"build-{n}") for n in range(UNIQUE)]
    requests = unique + [rng.choice(unique) for _ in range(DUPLICATES)]
    rng.shuffle(requests)

    fleet = Fleet(postgres_registry_url, redis_broker, tmp_path)
    try:
        fleet.start("w1")
        fleet.start("w2")
        results = [fleet.send(target, f"{key}.tgz", key) for target, key in requests]

        # Midway, kill node w1 while one of its processes is inside a release. A release takes
        # 50 ms: on a busy machine it may end between the look and the kill, so a node started
        # in its place is killed the same way, up to twice more.
        wait_for(lambda: len(lines(deployed)) >= UNIQUE // 3, what="a third deployed", timeout=240)
        interrupted: set[tuple[str, str]] = set()
        for node in ("w1", "w1-second", "w1-third"):
            if node not in fleet.nodes:
                fleet.start(node)
            group = fleet.nodes[node].pid

            groups: dict[int, int | None] = {}  # pid -> process group, looked up once

            def mid_release(group: int = group, groups: dict[int, int | None] = groups) -> bool:
                done = {(line["target"], line["key"]) for line in lines(deployed)}
                for call in lines(calls)[-8:]:
                    if call["pid"] not in groups:
                        groups[call["pid"]] = _group_of(call["pid"])
                    if groups[call["pid"]] == group and (call["target"], call["key"]) not in done:
                        return True
                return False

            # Killed as soon as seen inside one; what its processes called is read afterwards
            # (they call nothing more), so that the 50 ms window is not spent reading.
            wait_for(mid_release, what=f"{node} inside a release", timeout=60, every=0.005)
            fleet.kill(node)
            cut = {
                (call["target"], call["key"])
                for call in lines(calls)
                if groups.get(call["pid"]) == group
            }
            with Turnout(postgres_registry_url) as tt:
                running = {
                    (record.target, record.idempotency_key)
                    for record in tt.ledger.recent(statuses=[Status.RUNNING], limit=None)
                }
            interrupted = cut & running
            if interrupted:
                break
        assert interrupted, "three kills, and none cut a release short"
        fleet.start("w3")  # the dead machine is replaced, as a fleet would, for the rest

        wait_for(
            lambda: all(result.ready() for result in results),
            what="every message to end (SUCCESS or FAILURE)",
            timeout=300,
        )
        states = Counter(
            (target in PERMANENT, result.state)
            for (target, _key), result in zip(requests, results, strict=True)
        )
        permanent_sent = sum(1 for target, _ in requests if target in PERMANENT)
        assert states == {
            (False, "SUCCESS"): len(requests) - permanent_sent,
            (True, "FAILURE"): permanent_sent,
        }

        # Zero double deploys: each (target, key) took effect at most once.
        deploys = Counter((line["target"], line["key"]) for line in lines(deployed))
        assert max(deploys.values()) == 1
        expected = {request for request in unique if request[0] not in PERMANENT}
        assert set(deploys) == expected
        for request in interrupted:  # run again after the kill, to its end, once
            assert deploys.get(request, 0) == (request[0] not in PERMANENT)

        log = (tmp_path / "w2.log").read_text(encoding="utf-8", errors="replace")
        retried = [line for line in log.splitlines() if "Retry in" in line]
        assert any("TransientReleaseError" in line for line in retried)
        assert '"name": "turnout.release"' in log
        assert '"name": "turnout.attempt"' in log

        # Every release is terminal or explicitly unknown; none is left running or claimed.
        with Turnout(postgres_registry_url) as tt:
            records = [tt.ledger.find(target, key) for target, key in unique]
        assert all(record is not None for record in records)
        statuses = Counter(record.status for record in records if record is not None)
        assert set(statuses) <= TERMINAL | {Status.UNKNOWN}
        assert statuses[Status.FAILED] == sum(1 for t, _ in unique if t in PERMANENT)
        for record in records:
            assert record is not None
            if (record.target, record.idempotency_key) in interrupted:
                # Taken over once the lease expired: the probe found it deployed, or it ran
                # again (with the same key) to its end.
                assert record.status is Status.RECONCILED or record.attempts >= 2
            if record.target in FLAKY:
                # Two tries of the task failed transiently; the third resumed and deployed.
                assert record.status is Status.SUCCEEDED
                assert record.attempts >= 3
    finally:
        fleet.stop()


def _group_of(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None
