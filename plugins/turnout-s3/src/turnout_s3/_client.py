"""A small typed wrapper around the boto3 S3 client, and the translation of its errors.

boto3 ships no type information, so the client is ``Any`` here and nowhere else: the rest of
the releaser calls the few typed methods of :class:`Bucket`. Every botocore exception is
turned into one of ``_errors`` at this boundary, with both credentials redacted.

The client retries at most once itself (``MAX_ATTEMPTS``) with short timeouts, so a failure
reaches turnout quickly and turnout's own retry policy (bounded, jittered, same key) is the
one that counts.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import json
from typing import TYPE_CHECKING, Any, BinaryIO

import boto3  # type: ignore[import-untyped]
import botocore.exceptions  # type: ignore[import-untyped]
from botocore.config import Config  # type: ignore[import-untyped]

from turnout_s3._errors import (
    S3ConnectionError,
    S3ReleaseError,
    S3ServiceError,
    S3TimeoutError,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

    from turnout_s3._config import Settings

#: Attempts per request inside botocore, the first included (1 = no retry of its own). One
#: retry absorbs a blip on one of many uploads without multiplying turnout's own policy.
MAX_ATTEMPTS = 2
#: Seconds to open a connection to the server.
CONNECT_TIMEOUT = 5.0
#: Seconds to wait for each answer (and between bytes of it).
READ_TIMEOUT = 60.0
#: Objects per DeleteObjects call; 1000 is S3's maximum.
DELETE_BATCH = 1000

#: Error codes that mean "try again later", whatever the HTTP status.
RETRYABLE_CODES = frozenset(
    {
        "InternalError",
        "OperationAborted",
        "RequestLimitExceeded",
        "RequestTimeout",
        "ServiceUnavailable",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "TooManyRequestsException",
    }
)

_ADVICE = {
    "NoSuchBucket": "create the bucket or fix config 'bucket'",
    "AccessDenied": "grant the credentials the permissions the releaser's README lists",
    "AllAccessDisabled": "grant the credentials the permissions the releaser's README lists",
    "InvalidAccessKeyId": "check the credentials the secret references point to",
    "SignatureDoesNotMatch": "check the credentials the secret references point to",
    "InvalidBucketName": "fix config 'bucket'",
    "PermanentRedirect": "the bucket lives in another region: set config 'region' to it",
    "AuthorizationHeaderMalformed": "set config 'region' to the bucket's region",
}
_MAX_SERVER_MESSAGE = 200


@functools.lru_cache(maxsize=16)
def _make_client(
    settings: Settings, attempts: int, connect_timeout: float, read_timeout: float
) -> Any:
    # Cached: building a client loads botocore's service model, which costs far more than a
    # small release's requests. A worker process serves many releases; clients are
    # thread-safe.
    session = boto3.session.Session(
        aws_access_key_id=settings.access_key_id,
        aws_secret_access_key=settings.secret_access_key,
        region_name=settings.region,
    )
    config = Config(
        region_name=settings.region,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        retries={"mode": "standard", "total_max_attempts": attempts},
        # S3-compatible servers (MinIO, Ceph, ...) are mostly reached by path, not by
        # bucket sub-domain.
        s3={"addressing_style": "path"} if settings.endpoint_url else {},
        # Only what S3 requires: several S3-compatible servers refuse the newer default
        # checksum trailers. Uploads carry Content-MD5 instead.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        # The target's config says where releases go, not AWS_ENDPOINT_URL* in the environment.
        ignore_configured_endpoint_urls=True,
        user_agent_extra="turnout-s3/1.0.0",
    )
    return session.client("s3", endpoint_url=settings.endpoint_url, config=config)


class Bucket:
    """The configured bucket, with the handful of operations the releaser needs.

    Attributes:
        name: The bucket name.
    """

    def __init__(self, settings: Settings) -> None:
        """Build a client for ``settings``; no request is sent yet.

        Args:
            settings: The resolved, checked configuration.
        """
        self.name = settings.bucket
        self._settings = settings
        with self._translated("CreateClient", ""):
            self._client: Any = _make_client(settings, MAX_ATTEMPTS, CONNECT_TIMEOUT, READ_TIMEOUT)

    def get_json(self, key: str) -> Any | None:
        """Read a JSON object.

        Args:
            key: The object key.

        Returns:
            The decoded JSON, or None when there is no such object.

        Raises:
            ValueError: When the object is not JSON.
        """
        with self._translated("GetObject", key):
            try:
                answer = self._client.get_object(Bucket=self.name, Key=key)
            except botocore.exceptions.ClientError as exc:
                if _code(exc) in ("NoSuchKey", "404"):
                    return None
                raise
            data = answer["Body"].read()
        try:
            return json.loads(data)
        except ValueError as exc:
            raise ValueError(f"s3: object s3://{self.name}/{key} is not JSON: {exc}") from None

    def put(
        self,
        key: str,
        body: bytes | BinaryIO,
        *,
        content_type: str,
        md5: bytes,
        length: int,
        cache_control: str | None = None,
    ) -> str:
        """Upload one object with a single PUT.

        Args:
            key: The object key.
            body: The content, as bytes or a file object positioned at its start.
            content_type: The ``Content-Type`` to serve it with.
            md5: The content's MD5 digest; the server checks the body against it.
            length: The content's size in bytes.
            cache_control: The ``Cache-Control`` to serve it with, if any.

        Returns:
            The object's ETag, without quotes.
        """
        extra = {"CacheControl": cache_control} if cache_control else {}
        with self._translated("PutObject", key):
            answer = self._client.put_object(
                Bucket=self.name,
                Key=key,
                Body=body,
                ContentType=content_type,
                ContentMD5=base64.b64encode(md5).decode("ascii"),
                ContentLength=length,
                **extra,
            )
        return str(answer.get("ETag", "")).strip('"')

    def put_json(self, key: str, data: Any, *, cache_control: str | None = None) -> None:
        """Upload a JSON document with a single PUT.

        Args:
            key: The object key.
            data: Anything ``json.dumps`` encodes.
            cache_control: The ``Cache-Control`` to serve it with, if any.
        """
        body = (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8")
        self.put(
            key,
            body,
            content_type="application/json",
            md5=hashlib.md5(body, usedforsecurity=False).digest(),
            length=len(body),
            cache_control=cache_control,
        )

    def etags(self, prefix: str) -> dict[str, str]:
        """Map every key under ``prefix`` to its ETag (without quotes).

        Args:
            prefix: The key prefix, usually ending in ``/``.
        """
        found: dict[str, str] = {}
        for page in self._pages(prefix, delimiter=None):
            for item in page.get("Contents", []):
                found[str(item["Key"])] = str(item.get("ETag", "")).strip('"')
        return found

    def folders(self, prefix: str) -> list[str]:
        """List the names directly below ``prefix`` that hold objects (like ``ls -d */``).

        Args:
            prefix: The key prefix, ending in ``/``.

        Returns:
            The sub-prefix names, without ``prefix`` and without the trailing ``/``.
        """
        names: list[str] = []
        for page in self._pages(prefix, delimiter="/"):
            for common in page.get("CommonPrefixes", []):
                names.append(str(common["Prefix"])[len(prefix) :].rstrip("/"))
        return names

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix``.

        Args:
            prefix: The key prefix, ending in ``/``.

        Returns:
            How many objects were deleted.
        """
        keys = list(self.etags(prefix))
        for start in range(0, len(keys), DELETE_BATCH):
            batch = keys[start : start + DELETE_BATCH]
            with self._translated("DeleteObjects", prefix):
                answer = self._client.delete_objects(
                    Bucket=self.name,
                    Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True},
                )
            errors = answer.get("Errors", [])
            if errors:
                first = errors[0]
                raise S3ServiceError(
                    self._redact(
                        f"s3: DeleteObjects on s3://{self.name}/{prefix} failed for "
                        f"{len(errors)} object(s), first {first.get('Key')!r}: "
                        f"{first.get('Code')}: {first.get('Message')}"
                    ),
                    bucket=self.name,
                    operation="DeleteObjects",
                    code=str(first.get("Code", "")),
                    status_code=200,
                    retryable=is_retryable(str(first.get("Code", "")), 200),
                )
        return len(keys)

    def _pages(self, prefix: str, *, delimiter: str | None) -> Iterator[dict[str, Any]]:
        arguments: dict[str, Any] = {"Bucket": self.name, "Prefix": prefix}
        if delimiter:
            arguments["Delimiter"] = delimiter
        while True:
            with self._translated("ListObjectsV2", prefix):
                page: dict[str, Any] = self._client.list_objects_v2(**arguments)
            yield page
            if not page.get("IsTruncated"):
                return
            arguments["ContinuationToken"] = page["NextContinuationToken"]

    def _redact(self, text: str) -> str:
        for credential in (self._settings.secret_access_key, self._settings.access_key_id):
            if credential:
                text = text.replace(credential, "***")
        return text

    @contextlib.contextmanager
    def _translated(self, operation: str, key: str) -> Iterator[None]:
        """Turn botocore's exceptions into the releaser's, redacted and unchained."""
        where = f"s3://{self.name}/{key}"
        error: S3ReleaseError
        server = self._settings.endpoint_url or f"AWS S3 in {self._settings.region}"
        try:
            yield
        except botocore.exceptions.ClientError as exc:
            error = S3ServiceError(
                self._redact(_describe_client_error(operation, where, exc)),
                bucket=self.name,
                operation=operation,
                code=_code(exc),
                status_code=_status(exc),
                retryable=is_retryable(_code(exc), _status(exc)),
            )
        except (
            botocore.exceptions.ConnectTimeoutError,
            botocore.exceptions.ReadTimeoutError,
        ) as exc:
            error = S3TimeoutError(
                self._redact(
                    f"s3: {operation} on {where} timed out talking to {server} "
                    f"({type(exc).__name__}); turnout retries it"
                ),
                bucket=self.name,
                operation=operation,
            )
        except (
            botocore.exceptions.EndpointConnectionError,
            botocore.exceptions.ConnectionClosedError,
            botocore.exceptions.ConnectionError,
            botocore.exceptions.HTTPClientError,
        ) as exc:
            error = S3ConnectionError(
                self._redact(
                    f"s3: {operation} on {where} could not reach {server} "
                    f"({type(exc).__name__}); turnout retries it"
                ),
                bucket=self.name,
                operation=operation,
            )
        except botocore.exceptions.BotoCoreError as exc:
            error = S3ReleaseError(
                self._redact(f"s3: {operation} on {where} failed: {type(exc).__name__}: {exc}"),
                bucket=self.name,
                operation=operation,
            )
        else:
            return
        # Not chained: botocore's exception may hold request details a server echoed back.
        raise error from None


def is_retryable(code: str, status: int) -> bool:
    """Whether an error answer is worth retrying with the same key.

    Args:
        code: The S3 error code.
        status: The HTTP status of the answer.

    Returns:
        True for throttling and timeout codes, and for 408, 429 and any 5xx.
    """
    return code in RETRYABLE_CODES or status in (408, 429) or status >= 500


def _code(exc: Any) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: Any) -> int:
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return status if isinstance(status, int) else 0


def _describe_client_error(operation: str, where: str, exc: Any) -> str:
    code = _code(exc) or "no error code"
    status = _status(exc)
    message = str(exc.response.get("Error", {}).get("Message", "")).strip()
    if len(message) > _MAX_SERVER_MESSAGE:
        message = message[:_MAX_SERVER_MESSAGE] + "…"
    text = f"s3: {operation} on {where} failed: {code} (HTTP {status or '?'})"
    if message:
        text += f": {message}"
    advice = _ADVICE.get(code)
    if advice:
        text += f"; {advice}"
    return text
