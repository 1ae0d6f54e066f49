"""Worker processes under faults: hangs, crashes, floods, leaks, bad imports, hostile wheels.

Every test installs real fixture wheels (``fixture_plugins/faults/``) into a real store and
releases through real worker processes; nothing is mocked.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import FIXTURES, build_wheel

from turnout import (
    PluginLoadError,
    ReleaseFailedError,
    Status,
    TransientReleaseError,
    Turnout,
)
from turnout import worker as worker_module
from turnout.runtime import OUTPUT_LIMIT
from turnout.store import InstallRequest

GRACE = worker_module.GRACE
MARGIN = 1.5
"""Seconds allowed on top of a deadline for process start-up and bookkeeping on a busy box."""
VERSION = "0.1.0"
SYNTAX_ERROR = '"""Does not parse."""\n\ndef turnout_release(artifact:\n    return {}\n'


class Sleeps:
    """An injected sleep that records the waits instead of waiting."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@dataclass(frozen=True)
class Faults:
    """The fault plugins' wheels, and the files their hostile parts write to."""

    wheels: dict[str, Path]
    wheelhouse: Path
    pth_marker: Path
    import_counter: Path

    def install(self, tt: Turnout, plugin_id: str) -> str:
        """Install one fault plugin into ``tt``'s store; return its environment's digest."""
        request = InstallRequest(
            spec=str(self.wheels[plugin_id]), find_links=[str(self.wheelhouse)], no_index=True
        )
        (outcome,) = tt.install_plugin(request)
        assert str(outcome.plugin.ref) == f"{plugin_id}@{VERSION}"
        return outcome.digest


@pytest.fixture(scope="module")
def faults(wheelhouse: Path, tmp_path_factory: pytest.TempPathFactory) -> Faults:
    """A wheel per fault plugin: module ``turnout_<id>``, distribution ``turnout-fault-<id>``."""
    house = tmp_path_factory.mktemp("faults-wheelhouse")
    marks = tmp_path_factory.mktemp("faults-marks")
    pth_marker = marks / "pth-ran"
    import_counter = marks / "imports"
    sources = {
        path.stem: path.read_text().replace("@COUNTER@", str(import_counter))
        for path in (FIXTURES / "faults").glob("*.py")
    }
    # A SyntaxError would stop ruff from reading a fixture file, so this one is built here.
    sources["syntaxerror"] = SYNTAX_ERROR
    wheels = {}
    for plugin_id, code in sources.items():
        module = f"turnout_{plugin_id}"
        files: dict[str, str | bytes] = {f"{module}.py": code}
        if plugin_id == "pth":
            # site.py would run this line for any folder it adds; a worker must never be one.
            files["turnout_fault_evil.pth"] = f"import os; open({str(pth_marker)!r}, 'w').close()\n"
        wheels[plugin_id] = build_wheel(
            house,
            f"turnout-fault-{plugin_id}",
            VERSION,
            files,
            entry_points={"turnout.releasers": {plugin_id: module}},
            requires=["pluggy>=1.5"],
        )
    return Faults(wheels, wheelhouse, pth_marker, import_counter)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def tt(db_path: Path, home: Path, sleeps: Sleeps) -> Iterator[Turnout]:
    with Turnout(str(db_path), home=home, sleep=sleeps) as handle:
        yield handle


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie waiting for init to reap it is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat.rpartition(")")[2].split()[0]
    return state not in ("Z", "X")


def _children() -> dict[int, str]:
    """This process's child processes and their states, zombies included.

    Tests compare against the children they started with: an earlier test in the same process
    may rightly keep a warm worker (``turnout.release`` keeps one handle per database).
    """
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        state, ppid = stat.rpartition(")")[2].split()[:2]
        if int(ppid) == os.getpid():
            found[int(entry.name)] = state
    return found


def _new_children(before: dict[int, str]) -> dict[int, str]:
    return {pid: state for pid, state in _children().items() if pid not in before}


