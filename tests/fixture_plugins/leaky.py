"""A releaser that leaks its ``token`` config everywhere it can (for secret-leak tests).

Config:
    token: the value it leaks: printed to stdout and to stderr on every call, put in the
        message of every error it raises, and returned in its result (as a value, nested in
        a list, inside a longer string, and as a key).
    vault: an object whose ``token`` is used instead, when given (a secret reference nested in
        the config).
    fail_times: how many first attempts fail, with a retryable error (default 0).
    sleep: seconds each call takes before anything else (a slow deploy).
    then_print: characters ("f") it writes to stderr after the token, so that the output's
        tail starts where a test wants it (in the middle of the token, say).
"""

import sys
import time

import pluggy

hookimpl = pluggy.HookimplMarker("turnout")


class LeakyError(Exception):
    retryable = True


@hookimpl
def turnout_release(config, attempt):
    token = config.get("token", "")
    if isinstance(config.get("vault"), dict):
        token = config["vault"].get("token", token)
    if config.get("sleep"):
        time.sleep(config["sleep"])
    print(f"leaky: deploying with token={token}", flush=True)
    print(f"leaky: stderr token={token}", file=sys.stderr, flush=True)
    if config.get("then_print"):
        print("f" * config["then_print"], end="", file=sys.stderr, flush=True)
    if attempt <= config.get("fail_times", 0):
        raise LeakyError(f"leaky failed on attempt {attempt} with token={token}")
    return {
        "token": token,
        "nested": {"list": [token, f"before {token} after"]},
        token: "the token as a key",
    }
