"""Fixtures: moto's real S3 server on loopback, a fault-injecting proxy in front of it, artifacts.

Helpers are handed out as fixtures because, with ``--import-mode=importlib``, test modules
cannot import each other or this file. The releaser talks HTTP to a real server: moto's
``ThreadedMotoServer`` on 127.0.0.1. Faults (errors, dropped connections, slow answers) are
injected by a small HTTP proxy between the two, never by patching boto3.
"""

from __future__ import annotations

import http.client
import io
import json
import socket
import stat
import tarfile
import threading
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import boto3  # type: ignore[import-untyped]
import pytest
from moto.server import ThreadedMotoServer

# Canaries: no message, result, manifest or pointer may ever contain them.
ACCESS_KEY_ID = "AKIACANARY7Q2X9PLM4Z"
SECRET_ACCESS_KEY = "canary-s3cret-4c1e9b7d2f6a8e0b3d5f7a9c1e3b5d7f"

# (name, kind, value): value is the content of a "file", the target of a "symlink" or
# "hardlink", and ignored for "dir" and "fifo".
Member = tuple[str, str, str]
BuildArchive = Callable[[str, Sequence[Member]], Path]
Fault = Callable[[str, str], "tuple[int, str, str] | str | None"]

_TAR_TYPES = {
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "fifo": tarfile.FIFOTYPE,
}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing from the machine's AWS or proxy settings may steer the releaser."""
    for name in (
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "AWS_PROFILE",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/turnout-s3-tests")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/turnout-s3-tests")


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """moto's S3 server, started once on a free loopback port."""
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3(moto_endpoint: str) -> Any:
    """The test's own client, to look at the bucket independently of the releaser."""
    return boto3.client(
        "s3",
        endpoint_url=moto_endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


@pytest.fixture
def bucket(s3: Any) -> str:
    """A fresh, empty bucket for each test."""
    name = f"site-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


@dataclass
class Proxy:
    """An HTTP proxy on loopback that forwards to moto and can inject faults.

    Attributes:
        endpoint: The URL to give the releaser as ``endpoint_url``.
        requests: ``(method, key path)`` of every request it received, in order.
        fault: Called with ``(method, path)`` for each request: None forwards it;
            ``(status, code, message)`` answers with an S3 error; ``"drop"`` closes the
            connection without answering; ``"slow"`` waits 2 s, then forwards.
    """

    endpoint: str
    upstream: str
    requests: list[tuple[str, str]] = field(default_factory=list)
    fault: Fault | None = None
    stop: Callable[[], None] = lambda: None

    def writes(self) -> list[tuple[str, str]]:
        """Every request that could change the bucket."""
        return [(m, p) for m, p in self.requests if m in ("PUT", "POST", "DELETE")]


def _error_body(code: str, message: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        "<RequestId>proxy-1</RequestId></Error>"
    ).encode()


@pytest.fixture
def proxy(moto_endpoint: str) -> Iterator[Proxy]:
    """A fault-injecting proxy in front of moto (http.server in a thread)."""
    upstream = urlsplit(moto_endpoint)
    state = Proxy(endpoint="", upstream=moto_endpoint)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, and 100-continue answered at once
        disable_nagle_algorithm = True  # headers and body go out as separate writes

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            path = unquote(urlsplit(self.path).path)
            with lock:
                state.requests.append((self.command, path))
            action = state.fault(self.command, path) if state.fault else None
            if action == "drop":
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if action == "slow":
                time.sleep(2)
            elif isinstance(action, tuple):
                status, code, message = action
                self._answer(
                    status, {"Content-Type": "application/xml"}, _error_body(code, message)
                )
                return
            connection = http.client.HTTPConnection(upstream.netloc, timeout=30)
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() != "expect"}
                connection.request(self.command, self.path, body=body, headers=headers)
                answer = connection.getresponse()
                data = answer.read()
                passed = {
                    k: v
                    for k, v in answer.getheaders()
                    if k.lower() not in ("transfer-encoding", "connection", "content-length")
                }
                self._answer(answer.status, passed, data, head=self.command == "HEAD")
            finally:
                connection.close()

        def _answer(
            self, status: int, headers: dict[str, str], body: bytes, *, head: bool = False
        ) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        def log_message(self, format: str, *args: Any) -> None:
            """Keep the test output quiet."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    stopped = False

    def stop() -> None:
        nonlocal stopped
        if not stopped:
            stopped = True
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)

    state.stop = stop
    try:
        yield state
    finally:
        stop()


@pytest.fixture
def config(proxy: Proxy, bucket: str) -> dict[str, Any]:
    """A resolved config, as the release and probe hooks receive it, through the proxy."""
    return {
        "bucket": bucket,
        "prefix": "www",
        "endpoint_url": proxy.endpoint,
        "access_key_id": ACCESS_KEY_ID,
        "secret_access_key": SECRET_ACCESS_KEY,
    }


@pytest.fixture
def stored_config(bucket: str) -> dict[str, Any]:
    """A config as stored, credentials unresolved, as turnout_validate_config sees it."""
    return {
        "bucket": bucket,
        "access_key_id": "env:S3_ACCESS_KEY_ID",
        "secret_access_key": "file:/run/secrets/s3-secret",
    }


@pytest.fixture
def credentials() -> tuple[str, str]:
    return ACCESS_KEY_ID, SECRET_ACCESS_KEY


@pytest.fixture
def objects(s3: Any, bucket: str) -> Callable[[str], dict[str, dict[str, Any]]]:
    """``objects(prefix)``: every key under ``prefix`` with its ETag and LastModified."""

    def list_objects(prefix: str = "") -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                found[item["Key"]] = {"etag": item["ETag"], "modified": item["LastModified"]}
        return found

    return list_objects


@pytest.fixture
def read_json(s3: Any, bucket: str) -> Callable[[str], Any]:
    """``read_json(key)``: an object of the bucket decoded as JSON."""
    return lambda key: json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


@pytest.fixture
def transient() -> Callable[[BaseException], bool]:
    """turnout's rule for whether an error is retried (DESIGN.md, the releaser contract)."""

    def rule(exc: BaseException) -> bool:
        return bool(getattr(exc, "retryable", False)) or isinstance(
            exc, TimeoutError | ConnectionError
        )

    return rule


