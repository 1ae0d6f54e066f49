"""Writes config 'mb' MiB to stdout and as much to stderr, then answers normally."""

import os

import pluggy

hookimpl = pluggy.HookimplMarker("turnout")


@hookimpl
def turnout_release(artifact, config):
    chunk = b"x" * 1023 + b"\n"
    chunk *= 1024  # 1 MiB
    for _ in range(config.get("mb", 300)):
        for fd in (1, 2):
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
    return {"artifact": artifact, "flooded_mib": config.get("mb", 300), "text": "héllo ✓"}