@contextlib.contextmanager
def _stdin_is_a_pipe() -> Iterator[None]:
    """Put a pipe on this process's descriptor 0, where a worker that inherits it would see it."""
    saved = os.dup(0)
    read, write = os.pipe()
    os.dup2(read, 0)
    os.close(read)
    try:
        yield
    finally:
        os.dup2(saved, 0)
        os.close(saved)
        os.close(write)


def _pids(pidfile: Path) -> list[list[int]]:
    """The pids the hang fixture wrote, one list per call."""
    return [[int(pid) for pid in line.split()] for line in pidfile.read_text().splitlines()]


def _timed_release(tt: Turnout, target: str, key: str) -> tuple[float, ReleaseFailedError]:
    started = time.monotonic()
    with pytest.raises(ReleaseFailedError) as raised:
        tt.release(target, "a.tgz", key=key)
    return time.monotonic() - started, raised.value


# F2: hangs ----------------------------------------------------------------------------------


def test_worker_hang_times_out_is_retried_and_the_next_call_gets_a_fresh_worker(
    tt: Turnout, faults: Faults, sleeps: Sleeps, tmp_path: Path
) -> None:
    faults.install(tt, "hang")
    pidfile = tmp_path / "pids"
    tt.set_target(
        "hang",
        f"hang@{VERSION}",
        config={"mode": "sleep", "pidfile": str(pidfile)},
        timeout=1,
        max_attempts=2,
    )
    tt.set_target("ok", f"hang@{VERSION}", config={"mode": "ok"}, timeout=10)
    elapsed, error = _timed_release(tt, "hang", "hang-1")
    assert type(error) is TransientReleaseError
    assert error.exit_code == 75
    record = error.release
    assert record.status is Status.TIMED_OUT
    assert "WorkerTimeoutError" in (record.error_type or "")
    assert record.attempts == 2
    assert record.retryable is True
    assert record.result is None
    assert len(sleeps.waits) == 1
    # Both attempts waited for their deadline, and neither for much longer.
    assert 2 * 1.0 <= elapsed < 2 * (1.0 + GRACE) + MARGIN
    hung = [pids[0] for pids in _pids(pidfile)]
    assert len(hung) == 2
    assert len(set(hung)) == 2  # the retry ran in a new worker
    assert not any(_running(pid) for pid in hung)
    stored = tt.ledger.get(record.id)
    assert stored is not None
    assert stored.status is Status.TIMED_OUT

    fresh = tt.release("ok", "a.tgz", key="ok-1")
    assert fresh.status is Status.SUCCEEDED
    assert fresh.result is not None
    assert fresh.result["mode"] == "ok"
    assert fresh.result["pid"] not in hung
    assert _running(fresh.result["pid"])


@pytest.mark.parametrize("mode", ["grandchild", "stubborn"])
def test_worker_hang_stops_the_whole_process_group_within_deadline_and_grace(
    tt: Turnout, faults: Faults, tmp_path: Path, mode: str
) -> None:
    """A grandchild holding the output pipe, or a worker ignoring SIGTERM, cannot outlive it."""
    children = _children()
    faults.install(tt, "hang")
    pidfile = tmp_path / "pids"
    tt.set_target(
        "hang",
        f"hang@{VERSION}",
        config={"mode": mode, "pidfile": str(pidfile)},
        timeout=1,
        max_attempts=1,
    )
    elapsed, error = _timed_release(tt, "hang", f"{mode}-1")
    assert error.release.status is Status.TIMED_OUT
    assert error.release.attempts == 1
    assert 1.0 <= elapsed < 1.0 + GRACE + MARGIN
    (pids,) = _pids(pidfile)
    assert len(pids) == (2 if mode == "grandchild" else 1)
    survivors = [pid for pid in pids if _running(pid)]
    assert survivors == []
    assert _new_children(children) == {}


