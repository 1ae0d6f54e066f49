"""Worker processes: long-lived processes per plugin version, driven over pipes.

A worker is ``python -I -S`` running :mod:`turnout._serve`: isolated mode and no ``site``, so its
``sys.path`` is the standard library plus the plugin version's own environment, never the
core's site-packages, and no ``.pth`` file runs. It gets an allow-listed environment, a private
working directory, ``/dev/null`` as stdin and no descriptor but its three pipes. It leads its
own process group, so that a deadline can stop it and everything it spawned.

Requests and answers are length-prefixed JSON on two dedicated pipes. The plugin's stdout and
stderr share a third pipe, which the core reads into a bounded buffer while it waits for an
answer, so a flood during a call can neither block the worker nor grow the core's memory.
(Between calls nobody reads it: a plugin's own thread that prints more than the pipe holds
then waits until the next call, which drops what was printed since the last one ended.)
Both sides poll for a moment before they block (see ``_serve.spin``), which keeps a warm
round trip in tens of microseconds.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import logging
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from turnout import _secrets, _serve, _settings, telemetry
from turnout.errors import (
    ConfigRejectedError,
    PluginLoadError,
    WorkerCrashedError,
    WorkerTimeoutError,
)

log = logging.getLogger("turnout.worker")

OUTPUT_LIMIT = 64 << 10
"""Bytes of a call's stdout/stderr kept: the last 64 KiB."""
IDLE_ENV = "TURNOUT_WORKER_IDLE_SECONDS"
MEMORY_ENV = "TURNOUT_WORKER_MEMORY_MB"
GRACE = 2.0
"""Seconds between SIGTERM and SIGKILL when a deadline passes."""
ANSWER_SPIN = 0.0002
"""Seconds the core polls for an answer without sleeping before it blocks (``_serve.spin``):
a no-op plugin answers in about 30 µs, a real release takes milliseconds or more, for which
this costs nothing worth counting."""
START_TIMEOUT = 30.0
"""Seconds a worker may take from spawn to serving (importing the plugin included)."""
DEFAULT_MEMORY_LIMIT_MB = 2048
"""Address-space limit of a worker (RLIMIT_AS); ``TURNOUT_WORKER_MEMORY_MB`` overrides it."""
DEFAULT_IDLE_SECONDS = 300.0
"""Seconds a worker may wait for its next call before it is stopped (by this process's
``turnout-idle-workers`` thread); ``TURNOUT_WORKER_IDLE_SECONDS`` overrides it."""
ENV_ALLOWLIST = (
    "PATH", "LANG", "LANGUAGE", "TZ", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy",
    "https_proxy", "no_proxy", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
)  # fmt: skip
"""Variables a worker inherits (plus ``LC_*``); everything else, secrets included, stays out."""
SERVE = Path(_serve.__file__)


class WorkerError(Exception):
    """An error the plugin raised inside the worker, carried back by type name and message."""

    def __init__(self, type_name: str, message: str, retryable: bool) -> None:
        super().__init__(f"{type_name}: {message}" if message else type_name)
        self.type_name = type_name
        self.retryable = retryable


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """Exactly what one worker loads: the pin, its distribution and entry point, and where."""

    plugin_id: str
    version: str
    distribution: str
    entry_point: str
    path: tuple[str, ...]
    own_environment: bool = True
    """False for a plugin in turnout's own environment (``path`` is then turnout's path)."""

    @property
    def ref(self) -> str:
        return f"{self.plugin_id}@{self.version}"


def worker_environment(home: Path) -> dict[str, str]:
    """The allow-listed environment of a worker process."""
    env = {name: os.environ[name] for name in ENV_ALLOWLIST if name in os.environ}
    env.update({k: v for k, v in os.environ.items() if k.startswith("LC_")})
    env.setdefault("PATH", os.defpath)
    env["HOME"] = str(home)
    env["TMPDIR"] = str(home)
    env["PYTHONIOENCODING"] = "utf-8:backslashreplace"
    return env


