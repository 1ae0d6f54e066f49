"""A releaser without turnout_probe: after a crash nothing can ask it what happened.

Config: ``calls``, a file to which every call appends one JSON line; ``sleep``, seconds each
call takes after that line (a slow deploy).
"""

import json
import time

import pluggy

hookimpl = pluggy.HookimplMarker("turnout")


@hookimpl
def turnout_release(config, idempotency_key, attempt):
    with open(config["calls"], "a", encoding="utf-8") as calls:
        calls.write(json.dumps({"key": idempotency_key, "attempt": attempt}) + "\n")
    if config.get("sleep"):
        time.sleep(config["sleep"])
    return {"key": idempotency_key, "attempt": attempt}
