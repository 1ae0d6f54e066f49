"""What runs inside a worker process: load one plugin version and answer framed requests.

This file runs in the plugin's own environment, started as ``python -I -S … _serve.py`` by
:mod:`turnout.worker`: it imports only the standard library and pluggy (from the plugin's
environment; ``opentelemetry-api`` too, when a request carries trace context and the plugin's
environment has it), and loads ``hookspecs.py`` from beside itself by path. The core imports the
shared pieces from here too (frames, the retryable rule, the result check), so both sides of
the pipe use one implementation.

Protocol: every message is a 4-byte big-endian length and a UTF-8 JSON object. The core
writes requests on one pipe and the worker answers on another; the plugin's own stdout and
stderr go to a third, so nothing a plugin prints can corrupt a result. After each request the
worker writes the request's nonce to stderr, which tells the core where that request's output
ends, and the answer carries the nonce too: the core takes no other answer for that request.
Only the worker's own process answers: a copy that a plugin forked exits when it returns from
the hook.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import struct
import sys
import time
from collections.abc import Mapping
from typing import Any

HEADER = struct.Struct(">I")
MAX_FRAME = 64 << 20
MAX_RESULT_BYTES = 1 << 20
"""A result larger than this (as JSON) is malformed: results are records, not payloads."""
NONCE_PREFIX = b"\x00turnout-end:"
WORKER_SPIN = 0.0005
"""Seconds a worker stays awake for its next request after answering (see :func:`spin`)."""


def _usable_cpus() -> int:
    """CPUs this process may run on: its affinity, capped by a cgroup v2 CPU quota."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    try:
        with open("/sys/fs/cgroup/cpu.max", encoding="ascii") as limits:
            quota, period = limits.read().split()
        if quota != "max":
            cpus = min(cpus, int(quota) // int(period))
    except (OSError, ValueError):
        pass
    return cpus


class _SpareCpu:
    """Whether no more tasks are runnable than this process has CPUs (read at most every
    20 ms; the CPUs once, on first use)."""

    def __init__(self) -> None:
        self.cpus = 0
        self.spare = False
        self.read_at = -1.0

    def __call__(self) -> bool:
        now = time.monotonic()
        if now - self.read_at > 0.02:
            self.cpus = self.cpus or _usable_cpus()
            try:
                with open("/proc/loadavg", "rb") as loadavg:
                    running = int(loadavg.read().split()[3].split(b"/")[0])
            except (OSError, ValueError, IndexError):
                running = self.cpus + 1
            self.spare, self.read_at = self.cpus > 1 and running <= self.cpus, now
        return self.spare


_cpu_to_spare = _SpareCpu()


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


def spin(poller: select.poll, seconds: float) -> bool:
    """Poll ``poller`` without sleeping for up to ``seconds``; true once it has an event.

    A warm round trip is two wake-ups, one on each side of the pipe, and a wake-up from a
    blocking wait costs more than the exchange itself (tens of microseconds on a virtual CPU).
    The side that expects an answer soon polls for a moment first, yielding the CPU on every
    turn, then blocks as before. It spins only while a CPU is spare (no more runnable tasks
    than usable CPUs, see :class:`_SpareCpu`): on a busy machine, several runners with their
    workers say, a spinning process would take the CPU the other side needs, and fewer
    releases would get through.
    """
    if not _cpu_to_spare():
        return False
    clock, poll, pause = time.perf_counter, poller.poll, os.sched_yield
    end = clock() + seconds
    while clock() < end:
        if poll(0):
            return True
        pause()
    return False


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
    """Import the pinned entry point after checking its distribution; return a hook relay.

    Distribution metadata is read straight from ``*.dist-info`` folders: importing
    ``importlib.metadata`` would cost a worker more start-up time than everything else it does.
    """
    import types

    sys.path[:0] = request["path"]
    specs_path = os.path.join(os.path.dirname(__file__), "hookspecs.py")
    hookspecs = types.ModuleType("_turnout_hookspecs")
    hookspecs.__file__ = specs_path
    with open(specs_path, encoding="utf-8") as source:
        exec(compile(source.read(), specs_path, "exec"), hookspecs.__dict__)  # noqa: S102
    import pluggy

    distribution, version = request["distribution"], request["version"]
    group, plugin_id = hookspecs.ENTRY_POINT_GROUP, request["plugin_id"]
    found = _find_distribution(request["path"], distribution)
    if found is None:
        raise LookupError(f"distribution {distribution} is not in this worker's environment")
    info, installed = found
    if installed != version and _normalize_version(installed) != version:
        raise LookupError(
            f"distribution {distribution} here is at {installed}, the registry pins {version}"
        )
    if request.get("own_environment"):
        # A store environment is small: make sure nothing else in it claims the same id.
        names = sorted(
            {
                name
                for entry in request["path"]
                for name, points in _all_entry_points(entry, group)
                if plugin_id in points
            }
        )
        if len(names) > 1:
            raise LookupError(f"plugin id {plugin_id!r} is provided by {', '.join(names)}")
    declared = _entry_points(info).get(group, {})
    if declared.get(plugin_id) != request["entry_point"]:
        raise LookupError(
            f"distribution {distribution} {version} does not declare "
            f"{plugin_id} = {request['entry_point']!r} in {group}"
        )
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    manager.register(_load_entry_point(request["entry_point"]), name=f"{plugin_id}@{version}")
    manager.check_pending()
    if not manager.hook.turnout_release.get_hookimpls():
        raise LookupError(f"{plugin_id}@{version} does not implement turnout_release")
    return manager


def _find_distribution(path: list[str], name: str) -> tuple[str, str] | None:
    """The first ``*.dist-info`` folder on ``path`` for ``name``, and its version."""
    wanted = _normalize_id(name)
    for entry in path:
        try:
            names = os.listdir(entry)
        except OSError:
            continue
        for folder in names:
            stem, _, version = folder.removesuffix(".dist-info").rpartition("-")
            if folder.endswith(".dist-info") and _normalize_id(stem) == wanted:
                info = os.path.join(entry, folder)
                return info, _metadata_version(info) or version
    return None


def _metadata_version(info: str) -> str | None:
    try:
        with open(os.path.join(info, "METADATA"), encoding="utf-8") as metadata:
            for line in metadata:
                if not line.strip():
                    break  # the headers end at the first blank line
                if line.startswith("Version:"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def _entry_points(info: str) -> dict[str, dict[str, str]]:
    """``entry_points.txt`` of one dist-info folder: group -> normalised name -> value."""
    groups: dict[str, dict[str, str]] = {}
    try:
        with open(os.path.join(info, "entry_points.txt"), encoding="utf-8") as text:
            lines = text.read().splitlines()
    except OSError:
        return groups
    section: dict[str, str] | None = None
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = groups.setdefault(line[1:-1].strip(), {})
        elif section is not None and "=" in line:
            name, value = line.split("=", 1)
            section[_normalize_id(name.strip())] = value.strip()
    return groups


def _all_entry_points(entry: str, group: str) -> list[tuple[str, dict[str, str]]]:
    """(distribution folder name, that group's entry points) for every dist-info in ``entry``."""
    try:
        folders = [f for f in os.listdir(entry) if f.endswith(".dist-info")]
    except OSError:
        return []
    found = []
    for folder in folders:
        points = _entry_points(os.path.join(entry, folder)).get(group)
        if points:
            found.append((folder.removesuffix(".dist-info").rpartition("-")[0], points))
    return found


def _load_entry_point(value: str) -> Any:
    """Import ``module:attr.attr`` (extras in brackets ignored), as importlib.metadata would."""
    import importlib

    module_name, _, attrs = value.split("[", 1)[0].strip().partition(":")
    target: Any = importlib.import_module(module_name.strip())
    for attr in filter(None, attrs.strip().split(".")):
        target = getattr(target, attr)
    return target


def _normalize_id(name: str) -> str:
    import re

    return re.sub(r"[-_.]+", "-", name).lower()


def _normalize_version(version: str) -> str:
    try:
        from packaging.version import Version  # only on a mismatch, and only if present
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


_propagation: Any = None


@contextlib.contextmanager
def _traced(headers: dict[str, str] | None) -> Any:
    """Make the core's trace context current while a request runs, when the plugin's
    environment has ``opentelemetry-api`` (a plugin that makes spans depends on it)."""
    global _propagation  # noqa: PLW0603 - imported once, on the first traced request
    if headers and _propagation is None:
        try:
            from opentelemetry import context
            from opentelemetry.trace.propagation.tracecontext import (
                TraceContextTextMapPropagator,
            )
        except ImportError:
            _propagation = False
        else:
            _propagation = (context, TraceContextTextMapPropagator())
    if not headers or not _propagation:
        yield
        return
    context, propagator = _propagation
    token = context.attach(propagator.extract(headers))
    try:
        yield
    finally:
        context.detach(token)


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
    worker = os.getpid()
    next_request = select.poll()
    next_request.register(requests, select.POLLIN | select.POLLHUP)
    while True:
        spin(next_request, WORKER_SPIN)  # awake for a moment: the next request may be close
        request = read_frame(requests)
        if request is None or request.get("op") == "stop":
            return 0
        stopping = False
        try:
            with _traced(request.get("trace")):
                answer = _answer(manager, request["op"], request.get("args", {}))
        except BaseException as exc:  # noqa: BLE001 - every plugin error goes back to the core
            answer = _error(exc)
            # The plugin asked to exit (SystemExit, KeyboardInterrupt): report it, then do so.
            stopping = not isinstance(exc, Exception)
        finally:
            if os.getpid() != worker:
                # A copy the plugin forked, returning from the call: only the worker answers
                # (and reads the next request), or the core would read two answers to one call.
                os._exit(0)
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(OSError, ValueError):  # a plugin may close them
                    stream.flush()
            with contextlib.suppress(OSError):  # a plugin may have closed its stderr
                os.write(2, NONCE_PREFIX + request["nonce"].encode() + b"\x00")
        answer["nonce"] = request["nonce"]  # which request this answers
        _write_all(responses, encode_frame(answer))
        if stopping:
            return 0


if __name__ == "__main__":
    sys.exit(serve(int(sys.argv[1]), int(sys.argv[2])))
