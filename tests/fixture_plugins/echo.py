"""A releaser whose behaviour the test scripts through its config.

Config:
    calls: a file to which every call appends one JSON line (key, attempt, version).
    fail_with: connection | timeout | retryable | permanent | keyboard | systemexit
    fail_times: how many first attempts fail (default: all of them).
    token: a value the plugin echoes into its error messages (for secret-leak tests).
    invalid: any value makes turnout_validate_config refuse the config.
"""

import json

import pluggy

VERSION = "@VERSION@"
hookimpl = pluggy.HookimplMarker("turnout")


class RetryableError(Exception):
    retryable = True


@hookimpl
def turnout_validate_config(config):
    if "invalid" in config:
        raise ValueError("echo: config 'invalid' is not allowed")
    if "fail_with" in config and config["fail_with"] not in _FAILURES:
        raise ValueError(f"echo: config 'fail_with' must be one of {sorted(_FAILURES)}")


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
            calls.write(json.dumps(line) + "\n")
    failure = config.get("fail_with")
    if failure and attempt <= config.get("fail_times", 1_000_000):
        raise _FAILURES[failure](
            f"echo failed on attempt {attempt} with token={config.get('token', '')}"
        )
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
    """Truthful: the key was released if the calls file records a call for it."""
    try:
        with open(config["calls"], encoding="utf-8") as calls:
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
}