class _Output:
    """A worker's stdout/stderr pipe, keeping a bounded tail of what it says.

    The core reads it while it waits for a call's answer (:meth:`WorkerProcess._receive`
    polls both pipes), so a plugin printing without end never blocks on a full pipe during a
    call, and the core keeps the last ``limit`` bytes. No thread reads it: a reader thread
    woke for every call's end marker and contended with the waiting caller for the GIL, which
    cost a warm round trip more than the exchange itself.
    """

    def __init__(self, fd: int, limit: int = OUTPUT_LIMIT) -> None:
        os.set_blocking(fd, False)
        self.fd = fd
        self.closed = False
        self._limit = limit
        self._buffer = bytearray()
        self._cut = False  # the buffer lost its beginning since the last take

    def pump(self) -> None:
        """Read what the pipe holds now, without waiting; close it at end of stream."""
        keep = self._limit + 256  # room for a marker that straddles the cut
        while not self.closed:
            try:
                chunk = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
            if not chunk:
                self.close()
                return
            self._buffer += chunk
            if len(self._buffer) > 2 * keep:
                del self._buffer[:-keep]
                self._cut = True

    def take(self, nonce: bytes | None, wait: float) -> str:
        """Everything up to ``nonce``'s end marker (or all there is, when ``None`` or when the
        marker did not come within ``wait`` seconds or the pipe closed)."""
        marker = _serve.NONCE_PREFIX + nonce + b"\x00" if nonce else None
        deadline = time.monotonic() + wait
        self.pump()
        while not self.closed and (marker is None or marker not in self._buffer):
            if not _wait(self.fd, select.POLLIN, deadline):
                break
            self.pump()
        if marker and marker in self._buffer:
            head, _, tail = bytes(self._buffer).partition(marker)
            self._buffer[:] = tail
        else:
            head = bytes(self._buffer)
            self._buffer.clear()
        cut, self._cut = self._cut or len(head) > self._limit, False
        text = head[-self._limit :].decode("utf-8", "backslashreplace")
        return _secrets.DROPPED + text if cut else text

    def drop(self) -> int:
        """Drop what the pipe and the buffer hold now; return how many bytes that was (at
        least: a flood may have been cut already)."""
        self.pump()
        dropped = len(self._buffer)
        self._buffer.clear()
        self._cut = False
        return dropped

    def drain(self, timeout: float) -> None:
        """Read until the worker's end closes (or ``timeout``), keeping it for :meth:`take`;
        then close our end."""
        deadline = time.monotonic() + timeout
        self.pump()
        while not self.closed and _wait(self.fd, select.POLLIN, deadline):
            self.pump()
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self.fd)


