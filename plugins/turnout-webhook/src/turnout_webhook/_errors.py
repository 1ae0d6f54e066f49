"""What a delivery or a probe raises, and whether turnout may retry it.

turnout's rule: an exception whose ``retryable`` attribute is true, or a ``TimeoutError`` /
``ConnectionError``, is transient; anything else is permanent. The tree::

    WebhookError                                    permanent (retryable = False)
    ├── WebhookStatusError                          retryable for 5xx, 408, 409 and 429
    ├── WebhookTimeoutError(TimeoutError)           transient
    ├── WebhookConnectionError(ConnectionError)     transient
    └── ProbeUnavailableError                       permanent: no probe_url, so no answer

No message holds the configured secret: every one is built with it replaced by ``***``.
"""

from __future__ import annotations


class WebhookError(Exception):
    """Root of the releaser's errors; permanent unless a subclass says otherwise.

    Attributes:
        url: The URL the request went to (or would have gone to).
    """

    retryable: bool = False

    def __init__(self, message: str, *, url: str) -> None:
        """Keep the message and the URL.

        Args:
            message: What happened, to what, and what to do.
            url: The URL the request went to.
        """
        super().__init__(message)
        self.url = url


class WebhookStatusError(WebhookError):
    """The receiver answered with a status that is not a success (a redirect included).

    Attributes:
        status_code: The HTTP status the receiver answered.
        retryable: True for 5xx, 408, 409 and 429; turnout then retries with the same key.
    """

    def __init__(self, message: str, *, url: str, status_code: int, retryable: bool) -> None:
        """Keep the message, the URL, the status and whether it is worth retrying.

        Args:
            message: What happened, to what, and what to do.
            url: The URL the request went to.
            status_code: The HTTP status the receiver answered.
            retryable: Whether turnout may retry with the same key.
        """
        super().__init__(message, url=url)
        self.status_code = status_code
        self.retryable = retryable


class WebhookTimeoutError(WebhookError, TimeoutError):
    """Connecting, sending or waiting for the answer took longer than ``timeout``; transient."""

    retryable = True


class WebhookConnectionError(WebhookError, ConnectionError):
    """The receiver could not be reached, or dropped the connection; transient."""

    retryable = True


class ProbeUnavailableError(WebhookError):
    """``turnout_probe`` was asked but no ``probe_url`` is configured, so it cannot tell.

    Returning None would tell turnout "not delivered" and make it send again; this error
    leaves the release ``unknown`` for a person to settle instead.
    """
