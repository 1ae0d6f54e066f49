"""Fixtures: configs, an independent signature check, respx, and a real receiver on loopback.

Helpers are handed out as fixtures because, with ``--import-mode=importlib``, test modules
cannot import each other or this file. The signature check is written here from the README's
description, not imported from the plugin, so a test that uses it checks the documented
scheme.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import respx

URL = "https://hooks.example.com/turnout"
PROBE_URL = "https://hooks.example.com/turnout/seen"
# A canary: no message, result or repr may ever contain it.
SECRET = "canary-s3cret-8f2b1e"

Verify = Callable[[str, bytes], bool]


@pytest.fixture
def secret() -> str:
    return SECRET


@pytest.fixture
def config() -> dict[str, Any]:
    """A resolved config, as the release and probe hooks receive it."""
    return {"url": URL, "secret": SECRET, "probe_url": PROBE_URL}


@pytest.fixture
def stored_config() -> dict[str, Any]:
    """A config as stored, secret reference unresolved, as turnout_validate_config sees it."""
    return {"url": URL, "secret": "env:HOOK_SECRET"}


def _verify(secret: str, header: str, signed: bytes, *, tolerance: float = 300) -> bool:
    fields = dict(part.split("=", 1) for part in header.split(","))
    timestamp = int(fields["t"])
    if abs(time.time() - timestamp) > tolerance:
        return False
    expected = hmac.new(
        secret.encode(), f"{timestamp}.".encode() + signed, hashlib.sha256
    ).hexdigest()
    return hmac.compare_digest(expected, fields["v1"])


@pytest.fixture
def verify() -> Verify:
    """``verify(header, signed)``: whether a signature header is valid for SECRET."""
    return lambda header, signed: _verify(SECRET, header, signed)


@pytest.fixture
def transient() -> Callable[[BaseException], bool]:
    """turnout's rule for whether an error is retried (DESIGN.md, the releaser contract)."""

    def rule(exc: BaseException) -> bool:
        return bool(getattr(exc, "retryable", False)) or isinstance(
            exc, TimeoutError | ConnectionError
        )

    return rule


@pytest.fixture
def router() -> Iterator[respx.MockRouter]:
    """respx in charge of every request: one that no route matches fails the test."""
    with respx.mock(assert_all_called=False, assert_all_mocked=True) as mock:
        yield mock


@dataclass
class Receiver:
    """A webhook receiver on loopback that verifies signatures and remembers keys.

    Attributes:
        url: Where to POST notifications.
        probe_url: Where to ask whether a key was seen.
        deliveries: One entry per POST: key, whether the signature verified, the body.
        seen: Keys of verified notifications, in order, each once.
    """

    url: str
    probe_url: str
    deliveries: list[dict[str, Any]] = field(default_factory=list)
    seen: list[str] = field(default_factory=list)


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    """A real HTTP server on 127.0.0.1 (http.server in a thread), stopped after the test."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)  # loopback traffic goes straight there
    state = Receiver(url="", probe_url="")
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            key = self.headers.get("Idempotency-Key", "")
            ok = _verify(SECRET, self.headers.get("X-Turnout-Signature", "t=0,v1="), body)
            with lock:
                state.deliveries.append({"key": key, "verified": ok, "body": json.loads(body)})
                if ok and key not in state.seen:
                    state.seen.append(key)  # a repeated key is acknowledged, not redone
                number = state.seen.index(key) + 1 if ok else 0
            if not ok:
                self._answer(401, b'{"error": "bad signature"}')
                return
            self._answer(202, b'{"accepted": true}', request_id=f"delivery-{number}")

        def do_GET(self) -> None:
            key = self.headers.get("Idempotency-Key", "")
            header = self.headers.get("X-Turnout-Signature", "t=0,v1=")
            if self.path != "/seen" or not _verify(SECRET, header, key.encode()):
                self._answer(401, b"{}")
                return
            with lock:
                known = key in state.seen
            self._answer(200 if known else 404, b"{}", request_id="probe")

        def _answer(self, status: int, body: bytes, request_id: str | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            if request_id:
                self.send_header("X-Request-Id", request_id)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            """Keep the test output quiet."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    port = server.server_address[1]
    state.url = f"http://127.0.0.1:{port}/hook"
    state.probe_url = f"http://127.0.0.1:{port}/seen"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