class WorkerProcess:
    """One running worker for one plugin version."""

    def __init__(self, spec: WorkerSpec, *, home: Path, memory_limit_mb: int | None) -> None:
        self.spec = spec
        self._home = Path(tempfile.mkdtemp(prefix="worker-", dir=home))
        requests_r, self._requests = os.pipe()
        self._responses, responses_w = os.pipe()
        pycache = home / "pycache"
        pycache.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable, "-I", "-S", "-X", f"pycache_prefix={pycache}",
            str(SERVE), str(requests_r), str(responses_w),
        ]  # fmt: skip
        try:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                pass_fds=(requests_r, responses_w),
                cwd=self._home,
                env=worker_environment(self._home),
                start_new_session=True,
            )
        finally:
            os.close(requests_r)
            os.close(responses_w)
        assert self.process.stdout is not None  # noqa: S101 - stdout=PIPE above
        self._output = _Output(os.dup(self.process.stdout.fileno()))
        self.process.stdout.close()
        self._buffer = bytearray()
        self._memory_limit_mb = memory_limit_mb
        self._called = False

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def start(self, timeout: float) -> None:
        """Send the load request and wait until the worker serves, or raise PluginLoadError."""
        load = {
            "path": list(self.spec.path),
            "distribution": self.spec.distribution,
            "version": self.spec.version,
            "plugin_id": self.spec.plugin_id,
            "entry_point": self.spec.entry_point,
            "own_environment": self.spec.own_environment,
            "memory_limit_mb": self._memory_limit_mb,
        }
        try:
            answer = self._exchange(load, timeout, nonce=None)
        except (WorkerCrashedError, WorkerTimeoutError) as exc:
            raise PluginLoadError(
                self.spec.ref, self.spec.distribution, f"{exc}{_tail(exc.output)}"
            ) from None
        if not answer.get("ok"):
            error = answer["error"]
            self.stop()  # joins the output thread, so everything the import printed is in
            output = self._output.take(None, wait=0)
            raise PluginLoadError(
                self.spec.ref,
                self.spec.distribution,
                f"{error['type']}: {error['message']}{_tail(output)}",
            )

    def call(self, op: str, args: Mapping[str, Any], timeout: float) -> tuple[dict[str, Any], str]:
        """Run one operation; return the answer and what the plugin printed meanwhile.

        Raises:
            WorkerTimeoutError: No answer within ``timeout``; the process group was stopped.
            WorkerCrashedError: The worker died before answering.
        """
        if self._called:
            self._drop_between_calls()
        self._called = True
        nonce = secrets.token_hex(8)
        message: dict[str, Any] = {"op": op, "args": dict(args), "nonce": nonce}
        trace = telemetry.carrier()
        if trace:  # only while a span records: the plugin's own spans nest under the attempt
            message["trace"] = trace
        answer = self._exchange(message, timeout, nonce=nonce)
        return answer, self._output.take(nonce.encode(), wait=1.0)

    def _drop_between_calls(self) -> None:
        """Drop what the plugin printed since the last call ended (a thread of its own, say).

        It belongs to no release: kept with the next one, it would be stored in the record of
        whichever target calls this version next, redacted with that release's secrets but
        not with the secrets of the call that printed it. (What the plugin printed while it
        loaded stays with the first call, which started it.)
        """
        dropped = self._output.drop()
        if dropped:
            log.warning(
                "%s printed %d byte(s) between calls, outside any release; they are not kept "
                "(a plugin's output is stored with a release only while a call runs)",
                self.spec.ref,
                dropped,
            )

    def _exchange(
        self, message: Mapping[str, Any], timeout: float, *, nonce: str | None
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        try:
            self._send(_serve.encode_frame(message), deadline)
            answer = self._receive(deadline)
            while answer is not None and answer.pop("nonce", None) != nonce:
                answer = self._receive(deadline)  # not this call's answer: never taken for it
        except TimeoutError:
            self.kill()
            raise WorkerTimeoutError(
                self.spec.ref, timeout, self._output.take(None, wait=0.5)
            ) from None
        if answer is None:
            how = self._death()
            raise WorkerCrashedError(self.spec.ref, how, self._output.take(None, wait=0.5))
        return answer

    def _send(self, data: bytes, deadline: float) -> None:
        view = memoryview(data)
        while view:
            if not _wait(self._requests, select.POLLOUT, deadline):
                raise TimeoutError
            try:
                view = view[os.write(self._requests, view) :]
            except BrokenPipeError:
                return  # the worker is gone; the read below reports how

    def _receive(self, deadline: float) -> dict[str, Any] | None:
        while True:
            if len(self._buffer) >= _serve.HEADER.size:
                (size,) = _serve.HEADER.unpack_from(self._buffer)
                end = _serve.HEADER.size + size
                if len(self._buffer) >= end:
                    body = bytes(self._buffer[_serve.HEADER.size : end])
                    del self._buffer[:end]
                    return _decode(body)
            if not self._wait_answer(deadline):
                raise TimeoutError
            chunk = os.read(self._responses, 1 << 16)
            if not chunk:
                return None
            self._buffer += chunk

    def _wait_answer(self, deadline: float) -> bool:
        """Wait until the answer pipe has something (or closed), reading the plugin's output
        meanwhile; false at the deadline. Polls without sleeping for a moment first."""
        poller = select.poll()
        events = select.POLLIN | select.POLLHUP | select.POLLERR
        poller.register(self._responses, events)
        output = self._output
        if not output.closed:
            poller.register(output.fd, events)
        awake = min(ANSWER_SPIN, deadline - time.monotonic())
        if awake > 0:
            _serve.spin(poller, awake)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            answered = False
            for fd, _ in poller.poll(remaining * 1000):
                if fd == self._responses:
                    answered = True
                else:
                    output.pump()
                    if output.closed:
                        poller.unregister(fd)
            if answered:
                return True

    def _death(self) -> str:
        try:
            code = self.process.wait(timeout=GRACE)
        except subprocess.TimeoutExpired:
            self.kill()
            return "closed its result channel without exiting"
        self.kill()  # whatever it spawned goes with it
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return f"was killed by {name}"
        if code == 0:
            return "exited with code 0 without a result"
        return f"exited with code {code}"

    def kill(self) -> None:
        """Stop the whole process group: SIGTERM, then SIGKILL after the grace period."""
        pgid = self.process.pid
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=GRACE)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=GRACE)
        self._close()

    def stop(self) -> None:
        """Ask the worker to exit; kill it if it does not within the grace period."""
        if self.alive:
            with contextlib.suppress(OSError):
                os.write(self._requests, _serve.encode_frame({"op": "stop"}))
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=GRACE)
        self.kill()

    def _close(self) -> None:
        for fd in (self._requests, self._responses):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._requests = self._responses = -1
        self._output.drain(timeout=GRACE)
        shutil.rmtree(self._home, ignore_errors=True)