# F4: crashes --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "how"),
    [
        ("exit", "exited with code 3"),
        ("segfault", "was killed by SIGSEGV"),
        ("sigkill", "was killed by SIGKILL"),
        ("exit0", "exited with code 0 without a result"),
    ],
)
def test_worker_crash_is_a_transient_failure_classified_with_its_output(
    tt: Turnout, faults: Faults, sleeps: Sleeps, mode: str, how: str
) -> None:
    faults.install(tt, "crash")
    tt.set_target(
        "c",
        f"crash@{VERSION}",
        config={"mode": mode, "say": f"last words before {mode}"},
        timeout=10,
        max_attempts=2,
    )
    with pytest.raises(TransientReleaseError) as raised:
        tt.release("c", "a.tgz", key=f"crash-{mode}")
    record = raised.value.release
    assert record.status is Status.FAILED  # never SUCCEEDED, exit code 0 or not
    assert record.result is None
    assert record.attempts == 2
    assert record.retryable is True
    assert record.error_type == "turnout.errors.WorkerCrashedError"
    assert record.error == f"WorkerCrashedError: the worker for crash@{VERSION} {how}"
    assert len(sleeps.waits) == 1
    output = record.output or ""
    for attempt in (1, 2):
        assert f"--- attempt {attempt} ---" in output
    assert output.count(f"stdout: last words before {mode}") == 2
    assert output.count(f"stderr: last words before {mode}") == 2
    if mode == "segfault":
        assert "Fatal Python error: Segmentation fault" in output
    assert len(output) <= OUTPUT_LIMIT


def test_worker_after_a_crash_answers_clean_failures_and_results(
    tt: Turnout, faults: Faults
) -> None:
    faults.install(tt, "crash")
    tt.set_target("crash", f"crash@{VERSION}", config={"mode": "sigkill"}, max_attempts=1)
    tt.set_target("fail", f"crash@{VERSION}", config={"mode": "raise"}, max_attempts=3)
    tt.set_target("ok", f"crash@{VERSION}", config={"mode": "ok"})
    with pytest.raises(TransientReleaseError):
        tt.release("crash", "a.tgz", key="k1")
    with pytest.raises(ReleaseFailedError) as raised:
        tt.release("fail", "a.tgz", key="k2")
    assert type(raised.value) is ReleaseFailedError
    assert raised.value.release.attempts == 1
    assert raised.value.release.error == "RuntimeError: crash fixture failed cleanly on attempt 1"
    record = tt.release("ok", "a.tgz", key="k3")
    assert record.status is Status.SUCCEEDED
    assert record.result is not None
    assert record.result["mode"] == "ok"


def test_worker_output_of_each_call_goes_to_its_own_release(tt: Turnout, faults: Faults) -> None:
    # One warm worker answers every call; what it printed during each call is that call's.
    faults.install(tt, "crash")
    pids = set()
    for n in range(1, 6):
        tt.set_target("talk", f"crash@{VERSION}", config={"mode": "ok", "say": f"call {n}"})
        record = tt.release("talk", "a.tgz", key=f"talk-{n}")
        assert record.result is not None
        pids.add(record.result["pid"])
        assert record.output == f"--- attempt 1 ---\nstdout: call {n}\nstderr: call {n}\n"
    assert len(pids) == 1


def test_worker_output_between_calls_goes_to_no_release(
    tt: Turnout, faults: Faults, caplog: pytest.LogCaptureFixture
) -> None:
    # One worker serves every target of its version. What a plugin's own thread prints after
    # the call for one target returned must not land in the next call's output, stored with
    # another target's release and redacted with that release's secrets only (S3, S7).
    faults.install(tt, "crash")
    ref = f"crash@{VERSION}"
    tt.set_target("a", ref, config={"mode": "ok", "say": "call a"})
    tt.release("a", "a.tgz", key="k1")
    (releaser,) = tt._releasers.values()
    assert isinstance(releaser, worker_module.WorkerReleaser)
    call = {"artifact": "a.tgz", "context": {}, "attempt": 1, "timeout": 10.0}
    say = {"mode": "ok", "say": "tenant-a-private", "after": 0.05}
    releaser.release(target="a", config=say, idempotency_key="k2", **call)
    assert releaser.output == "stdout: tenant-a-private\nstderr: tenant-a-private\n"
    time.sleep(0.5)  # the plugin's thread printed "after: tenant-a-private" meanwhile
    with caplog.at_level(logging.WARNING, logger="turnout.worker"):
        result = releaser.release(
            target="b",
            config={"mode": "ok", "say": "call b"},
            idempotency_key="k1",
            **call,
        )
    assert releaser.output == "stdout: call b\nstderr: call b\n"
    assert result["pid"] == releaser.pids()[0]  # the same warm worker answered
    size = len("after: tenant-a-private\n")
    assert f"{ref} printed {size} byte(s) between calls, outside any release" in caplog.text
    assert "tenant-a-private" not in caplog.text


