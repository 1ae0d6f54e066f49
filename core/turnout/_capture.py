"""What an inline plugin prints, captured per thread, so that it is stored like a worker's.

While at least one thread runs inline plugin code, ``sys.stdout`` and ``sys.stderr`` are
wrapped: a write from a thread inside :func:`captured` goes to that thread's buffer, a write
from any other thread goes on to the stream as before. The wrappers come off when the last
capture ends (unless something else replaced the stream meanwhile; then it is left alone).
Writes straight to file descriptors (``os.write``, a child process) are not captured.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from turnout import _secrets

LIMIT = 64 << 10
"""Characters of a call's output kept: the last 64 Ki, as for a worker."""
_STREAMS = ("stdout", "stderr")
_lock = threading.Lock()
_active = 0
_local = threading.local()


class _Routed:
    """A text stream that sends the capturing thread's writes to its buffer."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str | bytes) -> int:
        buffer: list[str] | None = getattr(_local, "buffer", None)
        if buffer is None:
            return self.stream.write(text)  # type: ignore[arg-type]
        if isinstance(text, bytes | bytearray):  # what some libraries write (click.echo)
            text = bytes(text).decode("utf-8", "backslashreplace")
        buffer.append(text)
        if len(buffer) > 256:  # keep it bounded: join, keep the tail
            buffer[:] = [_secrets.keep_tail("".join(buffer), LIMIT)]
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if getattr(_local, "buffer", None) is None:
            self.stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


@contextmanager
def captured() -> Iterator[list[str]]:
    """Capture this thread's writes to ``sys.stdout``/``sys.stderr`` into the yielded list."""
    global _active  # noqa: PLW0603 - one count of captures for the process
    with _lock:
        if _active == 0:
            for name in _STREAMS:
                stream = getattr(sys, name)
                if stream is not None and not isinstance(stream, _Routed):
                    setattr(sys, name, _Routed(stream))
        _active += 1
    outer = getattr(_local, "buffer", None)
    buffer: list[str] = []
    _local.buffer = buffer
    try:
        yield buffer
    finally:
        _local.buffer = outer
        with _lock:
            _active -= 1
            if _active == 0:
                for name in _STREAMS:
                    stream = getattr(sys, name)
                    if isinstance(stream, _Routed):
                        setattr(sys, name, stream.stream)


def text(buffer: list[str]) -> str:
    """The captured output, its last :data:`LIMIT` characters (see ``_secrets.keep_tail``)."""
    return _secrets.keep_tail("".join(buffer), LIMIT)