@pytest.fixture
def make_tree(tmp_path: Path) -> Callable[[str, dict[str, str | bytes]], Path]:
    """Build a directory artifact from ``{relative path: content}``."""

    def build(name: str, files: dict[str, str | bytes]) -> Path:
        top = tmp_path / "artifacts" / name
        top.mkdir(parents=True, exist_ok=True)
        for relative, content in files.items():
            path = top / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content, encoding="utf-8")
        return top

    return build


@pytest.fixture
def make_tar(tmp_path: Path) -> BuildArchive:
    """Build a ``.tar.gz`` artifact member by member, names exactly as given."""

    def build(name: str, members: Sequence[Member]) -> Path:
        path = tmp_path / "artifacts" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(path, "w:gz") as tar:
            for member_name, kind, value in members:
                info = tarfile.TarInfo(member_name)
                info.mtime = 1_700_000_000
                if kind == "file":
                    data = value.encode()
                    info.size = len(data)
                    info.mode = 0o644
                    tar.addfile(info, io.BytesIO(data))
                    continue
                info.type = _TAR_TYPES[kind]
                info.mode = 0o755 if kind == "dir" else 0o777
                if kind in ("symlink", "hardlink"):
                    info.linkname = value
                tar.addfile(info)
        return path

    return build


@pytest.fixture
def make_zip(tmp_path: Path) -> BuildArchive:
    """Build a ``.zip`` artifact; symlinks are Unix entries whose content is the target."""

    def build(name: str, members: Sequence[Member]) -> Path:
        path = tmp_path / "artifacts" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for member_name, kind, value in members:
                info = zipfile.ZipInfo(member_name, date_time=(2024, 1, 1, 0, 0, 0))
                info.create_system = 3
                modes = {"dir": stat.S_IFDIR | 0o755, "symlink": stat.S_IFLNK | 0o777}
                modes["fifo"] = stat.S_IFIFO | 0o644
                info.external_attr = modes.get(kind, stat.S_IFREG | 0o644) << 16
                archive.writestr(info, value if kind in ("file", "symlink") else b"")
        return path

    return build