def test_worker_a_plugin_that_forks_answers_once_per_call(tt: Turnout, faults: Faults) -> None:
    # B4 (duplicated): the forked copy also returns from the hook; it must neither answer nor
    # read the next request, and every call gets its own answer.
    faults.install(tt, "fork")
    tt.set_target("fork", f"fork@{VERSION}", config={"linger": 0.1}, max_attempts=1)
    results = []
    for n in range(4):
        record = tt.release("fork", "a.tgz", key=f"fork-{n}")
        results.append(record.result)
        time.sleep(0.2)  # the copy of this call has returned by now
    assert [(r["key"], r["forked_copy"]) for r in results] == [
        (f"fork-{n}", False) for n in range(4)
    ]
    assert len({r["pid"] for r in results}) == 1  # one worker answered them all


# F5: floods ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_worker_flood_keeps_the_result_and_bounds_output_and_memory(
    tt: Turnout, faults: Faults
) -> None:
    faults.install(tt, "flood")
    mib = 300  # to stdout, and as much to stderr: 600 MiB through the output pipe
    tt.set_target("flood", f"flood@{VERSION}", config={"mb": mib}, timeout=60, max_attempts=1)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    record = tt.release("flood", "a.tgz", key="flood-1")
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert record.status is Status.SUCCEEDED
    assert record.result == {
        "artifact": os.path.abspath("a.tgz"),
        "flooded_mib": mib,
        "text": "héllo ✓",
    }
    output = record.output or ""
    assert 0 < len(output.encode()) <= OUTPUT_LIMIT + 256
    assert output.endswith("x" * 1023 + "\n")  # the tail is kept, the nonce is not
    assert "turnout-end" not in output
    assert grown_mib < 100
    # The channel is intact: the next call's answer is exact.
    tt.set_target("flood", f"flood@{VERSION}", config={"mb": 0})
    assert tt.release("flood", "b.tgz", key="flood-2").result == {
        "artifact": os.path.abspath("b.tgz"),
        "flooded_mib": 0,
        "text": "héllo ✓",
    }


# F6: memory and CPU -------------------------------------------------------------------------


