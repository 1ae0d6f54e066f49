"""The release lifecycle: the transition table, the ledger's fencing, and a state machine (C6).

The first half pins :data:`~turnout.releases.TRANSITIONS` and what :class:`Ledger` does at each
step, on a real SQLite registry with an injected clock. The second half is a Hypothesis state
machine that drives a real ledger on a real SQLite file with several runners and a few keys
(submit, deploy, retry, finish, crash, heartbeat, advance time, reconcile, a human's verdict),
reconciling takeovers with the runtime's own ``_Attempts.reconcile`` and a fake plugin, and
checks after every step that each status written went along ``TRANSITIONS``, that at most one
runner holds a live claim per key, and that no key is effectively deployed twice.
"""

from __future__ import annotations

import atexit
import functools
import itertools
import shutil
import sqlite3
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from turnout.errors import (
    KeyMismatchError,
    LeaseLostError,
    ReleaseInProgressError,
    UsageError,
    WorkerTimeoutError,
)
from turnout.refs import PluginRef
from turnout.registry import Registry, TargetSpec
from turnout.releases import (
    TABLE,
    TERMINAL,
    TRANSITIONS,
    Claim,
    Ledger,
    ReleaseRecord,
    Status,
    fingerprint,
    sources_of,
)
from turnout.runtime import _Attempts, _Call
from turnout.telemetry import Telemetry

LEASE = 30.0
START = datetime(2030, 1, 1, tzinfo=UTC)
TARGET = "site"
REF = PluginRef("echo", "1.0.0")
ARTIFACT = "dist/app.tgz"
PRINT = fingerprint(TARGET, ARTIFACT, REF, {}, {})
OTHER_PRINT = fingerprint(TARGET, "dist/other.tgz", REF, {}, {})


class FakeClock:
    """Now, as the ledger sees it; moves only when a test advances it."""

    def __init__(self, start: datetime = START) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def claim_key(ledger: Ledger, key: str, print_: str = PRINT) -> Claim | ReleaseRecord:
    return ledger.claim(
        target=TARGET,
        key=key,
        fingerprint=print_,
        plugin_ref=REF,
        artifact=ARTIFACT if print_ == PRINT else "dist/other.tgz",
        context={},
    )


def read_row(ledger: Ledger, release_id: str) -> dict[str, Any]:
    with ledger.engine.connect() as conn:
        row = conn.execute(sa.select(TABLE).where(TABLE.c.id == release_id)).mappings().one()
    return dict(row)


def _reachable(start: Status) -> frozenset[Status]:
    """The statuses reachable from ``start`` in one or more legal moves."""
    seen: set[Status] = set()
    todo = list(TRANSITIONS[start])
    while todo:
        status = todo.pop()
        if status not in seen:
            seen.add(status)
            todo.extend(TRANSITIONS[status])
    return frozenset(seen)


REACHABLE = {status: _reachable(status) for status in Status}


# The transition table --------------------------------------------------------------------------


def test_lifecycle_transitions_cover_every_status() -> None:
    assert set(TRANSITIONS) == set(Status)
    for targets in TRANSITIONS.values():
        assert targets <= set(Status)


def test_lifecycle_terminal_states_have_no_exits_and_the_others_do() -> None:
    assert {status for status in Status if status.terminal} == TERMINAL
    for status in Status:
        if status is not Status.FAILED:
            assert (TRANSITIONS[status] == frozenset()) is status.terminal
    # The one way out of an ended release: a transient failure resumed under the same key.
    assert TRANSITIONS[Status.FAILED] == {Status.RUNNING}
    assert {status for status in Status if status.active} == {Status.CLAIMED, Status.RUNNING}


def test_lifecycle_sources_of_inverts_the_table() -> None:
    for target in Status:
        assert sources_of(target) == {s for s, ts in TRANSITIONS.items() if target in ts}
    assert sources_of(Status.RUNNING) == {Status.CLAIMED, Status.RUNNING, Status.FAILED}
    # A takeover that cannot tell, or a runner stopped mid-call (SIGTERM's grace ran out).
    assert sources_of(Status.UNKNOWN) == {Status.CLAIMED, Status.RUNNING}


def test_lifecycle_every_status_is_reachable_from_running() -> None:
    # A new release is inserted RUNNING: every state must be reachable from there.
    assert REACHABLE[Status.RUNNING] == set(Status)
    for status in TERMINAL - {Status.FAILED}:
        assert REACHABLE[status] == frozenset()
    assert REACHABLE[Status.FAILED] == set(Status)  # resumed, it runs again
    # An unknown release is settled by a verdict, or taken over and tried again.
    assert TRANSITIONS[Status.UNKNOWN] == {Status.CLAIMED, Status.RECONCILED, Status.FAILED}


