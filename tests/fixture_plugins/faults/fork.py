"""Forks inside the call, so that two processes return from it: the worker and its copy.

Config:
    linger: seconds the forked copy sleeps before it returns (so that it answers after the
        worker did, when nothing stops it).
"""

import os
import time

import pluggy

hookimpl = pluggy.HookimplMarker("turnout")


@hookimpl
def turnout_release(config, idempotency_key):
    child = os.fork() == 0
    if child:
        time.sleep(config.get("linger", 0.2))
    return {"key": idempotency_key, "forked_copy": child, "pid": os.getpid()}
