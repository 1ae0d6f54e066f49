"""Dies mid-call, chosen by config 'mode'; 'ok' answers and 'raise' fails cleanly.

Config:
    mode: ok | raise | exit | segfault | sigkill | exit0
        exit: os._exit(3). segfault: read address 0 through ctypes. sigkill: kill itself.
        exit0: os._exit(0), with no result written.
    say: printed to stdout and to stderr before anything else happens.
    after: seconds after which a thread of its own prints 'after: <say>', once the call has
        returned (output that belongs to no call).
"""

import os
import signal
import sys
import threading
import time

import pluggy

hookimpl = pluggy.HookimplMarker("turnout")


def _later(seconds, say):
    time.sleep(seconds)
    print(f"after: {say}", flush=True)


@hookimpl
def turnout_release(config, attempt):
    if "say" in config:
        print(f"stdout: {config['say']}", flush=True)
        print(f"stderr: {config['say']}", file=sys.stderr, flush=True)
    if "after" in config:
        threading.Thread(
            target=_later, args=(config["after"], config.get("say")), daemon=True
        ).start()
    mode = config.get("mode", "ok")
    if mode == "raise":
        raise RuntimeError(f"crash fixture failed cleanly on attempt {attempt}")
    if mode == "exit":
        os._exit(3)
    if mode == "segfault":
        import ctypes

        ctypes.string_at(0)
    if mode == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "exit0":
        os._exit(0)
    return {"mode": mode, "pid": os.getpid()}