# The ledger, step by step ----------------------------------------------------------------------


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def ledger(db_path: Path, clock: FakeClock) -> Any:
    registry = Registry(str(db_path))
    ledger = Ledger(registry.engine, lease=LEASE, clock=clock)
    yield ledger
    ledger.close()
    registry.close()


def new_claim(ledger: Ledger, key: str) -> Claim:
    claim = claim_key(ledger, key)
    assert isinstance(claim, Claim)
    return claim


def take_over(ledger: Ledger, clock: FakeClock, key: str) -> Claim:
    clock.advance(LEASE + 1)
    claim = claim_key(ledger, key)
    assert isinstance(claim, Claim)
    assert claim.takeover
    return claim


def drive_to(ledger: Ledger, clock: FakeClock, key: str, status: Status) -> Claim:
    """A release for ``key`` in ``status`` by legal moves, and the claim that holds its token."""
    claim = new_claim(ledger, key)
    if status in (Status.SUCCEEDED, Status.FAILED, Status.TIMED_OUT):
        ledger.move(claim, status)
    elif status in (Status.CLAIMED, Status.UNKNOWN, Status.RECONCILED):
        claim = take_over(ledger, clock, key)
        if status is not Status.CLAIMED:
            ledger.move(claim, status)
    assert read_row(ledger, claim.id)["status"] == status.value
    return claim


def test_lifecycle_a_new_release_is_inserted_running(ledger: Ledger, clock: FakeClock) -> None:
    claim = new_claim(ledger, "k1")
    assert not claim.takeover
    assert claim.previous is None
    assert claim.attempts == 1
    row = read_row(ledger, claim.id)
    assert row["status"] == Status.RUNNING.value
    assert row["token"] == claim.token
    assert row["attempts"] == 1
    assert row["lease_expires_at"].replace(tzinfo=UTC) == clock.now + timedelta(seconds=LEASE)
    assert row["finished_at"] is None


@pytest.mark.parametrize("source", list(Status), ids=str)
def test_lifecycle_move_follows_the_table_and_nothing_else(
    ledger: Ledger, clock: FakeClock, source: Status
) -> None:
    for target in Status:
        key = f"{source}-{target}"
        claim = drive_to(ledger, clock, key, source)
        before = read_row(ledger, claim.id)
        if target in TRANSITIONS[source]:
            record = ledger.move(claim, target)
            assert record.status is target
            assert read_row(ledger, claim.id)["status"] == target.value
        else:
            with pytest.raises(LeaseLostError):
                ledger.move(claim, target)
            assert read_row(ledger, claim.id) == before, f"{source} -> {target} wrote"


def test_lifecycle_succeeded_to_running_is_refused_and_the_row_unchanged(
    ledger: Ledger, clock: FakeClock
) -> None:
    claim = drive_to(ledger, clock, "k1", Status.SUCCEEDED)
    before = read_row(ledger, claim.id)
    with pytest.raises(LeaseLostError):
        ledger.move(claim, Status.RUNNING, attempts=2)
    assert read_row(ledger, claim.id) == before


def test_lifecycle_a_stale_token_after_a_takeover_writes_nothing(
    ledger: Ledger, clock: FakeClock
) -> None:
    first = new_claim(ledger, "k1")
    second = take_over(ledger, clock, "k1")
    assert second.id == first.id
    assert second.token != first.token
    before = read_row(ledger, first.id)
    assert before["token"] == second.token
    for status in (Status.SUCCEEDED, Status.FAILED, Status.RUNNING, Status.UNKNOWN):
        with pytest.raises(LeaseLostError):
            ledger.move(first, status)
    assert ledger.heartbeat([first]) == [first]
    assert read_row(ledger, first.id) == before
    # The new holder's writes go through.
    assert ledger.heartbeat([second]) == []
    assert ledger.move(second, Status.RUNNING, attempts=2).status is Status.RUNNING
    assert ledger.move(second, Status.SUCCEEDED, result={"ok": True}).status is Status.SUCCEEDED
    with pytest.raises(LeaseLostError):
        ledger.move(first, Status.SUCCEEDED)
    assert read_row(ledger, first.id)["token"] == second.token