def test_worker_memory_leak_is_stopped_by_the_limit_and_the_core_stays_responsive(
    tt: Turnout, faults: Faults, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TURNOUT_WORKER_MEMORY_MB", "300")
    faults.install(tt, "leak")
    faults.install(tt, "crash")
    tt.set_target("leak", f"leak@{VERSION}", timeout=30, max_attempts=1)
    tt.set_target("ok", f"crash@{VERSION}", config={"mode": "ok"}, timeout=10)
    with pytest.raises(ReleaseFailedError) as raised:
        tt.release("leak", "a.tgz", key="leak-1")
    record = raised.value.release
    assert record.status is Status.FAILED
    assert record.error_type == "MemoryError"
    assert record.result is None
    started = time.monotonic()
    assert tt.release("ok", "a.tgz", key="ok-1").status is Status.SUCCEEDED
    assert time.monotonic() - started < 5


def test_worker_cpu_spin_times_out_within_deadline_and_grace(
    tt: Turnout, faults: Faults, tmp_path: Path
) -> None:
    faults.install(tt, "hang")
    pidfile = tmp_path / "pids"
    tt.set_target(
        "spin",
        f"hang@{VERSION}",
        config={"mode": "spin", "pidfile": str(pidfile)},
        timeout=1,
        max_attempts=1,
    )
    elapsed, error = _timed_release(tt, "spin", "spin-1")
    assert error.release.status is Status.TIMED_OUT
    assert "WorkerTimeoutError" in (error.release.error_type or "")
    assert 1.0 <= elapsed < 1.0 + GRACE + MARGIN
    ((pid,),) = _pids(pidfile)
    assert not _running(pid)


# F14: import failures -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("plugin_id", "cause"),
    [
        ("importerror", "No module named 'turnout_fault_missing_dependency'"),
        ("syntaxerror", "SyntaxError"),
    ],
)
def test_worker_import_failure_is_one_attempt_and_a_configuration_error(
    tt: Turnout, faults: Faults, sleeps: Sleeps, plugin_id: str, cause: str
) -> None:
    faults.install(tt, plugin_id)
    faults.import_counter.unlink(missing_ok=True)
    ref = f"{plugin_id}@{VERSION}"

    with pytest.raises(PluginLoadError) as at_set:
        tt.set_target("t", ref)
    with pytest.raises(LookupError):
        tt.registry.get_target("t")  # refused: no row was written

    from sqlalchemy import text

    # Write the row directly, as an older turnout or a hand edit might have.
    with tt.registry.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO targets (name, plugin_id, plugin_version, config, max_attempts, "
                "timeout, revision, created_at, updated_at) VALUES ('t', :id, :version, '{}', "
                "5, 10, 1, '2026-01-01 00:00:00', '2026-01-01 00:00:00')"
            ),
            {"id": plugin_id, "version": VERSION},
        )
    with pytest.raises(PluginLoadError) as at_release:
        tt.release("t", "a.tgz", key="k1")

    for raised in (at_set, at_release):
        assert raised.value.exit_code == 78
        message = str(raised.value)
        assert f"turnout-fault-{plugin_id}" in message
        assert ref in message
        assert cause in message
        if plugin_id == "importerror":
            # What the import printed before failing is kept, never lost to a race.
            assert "hint: pip install turnout-fault-missing-dependency" in message
    assert sleeps.waits == []
    assert tt.ledger.recent() == []
    if plugin_id == "importerror":
        # One import per call: tried once, never retried.
        assert faults.import_counter.read_text().splitlines() == ["imported"] * 2


# S5: .pth files -----------------------------------------------------------------------------


def test_worker_pth_file_in_a_wheel_never_runs(tt: Turnout, faults: Faults) -> None:
    faults.pth_marker.unlink(missing_ok=True)
    digest = faults.install(tt, "pth")
    env = tt.store.path(digest)
    assert (env / "turnout_fault_evil.pth").is_file()  # the wheel did ship it
    tt.set_target("p", f"pth@{VERSION}")
    record = tt.release("p", "a.tgz", key="pth-1")
    assert record.status is Status.SUCCEEDED
    assert record.result is not None
    assert record.result["pid"] != os.getpid()
    assert not faults.pth_marker.exists()
    assert "turnout_pth" not in sys.modules
    assert str(env) not in sys.path
    # The control: the same folder added as a site directory does run it.
    subprocess.run(
        [sys.executable, "-I", "-c", f"import site; site.addsitedir({str(env)!r})"], check=True
    )
    assert faults.pth_marker.exists()


# S6: what a worker's process gets ----------------------------------------------------------


