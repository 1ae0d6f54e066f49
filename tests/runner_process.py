"""A job-runner process for the reliability tests: one ``Turnout`` handle, driven over pipes.

The tests start it as a real process (``python runner_process.py URL``) and send it one JSON
command per line on stdin; it answers one JSON line on stdout per command. Every answer says how
the call ended, the way a job runner would see it: ``ran`` (this call released), ``reused`` (the
key was released before), ``in_progress`` (held elsewhere; exit 75), ``failed`` (a recorded
failure), ``error`` (any other turnout error) or ``crash`` (an exception turnout should never
raise). The parent side is :class:`Runner`.

Commands:
    {"op": "release", "target": ..., "artifact": ..., "key": ...}
    {"op": "deliver", "events": [[target, artifact, key], ...]}: releases in order; answers
        {"outcome": "done", "answers": [...]}.
    {"op": "set_target", "name": ..., "plugin": ..., "config": {...}, "isolation": ...}
    {"op": "replay", "since": SECONDS}: replays the window's failed, timed-out and unknown
        originals; answers {"outcome": "done", "answers": [...]}, one per original.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from datetime import timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()


# The runner process ------------------------------------------------------------------------


def _answer_of(call: Any) -> dict[str, Any]:
    from turnout.errors import ReleaseFailedError, ReleaseInProgressError, TurnoutError

    try:
        record = call()
    except ReleaseInProgressError as exc:
        return {"outcome": "in_progress", "id": exc.release_id, "exit_code": exc.exit_code}
    except ReleaseFailedError as exc:
        return {
            "outcome": "failed",
            "error_type": type(exc).__name__,
            "exit_code": exc.exit_code,
            **_record(exc.release),
        }
    except TurnoutError as exc:
        return {
            "outcome": "error",
            "error_type": type(exc).__name__,
            "message": str(exc),
            "exit_code": exc.exit_code,
        }
    except Exception as exc:  # noqa: BLE001 - reported to the test, which fails on it
        return {
            "outcome": "crash",
            "error_type": f"{type(exc).__module__}.{type(exc).__qualname__}",
            "message": str(exc),
            "traceback": traceback.format_exc(),
        }
    if record is None:
        return {"outcome": "ok"}
    return {"outcome": "reused" if record.reused else "ran", "exit_code": 0, **_record(record)}


def _record(record: Any) -> dict[str, Any]:
    return {
        "id": record.id,
        "key": record.idempotency_key,
        "status": record.status.value,
        "attempts": record.attempts,
        "result": record.result,
        "reused": record.reused,
    }


def _serve(url: str, *, backoff: bool) -> None:
    from turnout import Turnout

    def no_wait(_seconds: float) -> None:
        pass

    with Turnout(url, sleep=time.sleep if backoff else no_wait) as tt:

        def release(target: str, artifact: str, key: str) -> dict[str, Any]:
            return _answer_of(lambda: tt.release(target, artifact, key=key))

        def handle(command: dict[str, Any]) -> dict[str, Any]:
            op = command["op"]
            if op == "release":
                return release(command["target"], command["artifact"], command["key"])
            if op == "deliver":
                answers = [release(*event) for event in command["events"]]
                return {"outcome": "done", "answers": answers}
            if op == "set_target":

                def set_target() -> None:
                    tt.set_target(
                        command["name"],
                        command["plugin"],
                        config=command.get("config"),
                        isolation=command.get("isolation"),
                    )

                return _answer_of(set_target)
            if op == "replay":
                originals = tt.replay_candidates(since=timedelta(seconds=command["since"]))
                answers = []
                for item in tt.replay(originals):
                    if item.error is not None:
                        error = item.error

                        def failed(error: Exception = error) -> None:
                            raise error

                        answer = _answer_of(failed)
                    else:
                        answer = _answer_of(lambda item=item: item.record)
                    answers.append({**answer, "original": item.original.id, "key": item.key})
                return {"outcome": "done", "answers": answers}
            raise ValueError(f"unknown op {op!r}")

        _write({"outcome": "ready", "pid": os.getpid()})
        for line in sys.stdin:
            if line.strip():
                _write(handle(json.loads(line)))


def _write(answer: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()


# The test's side ---------------------------------------------------------------------------


class Runner:
    """One runner process: send it commands, read its answers (with a timeout)."""

    def __init__(
        self, url: str, *, logs: Path, name: str, backoff: bool = True, startup: float = 60
    ) -> None:
        self.name = name
        self.stderr_path = logs / f"{name}.stderr"
        args = [sys.executable, str(HERE), url] + ([] if backoff else ["--no-backoff"])
        with self.stderr_path.open("wb") as stderr:
            self.process = subprocess.Popen(
                args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True
            )
        self._answers: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._startup = startup

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._answers.put(json.loads(line))
        self._answers.put(None)

    def wait_ready(self) -> int:
        answer = self.recv(timeout=self._startup)
        assert answer["outcome"] == "ready", answer
        pid: int = answer["pid"]
        return pid

    def send(self, command: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def recv(self, timeout: float = 60) -> dict[str, Any]:
        try:
            answer = self._answers.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(
                f"runner {self.name} gave no answer within {timeout}s; stderr:\n{self.stderr()}"
            ) from None
        if answer is None:
            raise AssertionError(
                f"runner {self.name} exited ({self.process.poll()}); stderr:\n{self.stderr()}"
            )
        return answer

    def answered(self) -> bool:
        """Whether an answer is waiting (:meth:`recv` would return at once)."""
        return not self._answers.empty()

    def request(self, command: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
        self.send(command)
        return self.recv(timeout)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")[-4000:]

    def close(self) -> None:
        if self.process.stdin is not None and not self.process.stdin.closed:
            with suppress(BrokenPipeError):
                self.process.stdin.close()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._reader.join(timeout=5)
        if self.process.stdout is not None:
            self.process.stdout.close()


@contextmanager
def runners(url: str, count: int, logs: Path, *, backoff: bool = True) -> Iterator[list[Runner]]:
    """``count`` runner processes on ``url``, started together, each ready before yielding."""
    logs.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        started = []
        for i in range(count):
            runner = Runner(url, logs=logs, name=f"runner-{i}", backoff=backoff)
            stack.callback(runner.close)
            started.append(runner)
        for runner in started:
            runner.wait_ready()
        yield started


if __name__ == "__main__":
    _serve(sys.argv[1], backoff="--no-backoff" not in sys.argv[2:])