@pytest.mark.parametrize("status", sorted(TERMINAL), ids=str)
def test_lifecycle_claim_of_a_finished_key_returns_the_stored_record(
    ledger: Ledger, clock: FakeClock, status: Status
) -> None:
    claim = drive_to(ledger, clock, "k1", status)
    before = read_row(ledger, claim.id)
    clock.advance(3600)
    again = claim_key(ledger, "k1")
    assert isinstance(again, ReleaseRecord)
    assert again.reused
    assert again.id == claim.id
    assert again.status is status
    assert read_row(ledger, claim.id) == before


@pytest.mark.parametrize("status", [Status.RUNNING, Status.SUCCEEDED, Status.UNKNOWN], ids=str)
def test_lifecycle_claim_with_another_fingerprint_is_a_mismatch(
    ledger: Ledger, clock: FakeClock, status: Status
) -> None:
    claim = drive_to(ledger, clock, "k1", status)
    before = read_row(ledger, claim.id)
    with pytest.raises(KeyMismatchError) as caught:
        claim_key(ledger, "k1", OTHER_PRINT)
    assert caught.value.release_id == claim.id
    assert caught.value.differs == ["artifact"]
    assert read_row(ledger, claim.id) == before


def test_lifecycle_claim_under_a_live_lease_is_in_progress(
    ledger: Ledger, clock: FakeClock
) -> None:
    claim = new_claim(ledger, "k1")
    before = read_row(ledger, claim.id)
    clock.advance(LEASE - 1)
    with pytest.raises(ReleaseInProgressError) as caught:
        claim_key(ledger, "k1")
    assert caught.value.release_id == claim.id
    assert read_row(ledger, claim.id) == before
    # A heartbeat renews the lease from now: still in progress after the first lease's end.
    assert ledger.heartbeat([claim]) == []
    clock.advance(LEASE - 1)
    with pytest.raises(ReleaseInProgressError):
        claim_key(ledger, "k1")


def test_lifecycle_claim_after_the_lease_expired_takes_over(
    ledger: Ledger, clock: FakeClock
) -> None:
    first = new_claim(ledger, "k1")
    clock.advance(LEASE)  # the lease ends at now: it is over
    second = claim_key(ledger, "k1")
    assert isinstance(second, Claim)
    assert second.takeover
    assert second.previous is Status.RUNNING
    assert second.id == first.id
    assert second.token != first.token
    row = read_row(ledger, first.id)
    assert row["status"] == Status.CLAIMED.value
    assert row["token"] == second.token
    assert row["lease_expires_at"].replace(tzinfo=UTC) == clock.now + timedelta(seconds=LEASE)
    # The new holder's lease is live: a third runner is told it is in progress.
    with pytest.raises(ReleaseInProgressError):
        claim_key(ledger, "k1")
    # A takeover of a takeover remembers that it was claimed.
    third = take_over(ledger, clock, "k1")
    assert third.previous is Status.CLAIMED
    assert third.token not in (first.token, second.token)


def test_lifecycle_an_unknown_release_is_taken_over_at_once(
    ledger: Ledger, clock: FakeClock
) -> None:
    claim = drive_to(ledger, clock, "k1", Status.UNKNOWN)
    again = claim_key(ledger, "k1")
    assert isinstance(again, Claim)
    assert again.takeover
    assert again.previous is Status.UNKNOWN
    assert again.token != claim.token


def test_lifecycle_settle_takes_a_verdict_on_unknown_only(ledger: Ledger, clock: FakeClock) -> None:
    unknown = drive_to(ledger, clock, "k1", Status.UNKNOWN)
    running = drive_to(ledger, clock, "k2", Status.RUNNING)
    with pytest.raises(UsageError):
        ledger.settle(unknown.id, Status.SUCCEEDED, actor="ops", reason="")
    before = read_row(ledger, running.id)
    with pytest.raises(UsageError):
        ledger.settle(running.id, Status.FAILED, actor="ops", reason="")
    assert read_row(ledger, running.id) == before
    record = ledger.settle(unknown.id, Status.FAILED, actor="ops", reason="not on the host")
    assert record.status is Status.FAILED
    with pytest.raises(UsageError):
        ledger.settle(unknown.id, Status.RECONCILED, actor="ops", reason="")
    # The runner that recorded "unknown" cannot write over the verdict.
    with pytest.raises(LeaseLostError):
        ledger.move(unknown, Status.RECONCILED)
    assert read_row(ledger, unknown.id)["status"] == Status.FAILED.value