def _wait(fd: int, event: int, deadline: float) -> bool:
    poller = select.poll()
    poller.register(fd, event | select.POLLHUP | select.POLLERR)
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        try:
            return bool(poller.poll(remaining * 1000))
        except InterruptedError:  # pragma: no cover - PEP 475 retries, but be explicit
            continue
        except OSError as exc:  # pragma: no cover
            if exc.errno != errno.EINTR:
                raise


def _decode(body: bytes) -> dict[str, Any]:
    import json

    message: dict[str, Any] = json.loads(body)
    return message


def _tail(output: str) -> str:
    output = output.strip()
    return f"\n--- worker output (last lines) ---\n{output[-2000:]}" if output else ""


class WorkerReleaser:
    """A :class:`~turnout.releaser.Releaser` whose plugin runs in worker processes.

    A worker starts on first use and stays warm for later calls; one that died, or was stopped
    at a deadline, is replaced by a fresh one. A call finds a worker idle or starts another,
    so that threads releasing with one version at once run at once (RELIABILITY C5) instead
    of queueing for one process: as many workers stay warm as calls ran together, until they
    have waited ``idle_seconds`` for a call (the most recently used is taken first, so a
    burst's extra workers are the ones that age). :attr:`output` is the calling thread's last
    call's.

    Raises:
        ConfigurationError: ``TURNOUT_WORKER_MEMORY_MB`` or ``TURNOUT_WORKER_IDLE_SECONDS``
            is not a number above 0.
    """

    def __init__(
        self,
        spec: WorkerSpec,
        *,
        home: Path,
        start_timeout: float = START_TIMEOUT,
        idle_seconds: float | None = None,
    ) -> None:
        self.spec = spec
        self._home = home
        self._start_timeout = start_timeout
        if idle_seconds is None:
            idle_seconds = _settings.number(IDLE_ENV, DEFAULT_IDLE_SECONDS)
        self._idle_seconds = idle_seconds
        self._lock = threading.Lock()
        self._idle: list[tuple[float, WorkerProcess]] = []  # (idle since, worker), oldest first
        self._started: set[WorkerProcess] = set()
        self._last = threading.local()
        self._memory_limit_mb = int(
            _settings.number(MEMORY_ENV, DEFAULT_MEMORY_LIMIT_MB, integer=True, unit="MB")
        )
        with _live_lock:
            _live.add(self)
        _idle_workers.watch(idle_seconds)

    @property
    def output(self) -> str:
        """What the plugin printed during this thread's last call (its last 64 KiB)."""
        output: str = getattr(self._last, "output", "")
        return output

    def pids(self) -> list[int]:
        """The process ids of this version's running workers, idle or busy."""
        with self._lock:
            return sorted(p.process.pid for p in self._started if p.alive)

    def _take(self) -> WorkerProcess:
        """An idle, living worker, or a new one (started: import errors surface here)."""
        with self._lock:
            while self._idle:
                _, process = self._idle.pop()
                if process.alive:
                    return process
                self._started.discard(process)
                process.kill()  # its pipes and folder
        process = WorkerProcess(self.spec, home=self._home, memory_limit_mb=self._memory_limit_mb)
        with self._lock:
            self._started.add(process)
        try:
            process.start(self._start_timeout)
        except BaseException:
            self._drop(process)
            raise
        return process

    def _drop(self, process: WorkerProcess) -> None:
        process.kill()
        with self._lock:
            self._started.discard(process)

    def _give_back(self, process: WorkerProcess) -> None:
        if _idle_workers.thread is None:
            _idle_workers.start()
        with self._lock:
            self._idle.append((time.monotonic(), process))

    def stop_idle(self, now: float) -> float:
        """Stop the workers that have waited ``idle_seconds`` for a call by ``now``; return
        when the next one will have waited that long, if nobody calls it meanwhile (a
        worker that goes idle later waits until ``now + idle_seconds`` at the earliest).

        They leave the pool first, under the lock, so that no call takes one being stopped.
        """
        cutoff = now - self._idle_seconds
        with self._lock:
            count = 0
            while count < len(self._idle) and self._idle[count][0] <= cutoff:
                count += 1
            waited = [process for _, process in self._idle[:count]]
            del self._idle[:count]
            self._started.difference_update(waited)
            oldest = self._idle[0][0] if self._idle else now
        if waited:
            for process in waited:
                process.stop()
            log.info(
                "stopped %d idle worker(s) of %s (%s s without a call)",
                len(waited),
                self.spec.ref,
                f"{self._idle_seconds:g}",
            )
        return oldest + self._idle_seconds

    def ensure_started(self) -> None:
        """Start a worker now (import errors surface here, as PluginLoadError)."""
        self._give_back(self._take())

    def _call(self, op: str, args: Mapping[str, Any], timeout: float) -> dict[str, Any]:
        worker = self._take()
        try:
            answer, self._last.output = worker.call(op, args, timeout)
        except (WorkerTimeoutError, WorkerCrashedError) as exc:
            self._last.output = exc.output
            self._drop(worker)  # stopped already; this closes what is left of it
            raise
        except BaseException:
            # Interrupted mid-call (SIGTERM's grace ran out, Ctrl-C): its answer would be
            # read as the next call's. Stop it, and whatever it started.
            self._drop(worker)
            raise
        self._give_back(worker)
        if not answer.get("ok"):
            error = answer["error"]
            raise WorkerError(error["type"], error["message"], bool(error["retryable"]))
        return answer

    def validate_config(self, config: Mapping[str, Any], *, timeout: float) -> None:
        try:
            self._call("validate", {"config": dict(config)}, timeout)
        except WorkerError as exc:
            if exc.type_name == "ValueError":
                raise ValueError(str(exc).removeprefix("ValueError: ")) from None
            raise ConfigRejectedError(self.spec.ref, str(exc)) from None

    def probe(
        self,
        *,
        artifact: str,
        target: str,
        config: Mapping[str, Any],
        idempotency_key: str,
        timeout: float,
    ) -> tuple[bool, dict[str, Any] | None]:
        args = {
            "artifact": artifact,
            "target": target,
            "config": dict(config),
            "idempotency_key": idempotency_key,
        }
        answer = self._call("probe", args, timeout)
        return bool(answer["implemented"]), answer["result"]

    def release(
        self,
        *,
        artifact: str,
        target: str,
        config: Mapping[str, Any],
        context: Mapping[str, str],
        idempotency_key: str,
        attempt: int,
        timeout: float,
    ) -> dict[str, Any]:
        args = {
            "artifact": artifact,
            "target": target,
            "config": dict(config),
            "context": dict(context),
            "idempotency_key": idempotency_key,
            "attempt": attempt,
        }
        result: dict[str, Any] = self._call("release", args, timeout)["result"]
        return result

    def close(self) -> None:
        """Stop every worker of this version."""
        with self._lock:
            started, self._started, self._idle = self._started, set(), []
        for process in started:
            process.stop()


