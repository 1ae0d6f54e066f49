"""Never answers in time, chosen by config 'mode'; 'ok' answers at once.

Config:
    mode: ok | sleep | spin | grandchild | stubborn
        sleep: time.sleep(1000). spin: a busy loop. grandchild: first start `sleep 1000`, which
        inherits stdout and stderr (it holds the output pipe), then sleep. stubborn: ignore
        SIGTERM, then sleep (only SIGKILL stops it).
    pidfile: a file to which each call appends one line: its pid (then the grandchild's).
"""

import os
import signal
import subprocess
import time

import pluggy

hookimpl = pluggy.HookimplMarker("turnout")


@hookimpl
def turnout_release(config):
    mode = config.get("mode", "ok")
    pids = [os.getpid()]
    if mode == "grandchild":
        pids.append(subprocess.Popen(["sleep", "1000"]).pid)
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if "pidfile" in config:
        with open(config["pidfile"], "a", encoding="utf-8") as pidfile:
            pidfile.write(" ".join(map(str, pids)) + "\n")
    if mode == "spin":
        while True:
            pass
    if mode != "ok":
        time.sleep(1000)
    return {"mode": mode, "pid": os.getpid()}