# The state machine (C6) ------------------------------------------------------------------------

_LOG_DDL = (
    "CREATE TABLE status_log (seq INTEGER PRIMARY KEY AUTOINCREMENT, release_id TEXT, "
    "old TEXT, new TEXT)",
    "CREATE TRIGGER status_log_insert AFTER INSERT ON releases BEGIN "
    "INSERT INTO status_log (release_id, old, new) VALUES (NEW.id, NULL, NEW.status); END",
    "CREATE TRIGGER status_log_update AFTER UPDATE OF status ON releases BEGIN "
    "INSERT INTO status_log (release_id, old, new) VALUES (NEW.id, OLD.status, NEW.status); END",
)


@functools.cache
def _template() -> Path:
    """A migrated registry whose triggers log every status written; copied for each example."""
    folder = Path(tempfile.mkdtemp(prefix="turnout-lifecycle-"))
    atexit.register(shutil.rmtree, folder, True)
    path = folder / "template.db"
    registry = Registry(str(path))
    registry.upgrade()
    registry.close()
    conn = sqlite3.connect(path)
    try:
        for statement in _LOG_DDL:
            conn.execute(statement)
        conn.commit()
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return path


class _Stalled(BaseException):
    """The runner froze (SIGSTOP, a long pause) while probing or right after a plugin call."""


class _RunnerLedger:
    """The ledger as one runner sees it: once the runner froze, it writes nothing more."""

    def __init__(self, ledger: Ledger, moved: Callable[[Status, ReleaseRecord], None]) -> None:
        self.ledger = ledger
        self.moved = moved
        self.frozen = False

    def move(self, claim: Claim, to: Status, **values: Any) -> ReleaseRecord:
        if self.frozen:
            raise _Stalled
        record = self.ledger.move(claim, to, **values)
        self.moved(to, record)
        return record

    def clock(self) -> datetime:
        return self.ledger.clock()


@dataclass
class KeyModel:
    """What the model knows of one key's release, and of the world the plugin changed."""

    id: str
    status: Status
    token: str
    lease_until: datetime
    attempts: int = 1
    retryable: bool = False
    """It ended FAILED by a transient error: asking again resumes it."""
    deployed: bool = False
    calls: int = 0
    effective: int = 0


@dataclass
class Runner:
    """A runner holding a claim: it may call the plugin once, then record what it got."""

    key: str
    claim: Claim
    lease_until: datetime
    may_call: bool
    result: str | None = None  # "ok" | "error" | "hang" once it called


OUTCOMES = st.sampled_from(["ok", "error", "transient", "hang"])
"""What a runner's call gives: deployed, a permanent error, a transient one (never deployed,
by the contract; recorded FAILED and retryable, so the key resumes), a timeout."""
MAX_ATTEMPTS = 2


@dataclass(frozen=True)
class Plan:
    """What happens to a reconciling runner: whether it freezes while probing, and what the
    plugin does on each of its calls, with whether a hang or a freeze ("stall") came after the
    plugin had deployed."""

    stall_on_probe: bool
    calls: tuple[tuple[str, bool], ...]


PLAN = st.builds(
    Plan,
    stall_on_probe=st.sampled_from([False, False, False, True]),
    calls=st.tuples(
        *[st.tuples(st.sampled_from(["ok", "error", "hang", "stall"]), st.booleans())]
        * MAX_ATTEMPTS
    ),
)
KEYS = st.sampled_from(["k0", "k1", "k2"])
STEPS = st.sampled_from([1.0, LEASE / 3, LEASE - 1, LEASE, LEASE + 1, 10 * LEASE])


def _deploys(outcome: str, flag: bool) -> bool:
    """Whether a call with ``outcome`` deployed: always when "ok", never on an error."""
    return outcome == "ok" or (outcome not in ("error", "transient") and flag)


