"""A releaser whose behaviour the test scripts through its config.

Config:
    calls: a file to which every call appends one JSON line (key, attempt, version).
    fail_with: connection | timeout | retryable | permanent | keyboard | systemexit | exit0
        (exit0: ``sys.exit(0)``, an exit that claims success without a result)
    fail_times: how many first attempts fail (default: all of them).
    token: a value the plugin echoes into its error messages (for secret-leak tests).
    invalid: any value makes turnout_validate_config refuse the config.
    reject_versions: a list of versions whose turnout_validate_config refuses the config (the
        wheel's own ``VERSION`` decides), for refusals that depend on the version checked.
    sleep: seconds each call takes after recording itself in ``calls`` (a slow deploy).
    note_pid: any true value adds the calling process's id (``pid``) to each line of ``calls``.
    deployed: a file to which a call appends one JSON line once the release has taken effect:
        after ``sleep``, and only when the call succeeds. When it is set, turnout_probe reads
        it instead of ``calls`` (a call that is recorded but has not finished did not deploy).
"""

import json
import os
import time

import pluggy

VERSION = "@VERSION@"
hookimpl = pluggy.HookimplMarker("turnout")


class RetryableError(Exception):
    retryable = True


@hookimpl
def turnout_validate_config(config):
    if "invalid" in config:
        raise ValueError("echo: config 'invalid' is not allowed")
    if VERSION in config.get("reject_versions", ()):
        raise ValueError(f"echo {VERSION}: config 'reject_versions' names this version")
    if "fail_with" in config and config["fail_with"] not in _FAILURES:
        raise ValueError(f"echo: config 'fail_with' must be one of {sorted(_FAILURES)}")
    sleep = config.get("sleep", 0)
    if isinstance(sleep, bool) or not isinstance(sleep, (int, float)) or sleep < 0:
        raise ValueError("echo: config 'sleep' must be a number of seconds, at least 0")


@hookimpl
def turnout_release(artifact, target, config, context, idempotency_key, attempt):
    if "calls" in config:
        with open(config["calls"], "a", encoding="utf-8") as calls:
            line = {
                "key": idempotency_key,
                "attempt": attempt,
                "version": VERSION,
                "target": target,
            }
            if config.get("note_pid"):
                line["pid"] = os.getpid()
            calls.write(json.dumps(line) + "\n")
    if config.get("sleep"):
        time.sleep(config["sleep"])
    failure = config.get("fail_with")
    if failure and attempt <= config.get("fail_times", 1_000_000):
        raise _FAILURES[failure](
            f"echo failed on attempt {attempt} with token={config.get('token', '')}"
        )
    if "deployed" in config:
        with open(config["deployed"], "a", encoding="utf-8") as deployed:
            line = {
                "key": idempotency_key,
                "attempt": attempt,
                "target": target,
                "artifact": artifact,
            }
            deployed.write(json.dumps(line) + "\n")
    return {
        "artifact": artifact,
        "target": target,
        "key": idempotency_key,
        "attempt": attempt,
        "context": dict(context),
        "version": VERSION,
        "token_seen": "token" in config,
    }


@hookimpl
def turnout_probe(config, idempotency_key):
    """Truthful: the key was released if the deployed file (else the calls file) records it."""
    try:
        with open(config.get("deployed") or config["calls"], encoding="utf-8") as calls:
            seen = [json.loads(line) for line in calls if line.strip()]
    except (KeyError, OSError):
        return None
    mine = [call for call in seen if call["key"] == idempotency_key]
    return {"probed": idempotency_key, "calls": len(mine)} if mine else None


_FAILURES = {
    "connection": ConnectionError,
    "timeout": TimeoutError,
    "retryable": RetryableError,
    "permanent": RuntimeError,
    "keyboard": KeyboardInterrupt,
    "systemexit": SystemExit,
    "exit0": lambda _message: SystemExit(0),
}
