"""Retry policies, all built here with tenacity.

The rule comes from the releaser contract: an exception with a true ``retryable`` attribute, or
a ``TimeoutError`` / ``ConnectionError``, is transient; anything else is permanent. Exceptions
that are not ``Exception`` subclasses (``KeyboardInterrupt``, ``SystemExit``, cancellation) are
never retried. Every attempt of a release reuses the release's idempotency key.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
    wait_random_exponential,
)

from turnout._serve import is_transient

__all__ = ["is_transient", "release_policy", "task_countdown"]

log = logging.getLogger("turnout.retries")

BACKOFF_MULTIPLIER = 0.5
"""Seconds; the n-th wait is drawn uniformly from [0, 0.5 * 2**(n-1)] (full jitter)."""
BACKOFF_MAX = 30.0


def release_policy(
    *,
    max_attempts: int,
    deadline: float,
    sleep: Callable[[float], None] = time.sleep,
) -> Retrying:
    """The policy for the attempts of one release.

    Bounded by ``max_attempts`` and by ``deadline`` seconds (no wait starts that would end past
    it), with jittered exponential backoff, retrying transient errors only.
    """
    return Retrying(
        stop=stop_after_attempt(max_attempts) | stop_before_delay(deadline),
        wait=wait_random_exponential(multiplier=BACKOFF_MULTIPLIER, max=BACKOFF_MAX),
        retry=retry_if_exception(is_transient),
        sleep=sleep,
        reraise=True,
        before_sleep=_log_retry,
    )


TASK_BACKOFF_FIRST = 1.0
"""Seconds: the ceiling of a job runner's first wait before asking again (see task_countdown)."""
TASK_BACKOFF_MAX = 60.0


def task_countdown(retries: int) -> float:
    """Seconds a job runner waits before asking again about a release not decided yet.

    For an outcome that asking again can change (held elsewhere, registry down, routing
    moved): exponential from 1 s, capped at 60 s, with equal jitter (half the ceiling fixed,
    half random), so duplicates of one key do not come back in step and every wait makes
    progress towards the holder's lease expiring. ``retries`` counts the earlier retries.
    """
    ceiling = min(TASK_BACKOFF_MAX, TASK_BACKOFF_FIRST * 2.0 ** max(0, retries))
    return ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 - jitter, not a secret


def _log_retry(state: RetryCallState) -> None:
    # Only the error's type: its message may carry a secret the plugin echoed.
    exc = state.outcome.exception() if state.outcome else None
    log.info(
        "attempt %d failed with %s; retrying in %.2fs",
        state.attempt_number,
        type(exc).__name__,
        state.upcoming_sleep,
    )