class FakePlugin:
    """A releaser for a reconciling runner: its probe and its calls act on the model."""

    output = ""

    def __init__(self, machine: LifecycleMachine, key: str, plan: Plan) -> None:
        self.machine = machine
        self.key = key
        self.plan = plan
        self.calls = 0
        self.probed = False
        self.answer: dict[str, Any] | None = None
        self.ledger: _RunnerLedger | None = None

    def validate_config(self, config: Any, *, timeout: float) -> None:
        """Every config is fine."""

    def probe(self, *, idempotency_key: str, **_: Any) -> tuple[bool, dict[str, Any] | None]:
        self.machine.check(idempotency_key == self.key, "probed with another key")
        if self.plan.stall_on_probe:
            assert self.ledger is not None
            self.ledger.frozen = True
            raise _Stalled
        if not self.machine.has_probe:
            return False, None
        self.probed = True
        deployed = self.machine.keys[self.key].deployed
        self.answer = {"deployed": self.key} if deployed else None
        return True, self.answer

    def release(self, *, idempotency_key: str, attempt: int, **_: Any) -> dict[str, Any]:
        machine = self.machine
        model = machine.keys[self.key]
        machine.check(idempotency_key == self.key, "called with another key")
        machine.check(attempt == model.attempts, f"attempt {attempt}, row says {model.attempts}")
        if machine.has_probe:
            allowed = self.probed and self.answer is None
        else:
            allowed = machine.target_idempotent
        machine.check(allowed, f"a takeover of {self.key} called a plugin it must not call")
        what, deploys = self.plan.calls[self.calls]
        self.calls += 1
        machine.plugin_call(self.key, deploys=_deploys(what, deploys))
        if what == "ok":
            return {"deployed": self.key, "attempt": attempt}
        if what == "error":
            raise ValueError("the target refused the artifact")
        if what == "hang":
            raise WorkerTimeoutError(str(REF), 60.0)
        assert self.ledger is not None
        self.ledger.frozen = True
        raise _Stalled


