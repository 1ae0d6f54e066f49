"""What a release or a probe raises, and whether turnout may retry it.

turnout's rule: an exception whose ``retryable`` attribute is true, or a ``TimeoutError`` /
``ConnectionError``, is transient; anything else is permanent. The tree::

    S3ReleaseError                              permanent (retryable = False)
    ├── S3ServiceError                          retryable for throttling, timeouts and 5xx
    ├── S3TimeoutError(TimeoutError)            transient
    └── S3ConnectionError(ConnectionError)      transient

Config, artifact and damaged-state problems raise ``ValueError`` (permanent), and a missing
artifact ``FileNotFoundError`` (permanent). botocore's own exceptions never reach turnout,
not even as ``__cause__``: a server may echo request details, so every message is built by
the releaser, with both credentials replaced by ``***``.
"""

from __future__ import annotations


class S3ReleaseError(Exception):
    """Root of the releaser's errors; permanent unless a subclass says otherwise.

    Attributes:
        bucket: The bucket the request went to.
        operation: The S3 operation that failed (``PutObject``, ``GetObject``, ...).
    """

    retryable: bool = False

    def __init__(self, message: str, *, bucket: str, operation: str) -> None:
        """Keep the message, the bucket and the operation.

        Args:
            message: What happened, to what, and what to do.
            bucket: The bucket the request went to.
            operation: The S3 operation that failed.
        """
        super().__init__(message)
        self.bucket = bucket
        self.operation = operation


class S3ServiceError(S3ReleaseError):
    """The server answered with an error.

    Attributes:
        code: The S3 error code (``NoSuchBucket``, ``SlowDown``, ...), or "" when none.
        status_code: The HTTP status of the answer, or 0 when unknown.
        retryable: True for throttling, request timeouts and server errors (5xx).
    """

    def __init__(
        self,
        message: str,
        *,
        bucket: str,
        operation: str,
        code: str,
        status_code: int,
        retryable: bool,
    ) -> None:
        """Keep the message, where it happened, the code and whether to retry.

        Args:
            message: What happened, to what, and what to do.
            bucket: The bucket the request went to.
            operation: The S3 operation that failed.
            code: The S3 error code.
            status_code: The HTTP status of the answer.
            retryable: Whether turnout may retry with the same key.
        """
        super().__init__(message, bucket=bucket, operation=operation)
        self.code = code
        self.status_code = status_code
        self.retryable = retryable


class S3TimeoutError(S3ReleaseError, TimeoutError):
    """Connecting to the server or waiting for its answer took too long; transient."""

    retryable = True


class S3ConnectionError(S3ReleaseError, ConnectionError):
    """The server could not be reached, or dropped the connection; transient."""

    retryable = True
