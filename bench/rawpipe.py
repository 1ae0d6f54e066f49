"""The floor of a warm round trip: a raw JSON request and answer between two processes.

The child is ``python -I -S`` with a loop that reads a length-prefixed JSON frame on stdin,
decodes it, encodes an answer and writes it on stdout; the parent encodes, writes, reads and
decodes. No threads, no polling, no output capture: the least any worker protocol can cost.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from typing import Any

HEADER = struct.Struct(">I")
ECHO_SERVER = """
import json, os, struct
H = struct.Struct(">I")
def read(n):
    data = b""
    while len(data) < n:
        chunk = os.read(0, n - len(data))
        if not chunk:
            raise SystemExit(0)
        data += chunk
    return data
while True:
    (size,) = H.unpack(read(4))
    request = json.loads(read(size))
    body = json.dumps({"ok": True, "result": {"ok": True}, "nonce": request["nonce"]}).encode()
    os.write(1, H.pack(len(body)) + body)
"""


class RawPipe:
    """A child process that answers JSON frames, and the parent's side of it."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", ECHO_SERVER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self._out = self.process.stdin.fileno()
        self._in = self.process.stdout.fileno()

    def call(self, message: dict[str, Any]) -> dict[str, Any]:
        body = json.dumps(message, separators=(",", ":")).encode()
        os.write(self._out, HEADER.pack(len(body)) + body)
        (size,) = HEADER.unpack(self._read(HEADER.size))
        answer: dict[str, Any] = json.loads(self._read(size))
        return answer

    def _read(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = os.read(self._in, size - len(data))
            if not chunk:
                raise EOFError("the echo server exited")
            data += chunk
        return data

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=5)
        if self.process.stdout is not None:
            self.process.stdout.close()