_live: weakref.WeakSet[WorkerReleaser] = weakref.WeakSet()
_live_lock = threading.Lock()


def _live_releasers() -> list[WorkerReleaser]:
    with _live_lock:  # a WeakSet cannot be walked while another thread adds to it
        return list(_live)


class _IdleWorkers:
    """The thread that stops every version's workers once they have waited too long for a
    call, so that a job runner which goes quiet for hours does not keep them meanwhile.

    It starts when the process first returns a worker to a pool, and sleeps until the next
    worker would have waited its limit. No call wakes it, because a worker that becomes idle
    after a look is due no earlier than that look plus the shortest limit; only a version
    with a shorter limit than any before does. A forked child (a Celery pool process) starts
    its own: the parent's thread does not run in it.
    """

    def __init__(self) -> None:
        self.thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._shortest = DEFAULT_IDLE_SECONDS
        os.register_at_fork(after_in_child=self._forget)

    def watch(self, limit: float) -> None:
        """A version whose workers may wait ``limit`` seconds: look sooner if it is shorter."""
        with self._lock:
            if limit < self._shortest:
                self._shortest = limit
                self._wake.set()

    def start(self) -> None:
        with self._lock:
            if self.thread is None:
                self.thread = threading.Thread(
                    target=self._run, name="turnout-idle-workers", daemon=True
                )
                self.thread.start()

    def _forget(self) -> None:
        self.thread = None
        self._lock = threading.Lock()
        self._wake = threading.Event()

    def _run(self) -> None:
        while True:
            self._wake.clear()  # before the look: a shorter limit set during it still wakes
            now = time.monotonic()
            due = now + self._shortest
            for releaser in _live_releasers():
                try:
                    due = min(due, releaser.stop_idle(now))
                except Exception:  # a worker that cannot be stopped must not end the thread
                    log.exception("stopping %s's idle workers failed", releaser.spec.ref)
            self._wake.wait(max(due - time.monotonic(), 0.01))


_idle_workers = _IdleWorkers()


@atexit.register
def _stop_all() -> None:
    # A job runner that exits without closing its handle leaves no worker behind.
    for releaser in _live_releasers():
        releaser.close()