class LifecycleMachine(RuleBasedStateMachine):
    """Runners, a few keys, a real ledger on a real SQLite file, a clock that tests move.

    Subclasses say what the plugin and target are: whether the plugin has a (truthful)
    ``turnout_probe``, and whether the target is marked idempotent. The plugin is idempotent by
    key exactly when turnout may call it again after a takeover (a probe said "not deployed",
    or the target is marked idempotent); otherwise every call counts as a deploy.
    """

    has_probe = False
    target_idempotent = False

    def __init__(self) -> None:
        super().__init__()
        self.folder = Path(tempfile.mkdtemp(prefix="turnout-machine-"))
        path = self.folder / "registry.db"
        shutil.copyfile(_template(), path)
        self.registry = Registry(str(path))
        self.now = START
        self.ledger = Ledger(self.registry.engine, lease=LEASE, clock=lambda: self.now)
        self.keys: dict[str, KeyModel] = {}
        self.runners: dict[int, Runner] = {}
        self.seen: dict[str, Status] = {}
        self.log_seq = 0
        self.violations: list[str] = []
        self._ids = itertools.count()
        c = TABLE.c
        self._rows = sa.select(
            c.id, c.idempotency_key, c.status, c.token, c.attempts, c.lease_expires_at
        )

    @property
    def plugin_idempotent(self) -> bool:
        return self.has_probe or self.target_idempotent

    def teardown(self) -> None:
        self.ledger.close()
        self.registry.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    # The model's bookkeeping -----------------------------------------------------------------

    def check(self, condition: bool, message: str) -> None:
        """Note a violation seen inside code that would swallow an AssertionError."""
        if not condition:
            self.violations.append(message)

    def plugin_call(self, key: str, *, deploys: bool, transient: bool = False) -> None:
        """Count a call; a call of a plugin not idempotent by key counts as a deploy, except
        one that raised a transient error: by the contract, that did nothing."""
        model = self.keys[key]
        model.calls += 1
        if (not self.plugin_idempotent and not transient) or (deploys and not model.deployed):
            model.effective += 1
        model.deployed = model.deployed or deploys

    def lease_end(self) -> datetime:
        return self.now + timedelta(seconds=LEASE)

    def holders(self, *, where: Any = None) -> list[int]:
        return sorted(i for i, r in self.runners.items() if where is None or where(r))

    # Rules -----------------------------------------------------------------------------------

    @rule(key=KEYS, plan=PLAN)
    def submit(self, key: str, plan: Plan) -> None:
        """A runner gets the job for ``key`` (first delivery or a redelivery) and claims it."""
        self._submit(key, plan)

    def _submit(self, key: str, plan: Plan) -> None:
        model = self.keys.get(key)
        try:
            got: Claim | ReleaseRecord | ReleaseInProgressError = claim_key(self.ledger, key)
        except ReleaseInProgressError as exc:
            got = exc
        if isinstance(got, ReleaseInProgressError):
            assert model is not None
            assert model.status.active
            assert model.lease_until > self.now, "a lapsed lease was reported in progress"
            assert got.release_id == model.id
            return
        if isinstance(got, ReleaseRecord):
            assert model is not None
            assert model.status.terminal
            assert not model.retryable, f"{key} failed transiently but was not resumed"
            assert got.reused
            assert got.id == model.id
            assert got.status is model.status
            return
        if got.resumed:
            assert model is not None
            assert model.status is Status.FAILED
            assert model.retryable, f"{key} was resumed though it did not fail transiently"
            assert got.previous is Status.FAILED
            assert got.id == model.id
            assert got.token != model.token
            model.status, model.token, model.lease_until = (
                Status.RUNNING,
                got.token,
                self.lease_end(),
            )
            model.retryable = False
            self.runners[next(self._ids)] = Runner(key, got, self.lease_end(), may_call=True)
            return
        if not got.takeover:
            assert model is None, f"{key} was claimed anew though it has a release"
            assert got.previous is None
            self.keys[key] = KeyModel(got.id, Status.RUNNING, got.token, self.lease_end())
            self.runners[next(self._ids)] = Runner(key, got, self.lease_end(), may_call=True)
            return
        assert model is not None
        assert not model.status.terminal, f"{key} was taken over after it ended"
        assert model.status is Status.UNKNOWN or model.lease_until <= self.now, (
            f"{key} was taken over under a live lease"
        )
        assert got.previous is model.status
        assert got.id == model.id
        assert got.token != model.token
        model.status, model.token, model.lease_until = Status.CLAIMED, got.token, self.lease_end()
        self._reconcile(key, model, got, plan)

    def _reconcile(self, key: str, model: KeyModel, claim: Claim, plan: Plan) -> None:
        """What the runtime does with a takeover: its own ``_Attempts.reconcile``."""

        def moved(to: Status, record: ReleaseRecord) -> None:
            # Each attempt moves the row to RUNNING first: the model follows.
            model.attempts = record.attempts
            if to.active:
                model.status, model.lease_until = to, self.lease_end()

        plugin = FakePlugin(self, key, plan)
        ledger = plugin.ledger = _RunnerLedger(self.ledger, moved)
        spec = TargetSpec(
            name=TARGET,
            plugin_ref=REF,
            config={},
            max_attempts=MAX_ATTEMPTS,
            timeout=60.0,
            isolation="inline",
            revision=1,
            idempotent=self.target_idempotent,
        )
        turnout = SimpleNamespace(
            ledger=ledger, _sleep=lambda _seconds: None, telemetry=Telemetry()
        )
        call = _Call(spec, REF, plugin, {}, [])
        attempts = _Attempts(turnout, claim, call, ARTIFACT, {}, key)
        deployed_before = model.deployed
        try:
            record = attempts.reconcile()
        except _Stalled:
            # Frozen while probing (it has nothing to record) or right after a call (it may
            # wake and record what the call did), holding its claim.
            result = None
            if plugin.calls:
                result = "ok" if _deploys(*plan.calls[plugin.calls - 1]) else "error"
            runner = Runner(key, claim, self.lease_end(), may_call=False, result=result)
            self.runners[next(self._ids)] = runner
            return
        if self.has_probe and deployed_before:
            assert record.status is Status.RECONCILED
            assert record.result == {"deployed": key}
            assert plugin.calls == 0
        elif not self.plugin_idempotent:
            assert record.status is Status.UNKNOWN
            assert plugin.calls == 0
        else:
            assert plugin.calls >= 1
            last = plan.calls[plugin.calls - 1][0]
            expected = {"ok": Status.SUCCEEDED, "error": Status.FAILED, "hang": Status.TIMED_OUT}
            assert record.status is expected[last]
            if last == "hang":
                assert plugin.calls == MAX_ATTEMPTS
        model.status = record.status
        model.attempts = record.attempts
        model.retryable = record.status is Status.FAILED and bool(record.retryable)

    @rule(key=KEYS)
    def submit_another_request(self, key: str) -> None:
        """The same key with another artifact: refused, whatever state the release is in."""
        model = self.keys.get(key)
        if model is None:
            return  # it would simply be a new release
        with pytest.raises(KeyMismatchError):
            claim_key(self.ledger, key, OTHER_PRINT)

    @precondition(lambda self: any(r.may_call for r in self.runners.values()))
    @rule(data=st.data(), outcome=OUTCOMES, deploys_on_hang=st.booleans())
    def deploy(self, data: st.DataObject, outcome: str, deploys_on_hang: bool) -> None:
        """A runner with a new claim makes its first call.

        Unfenced, as in the runtime: nothing is written between the claim and the first call,
        so a runner that froze in between may call after its release was taken over. No token
        can stop a call already on its way; that is why a takeover only re-runs a plugin that
        is idempotent by key (here: "probe" and "idempotent target" variants), and why the
        plain variant counts every call.
        """
        index = data.draw(st.sampled_from(self.holders(where=lambda r: r.may_call)))
        runner = self.runners[index]
        assert not runner.claim.takeover  # takeovers call inside _Attempts.reconcile only
        if runner.claim.resumed and not self._fenced_attempt(index):
            return
        deploys = _deploys(outcome, deploys_on_hang)
        self.plugin_call(runner.key, deploys=deploys, transient=outcome == "transient")
        runner.may_call, runner.result = False, outcome

    @precondition(
        lambda self: (
            self.plugin_idempotent and any(r.result == "hang" for r in self.runners.values())
        )
    )
    @rule(data=st.data(), outcome=OUTCOMES, deploys_on_hang=st.booleans())
    def retry(self, data: st.DataObject, outcome: str, deploys_on_hang: bool) -> None:
        """After a timeout, the runtime retries with the same key: a fenced move first."""
        index = data.draw(st.sampled_from(self.holders(where=lambda r: r.result == "hang")))
        runner = self.runners[index]
        if not self._fenced_attempt(index):
            return
        self.plugin_call(runner.key, deploys=_deploys(outcome, deploys_on_hang))
        runner.result = outcome

    def _fenced_attempt(self, index: int) -> bool:
        """A later attempt (a retry, or the first of a resumption) moves the row first, fenced
        by the token, as ``_Attempts.run`` does; a runner fenced off is dropped."""
        runner = self.runners[index]
        model = self.keys[runner.key]
        valid = model.token == runner.claim.token and model.status in sources_of(Status.RUNNING)
        try:
            self.ledger.move(runner.claim, Status.RUNNING, attempts=model.attempts + 1)
        except LeaseLostError:
            assert not valid, "a valid holder could not retry"
            del self.runners[index]
            return False
        assert valid, "a fenced-off runner moved its release"
        model.status, model.attempts, model.lease_until = (
            Status.RUNNING,
            model.attempts + 1,
            self.lease_end(),
        )
        runner.lease_until = self.lease_end()
        return True

    @precondition(lambda self: any(r.result for r in self.runners.values()))
    @rule(data=st.data())
    def finish(self, data: st.DataObject) -> None:
        """A runner records what its last call gave; refused if it was taken over."""
        index = data.draw(st.sampled_from(self.holders(where=lambda r: r.result is not None)))
        runner = self.runners.pop(index)
        model = self.keys[runner.key]
        to = {
            "ok": Status.SUCCEEDED,
            "error": Status.FAILED,
            "transient": Status.FAILED,
            "hang": Status.TIMED_OUT,
        }[runner.result or ""]
        valid = model.token == runner.claim.token and model.status in sources_of(to)
        values: dict[str, Any] = {"error": None if to is Status.SUCCEEDED else "it failed"}
        if to is Status.FAILED:
            values["retryable"] = runner.result == "transient"
        if to is Status.SUCCEEDED:
            values["result"] = {"deployed": runner.key}
        try:
            record = self.ledger.move(runner.claim, to, **values)
        except LeaseLostError:
            assert not valid, f"{runner.key}: a valid holder could not record {to}"
            return
        assert valid, f"{runner.key}: a fenced-off runner recorded {to}"
        assert record.status is to
        model.status = to
        model.retryable = runner.result == "transient"

    @precondition(lambda self: self.runners)
    @rule(data=st.data())
    def crash(self, data: st.DataObject) -> None:
        """A runner dies: it forgets its claim without recording anything."""
        del self.runners[data.draw(st.sampled_from(self.holders()))]

    @precondition(lambda self: self.runners)
    @rule(data=st.data())
    def heartbeat(self, data: st.DataObject) -> None:
        runner = self.runners[data.draw(st.sampled_from(self.holders()))]
        model = self.keys[runner.key]
        valid = model.token == runner.claim.token and model.status.active
        lost = self.ledger.heartbeat([runner.claim])
        assert (lost == []) is valid
        if valid:
            model.lease_until = runner.lease_until = self.lease_end()

    @precondition(lambda self: self.runners)
    @rule(data=st.data())
    def illegal_move(self, data: st.DataObject) -> None:
        """A runner tries a move the table does not allow: refused, nothing written."""
        runner = self.runners[data.draw(st.sampled_from(self.holders()))]
        model = self.keys[runner.key]
        illegal = sorted(set(Status) - TRANSITIONS[model.status])
        if not illegal:
            return
        to = data.draw(st.sampled_from(illegal))
        with pytest.raises(LeaseLostError):
            self.ledger.move(runner.claim, to)

    @rule(seconds=STEPS)
    def advance_time(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    @rule(data=st.data())
    def reconcile(self, data: st.DataObject) -> None:
        """``turnout reconcile``: take over every abandoned release with its own key."""
        expected = {
            m.id
            for m in self.keys.values()
            if m.status is Status.UNKNOWN or (m.status.active and m.lease_until < self.now)
        }
        abandoned = self.ledger.abandoned()
        assert {r.id for r in abandoned} == expected
        for record in abandoned:
            self._submit(record.idempotency_key, data.draw(PLAN))

    @rule(key=KEYS)
    def settle(self, key: str) -> None:
        """A human who checked the target records whether an unknown release deployed."""
        model = self.keys.get(key)
        if model is None:
            return
        verdict = Status.RECONCILED if model.deployed else Status.FAILED
        if model.status is not Status.UNKNOWN:
            with pytest.raises(UsageError):
                self.ledger.settle(model.id, verdict, actor="ops", reason="checked")
            return
        record = self.ledger.settle(model.id, verdict, actor="ops", reason="checked")
        assert record.status is verdict
        model.status = verdict

    # Invariants ------------------------------------------------------------------------------

    @invariant()
    def the_ledger_agrees_with_the_model(self) -> None:
        with self.ledger.engine.connect() as conn:
            rows = conn.execute(self._rows).mappings().all()
            log = conn.execute(
                sa.text("SELECT seq, release_id, old, new FROM status_log WHERE seq > :s"),
                {"s": self.log_seq},
            ).all()
        # Every status ever written went along TRANSITIONS; a release starts RUNNING.
        for seq, release_id, old, new in log:
            if old is None:
                assert new == Status.RUNNING.value, f"{release_id} inserted {new}"
            else:
                assert Status(new) in TRANSITIONS[Status(old)], f"{release_id}: {old} -> {new}"
            self.log_seq = seq
        assert {row["idempotency_key"] for row in rows} == set(self.keys)
        for row in rows:
            key = row["idempotency_key"]
            model = self.keys[key]
            status = Status(row["status"])
            # Each observed status follows the last one seen by a legal path (or is the same).
            last = self.seen.get(key)
            if last is None:
                assert status is Status.RUNNING or status in REACHABLE[Status.RUNNING]
            else:
                assert status is last or status in REACHABLE[last], f"{key}: {last} -> {status}"
            self.seen[key] = status
            assert row["id"] == model.id
            assert status is model.status, f"{key}: ledger {status}, model {model.status}"
            assert row["token"] == model.token
            assert row["attempts"] == model.attempts
            if status.active:
                assert row["lease_expires_at"].replace(tzinfo=UTC) == model.lease_until

    @invariant()
    def one_live_holder_and_one_deploy_per_key(self) -> None:
        assert not self.violations, self.violations
        for key, model in self.keys.items():
            holders = [
                r
                for r in self.runners.values()
                if r.key == key and r.claim.token == model.token and model.status.active
            ]
            assert len(holders) <= 1, f"{key} has {len(holders)} valid holders"
            assert model.effective <= 1, f"{key} was deployed {model.effective} times"
            if model.status in (Status.SUCCEEDED, Status.RECONCILED):
                assert model.deployed, f"{key} is {model.status} but never deployed"
        for runner in self.runners.values():
            if runner.lease_until > self.now:  # nobody may take over a live lease
                assert runner.claim.token == self.keys[runner.key].token


class PlainTarget(LifecycleMachine):
    """No probe, target not idempotent: a takeover never calls the plugin; it says unknown."""


class ProbingPlugin(LifecycleMachine):
    """A truthful probe: a takeover calls again only when the probe said "not deployed"."""

    has_probe = True


class IdempotentTarget(LifecycleMachine):
    """No probe, target marked idempotent: a takeover calls again with the same key."""

    target_idempotent = True


MACHINE_SETTINGS = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=False,
)


@pytest.mark.parametrize("machine", [PlainTarget, ProbingPlugin, IdempotentTarget])
def test_lifecycle_state_machine(machine: type[LifecycleMachine]) -> None:
    run_state_machine_as_test(machine, settings=MACHINE_SETTINGS)
