"""What runs inside a worker process: load one plugin version and answer framed requests.

This file runs in the plugin's own environment, started as ``python -I -S … _serve.py`` by
:mod:`turnout.worker`: it imports only the standard library and pluggy (from the plugin's
environment), and loads ``hookspecs.py`` from beside itself by path. The core imports the
shared pieces from here too (frames, the retryable rule, the result check), so both sides of
the pipe use one implementation.

Protocol: every message is a 4-byte big-endian length and a UTF-8 JSON object. The core
writes requests on one pipe and the worker answers on another; the plugin's own stdout and
stderr go to a third, so nothing a plugin prints can corrupt a result. After each request the
worker writes the request's nonce to stderr, which tells the core where that request's output
ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import sys
from collections.abc import Mapping
from typing import Any

HEADER = struct.Struct(">I")
MAX_FRAME = 64 << 20
MAX_RESULT_BYTES = 1 << 20
"""A result larger than this (as JSON) is malformed: results are records, not payloads."""
NONCE_PREFIX = b"\x00turnout-end:"


class MalformedResultError(Exception):
    """A releaser returned something other than a JSON-serialisable mapping; permanent."""


# One name on both sides of the pipe (this file also runs as __main__ in workers).
MalformedResultError.__module__ = "turnout"


def is_transient(exc: BaseException) -> bool:
    """The contract's rule: may the call that raised ``exc`` be retried?

    True for an exception whose ``retryable`` attribute is true, and for ``TimeoutError`` and
    ``ConnectionError``; false for everything else, and always for exceptions that are not
    ``Exception`` subclasses (``KeyboardInterrupt``, ``SystemExit``, cancellation).
    """
    if not isinstance(exc, Exception):
        return False
    if isinstance(exc, TimeoutError | ConnectionError):
        return True
    try:
        return bool(getattr(exc, "retryable", False))
    except Exception:  # noqa: BLE001 - a broken __getattr__ on a plugin's error means "no"
        return False


def check_result(result: object) -> dict[str, Any]:
    """Return ``result`` as a JSON-safe dict, or raise :class:`MalformedResultError`."""
    if not isinstance(result, Mapping):
        raise MalformedResultError(
            f"turnout_release must return a mapping, got {type(result).__name__}"
        )
    try:
        encoded = json.dumps(dict(result), allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise MalformedResultError(
            f"turnout_release returned a result that is not JSON: {exc}"
        ) from None
    if len(encoded) > MAX_RESULT_BYTES:
        raise MalformedResultError(
            f"turnout_release returned {len(encoded)} bytes of JSON, "
            f"over the limit of {MAX_RESULT_BYTES}"
        )
    decoded: dict[str, Any] = json.loads(encoded)
    return decoded


def qualified_name(cls: type) -> str:
    """``module.Class``, or just ``Class`` for built-ins."""
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def encode_frame(message: Mapping[str, Any]) -> bytes:
    """One message, ready to write: length header and JSON body."""
    body = json.dumps(message, separators=(",", ":")).encode()
    return HEADER.pack(len(body)) + body


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read_exactly(fd: int, size: int) -> bytes | None:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = os.read(fd, size - len(chunks))
        if not chunk:
            return None
        chunks += chunk
    return bytes(chunks)


def read_frame(fd: int) -> dict[str, Any] | None:
    """Read one message from a blocking fd; ``None`` at end of stream."""
    header = _read_exactly(fd, HEADER.size)
    if header is None:
        return None
    (size,) = HEADER.unpack(header)
    if size > MAX_FRAME:
        raise ValueError(f"frame of {size} bytes is over the limit")
    body = _read_exactly(fd, size)
    if body is None:
        return None
    message: dict[str, Any] = json.loads(body)
    return message


# The worker ---------------------------------------------------------------------------------


def _error(exc: BaseException) -> dict[str, Any]:
    return {
        "ok": False,
        "error": {
            "type": qualified_name(type(exc)),
            "message": str(exc),
            "retryable": is_transient(exc) and not isinstance(exc, MalformedResultError),
        },
    }


def _load(request: dict[str, Any]) -> Any:
    """Import the pinned entry point after checking its distribution; return a hook relay."""
    import importlib.util
    from importlib import metadata

    sys.path[:0] = request["path"]
    spec = importlib.util.spec_from_file_location(
        "_turnout_hookspecs", os.path.join(os.path.dirname(__file__), "hookspecs.py")
    )
    if spec is None or spec.loader is None:  # pragma: no cover - the file ships beside us
        raise ImportError("hookspecs.py is missing beside the worker")
    hookspecs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hookspecs)
    import pluggy

    distribution, version = request["distribution"], request["version"]
    dist = metadata.distribution(distribution)
    if _normalize_version(dist.version) != version:
        raise LookupError(
            f"distribution {distribution} here is at {dist.version}, the registry pins {version}"
        )
    group, plugin_id = hookspecs.ENTRY_POINT_GROUP, request["plugin_id"]
    if request.get("own_environment"):
        # A store environment is small: make sure nothing else in it claims the same id.
        names = sorted(
            {
                d.metadata["Name"]
                for d in metadata.distributions(path=request["path"])
                for ep in d.entry_points.select(group=group)
                if _normalize_id(ep.name) == plugin_id
            }
        )
        if len(names) > 1:
            raise LookupError(f"plugin id {plugin_id!r} is provided by {', '.join(names)}")
    matching = [
        ep
        for ep in dist.entry_points.select(group=group)
        if _normalize_id(ep.name) == plugin_id and ep.value == request["entry_point"]
    ]
    if not matching:
        raise LookupError(
            f"distribution {distribution} {version} does not declare "
            f"{plugin_id} = {request['entry_point']!r} in {group}"
        )
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    manager.register(matching[0].load(), name=f"{plugin_id}@{version}")
    manager.check_pending()
    if not manager.hook.turnout_release.get_hookimpls():
        raise LookupError(f"{plugin_id}@{version} does not implement turnout_release")
    return manager


def _normalize_id(name: str) -> str:
    import re

    return re.sub(r"[-_.]+", "-", name).lower()


def _normalize_version(version: str) -> str:
    try:
        from packaging.version import Version  # present in most environments, not required
    except ImportError:
        return version
    return str(Version(version))


def _limit_memory(megabytes: int | None) -> None:
    if megabytes:
        import resource

        limit = megabytes << 20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _answer(manager: Any, op: str, args: dict[str, Any]) -> dict[str, Any]:
    if op == "release":
        return {"ok": True, "result": check_result(manager.hook.turnout_release(**args))}
    if op == "validate":
        manager.hook.turnout_validate_config(**args)
        return {"ok": True}
    if op == "probe":
        if not manager.hook.turnout_probe.get_hookimpls():
            return {"ok": True, "implemented": False, "result": None}
        result = manager.hook.turnout_probe(**args)
        return {
            "ok": True,
            "implemented": True,
            "result": None if result is None else check_result(result),
        }
    raise ValueError(f"unknown operation {op!r}")


def serve(requests: int, responses: int) -> int:
    """Answer requests until the core closes the pipe or asks to stop; return the exit code."""
    import faulthandler

    faulthandler.enable()  # a segfault leaves a traceback in the captured stderr
    load = read_frame(requests)
    if load is None:
        return 0
    try:
        _limit_memory(load.get("memory_limit_mb"))
        manager = _load(load)
    except BaseException as exc:  # noqa: BLE001 - reported to the core as a load failure
        _write_all(responses, encode_frame(_error(exc)))
        return 3
    _write_all(responses, encode_frame({"ok": True, "pid": os.getpid()}))
    while True:
        request = read_frame(requests)
        if request is None or request.get("op") == "stop":
            return 0
        stopping = False
        try:
            answer = _answer(manager, request["op"], request.get("args", {}))
        except BaseException as exc:  # noqa: BLE001 - every plugin error goes back to the core
            answer = _error(exc)
            # The plugin asked to exit (SystemExit, KeyboardInterrupt): report it, then do so.
            stopping = not isinstance(exc, Exception)
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(OSError, ValueError):  # a plugin may close them
                    stream.flush()
            with contextlib.suppress(OSError):  # a plugin may have closed its stderr
                os.write(2, NONCE_PREFIX + request["nonce"].encode() + b"\x00")
        _write_all(responses, encode_frame(answer))
        if stopping:
            return 0


if __name__ == "__main__":
    sys.exit(serve(int(sys.argv[1]), int(sys.argv[2])))