def test_worker_process_is_isolated(
    tt: Turnout, faults: Faults, monkeypatch: pytest.MonkeyPatch
) -> None:
    canary = "canary-7a41c0de-core-secret"
    monkeypatch.setenv("TURNOUT_DATABASE_URL", f"postgresql://turnout:{canary}@db/turnout")
    monkeypatch.setenv("TURNOUT_TEST_CORE_SECRET", canary)
    monkeypatch.setenv("LC_TURNOUT_TEST", "kept")
    digest = faults.install(tt, "introspect")
    env_path = str(tt.store.path(digest))
    with _stdin_is_a_pipe():
        tt.set_target("i", f"introspect@{VERSION}")  # starts the worker
    seen = tt.release("i", "a.tgz", key="iso-1").result
    assert seen is not None

    allowed = {*worker_module.ENV_ALLOWLIST, "HOME", "TMPDIR", "PYTHONIOENCODING"}
    environ: dict[str, str] = seen["environ"]
    assert not {n for n in environ if n not in allowed and not n.startswith("LC_")}
    assert "TURNOUT_DATABASE_URL" not in environ
    assert "TURNOUT_TEST_CORE_SECRET" not in environ
    assert not [name for name, value in environ.items() if canary in value]
    assert environ["LC_TURNOUT_TEST"] == "kept"

    cwd = Path(seen["cwd"])
    assert cwd.parent == tt.store.workers
    assert cwd != Path.cwd()
    assert environ["HOME"] == environ["TMPDIR"] == str(cwd)

    # 0, 1, 2, the two channel pipes, and the descriptor listdir itself opened.
    assert len(seen["fds"]) <= 6
    assert seen["fds"][:3] == [0, 1, 2]
    assert seen["stdin"] == os.devnull

    stdlib = {
        os.path.realpath(sysconfig.get_path(name, vars={"base": sys.base_prefix}))
        for name in ("stdlib", "platstdlib")
    }
    for entry in seen["path"]:
        real = os.path.realpath(entry)
        in_stdlib = any(real == lib or real.startswith(lib + os.sep) for lib in stdlib)
        zipped = real.endswith(".zip") and real.startswith(os.path.realpath(sys.base_prefix))
        assert entry == env_path or ((in_stdlib or zipped) and "site-packages" not in real), entry
    assert env_path in seen["path"]
    assert seen["sqlalchemy"] is False
    assert seen["turnout"] is False

    tt.close()
    assert not cwd.exists()  # the private folder goes with the worker
    assert not _running(seen["pid"])


# L5: many calls leave nothing behind ---------------------------------------------------------


@pytest.mark.slow
def test_worker_many_mixed_calls_leave_no_process_descriptor_or_thread(
    db_path: Path, home: Path, faults: Faults
) -> None:
    children = _children()
    fds_before = len(os.listdir("/proc/self/fd"))
    threads_before = threading.active_count()
    outcomes: dict[str, int] = {}
    with Turnout(str(db_path), home=home, sleep=lambda _: None) as tt:
        faults.install(tt, "crash")
        faults.install(tt, "hang")
        for mode in ("ok", "raise", "exit"):
            tt.set_target(mode, f"crash@{VERSION}", config={"mode": mode}, max_attempts=1)
        tt.set_target("awake", f"hang@{VERSION}", config={"mode": "ok"}, timeout=10)
        tt.set_target(
            "asleep", f"hang@{VERSION}", config={"mode": "sleep"}, timeout=0.5, max_attempts=1
        )
        plan = ["ok", "raise", "exit"] * 330
        for i in range(10):
            plan.insert(i * 99 + 50, "asleep")
        assert len(plan) == 1000  # RELIABILITY L5
        for i, target in enumerate(plan):
            try:
                record = tt.release(target, "a.tgz", key=f"k{i}")
            except ReleaseFailedError as exc:
                record = exc.release
            outcomes[record.status.value] = outcomes.get(record.status.value, 0) + 1
        assert tt.release("awake", "a.tgz", key="last").status is Status.SUCCEEDED
    assert outcomes == {"succeeded": 330, "failed": 660, "timed_out": 10}
    assert _new_children(children) == {}
    assert list(home.joinpath("workers").glob("worker-*")) == []  # private folders removed
    assert abs(len(os.listdir("/proc/self/fd")) - fds_before) <= 2
    assert threading.active_count() == threads_before
