"""How the S3 store classifies errors: what to retry, what is "denied", "missing", "exists".

Also how a final failure becomes a tqsnap error whose message names the object and says what
to do (:func:`translate`).
"""

from __future__ import annotations

import random

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    IncompleteReadError,
    NoCredentialsError,
    ResponseStreamingError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError
from urllib3.exceptions import HTTPError as Urllib3HTTPError

from ..errors import AccessDeniedError, BucketNotFoundError, ObjectNotFoundError, StoreError

_BACKOFF_BASE = 0.05
_BACKOFF_CAP = 5.0


class _Retry(Exception):
    """Internal: the attempt failed in a way worth repeating; ``cause`` says why."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


_RETRY_CODES = frozenset(
    {
        "SlowDown",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "ServiceUnavailable",
        "Throttling",
        "ThrottlingException",
        "RequestThrottled",
        "TooManyRequestsException",
        "OperationAborted",
    }
)
_RETRY_STATUS = frozenset({500, 502, 503, 504})
_DENIED_CODES = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled", "InvalidToken"}
)
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
_PRECONDITION_CODES = frozenset({"PreconditionFailed", "412"})
#: Errors raised while a response body streams in; the request must be sent again.
_TRANSIENT_EXCEPTIONS: tuple[type[BaseException], ...] = (
    BotoConnectionError,
    IncompleteReadError,
    ResponseStreamingError,
    Urllib3HTTPError,
    ConnectionError,
    TimeoutError,
)


def _error_code(exc: ClientError) -> tuple[str, int]:
    """The S3 error code and HTTP status of a ClientError (HEAD errors carry only the status)."""
    code = str(exc.response.get("Error", {}).get("Code", "") or "")
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    if not code and status:
        code = str(status)
    return code, status


def _at(endpoint: str | None) -> str:
    return f" at {endpoint}" if endpoint else ""


def _describe(exc: BaseException) -> str:
    if isinstance(exc, _Retry):
        exc = exc.cause
    if isinstance(exc, ClientError):
        code, status = _error_code(exc)
        return f"HTTP {status} {code}"
    return f"{type(exc).__name__}: {exc}"


def backoff(attempt: int) -> float:
    """Exponential backoff with full jitter: racing clients spread out instead of retrying together."""
    return random.uniform(0, min(_BACKOFF_CAP, _BACKOFF_BASE * 2**attempt))


def is_retryable(exc: BaseException, conditional: bool) -> bool:
    """Throttling, 5xx, dropped connections; and 409 ConditionalRequestConflict on conditional writes."""
    if isinstance(exc, _Retry):
        return True
    if isinstance(exc, ClientError):
        code, status = _error_code(exc)
        if code in _RETRY_CODES or status in _RETRY_STATUS:
            return True
        return conditional and status == 409 and code == "ConditionalRequestConflict"
    return isinstance(exc, _TRANSIENT_EXCEPTIONS)


def translate(
    exc: BaseException,
    op: str,
    where: str,
    key: str | None,
    *,
    bucket: str,
    url: str,
    endpoint_url: str | None,
    attempts: int = 1,
) -> Exception:
    """Map a botocore failure of ``op`` on ``where`` onto the tqsnap error hierarchy."""
    if isinstance(exc, _Retry):
        exc = exc.cause
    if isinstance(exc, StoreError):
        return exc
    if isinstance(exc, ClientError):
        code, status = _error_code(exc)
        message = exc.response.get("Error", {}).get("Message", "") or code
        if code == "NoSuchBucket":
            return BucketNotFoundError(
                f"bucket {bucket!r} does not exist{_at(endpoint_url)} ({op} of {where}); "
                "create it, fix the bucket name in the URL, or pass create_bucket=True"
            )
        if status in (401, 403) or code in _DENIED_CODES:
            return AccessDeniedError(
                f"S3 refused {op} of {where}: {code} ({message}). Check the access key and secret "
                "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the boto3 profile), the region, and "
                f"that the identity may read, write, list and delete in bucket {bucket!r}"
            )
        if code in _NOT_FOUND_CODES or status == 404:
            if key is None:
                return BucketNotFoundError(
                    f"bucket {bucket!r} does not exist{_at(endpoint_url)}; create it or pass create_bucket=True"
                )
            return ObjectNotFoundError(
                key,
                f"object {key!r} does not exist in {url} ({where}); it was never written or was deleted",
            )
        tried = f" after {attempts} attempts" if attempts > 1 else ""
        return StoreError(
            f"S3 {op} of {where} failed{tried}: HTTP {status} {code}: {message}. "
            "If this persists, check the server's health and the bucket's configuration"
        )
    if isinstance(exc, NoCredentialsError):
        return AccessDeniedError(
            f"no S3 credentials found for {op} of {where}: set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, configure a boto3 profile, or pass the keys as store options"
        )
    if isinstance(exc, _TRANSIENT_EXCEPTIONS):
        return StoreError(
            f"S3 {op} of {where} failed after {attempts} attempts: {_describe(exc)}. "
            "Check that the endpoint is reachable and the network is healthy"
        )
    if isinstance(exc, BotoCoreError):
        return StoreError(f"S3 {op} of {where} failed: {exc}")
    return StoreError(f"S3 {op} of {where} failed: {_describe(exc)}")
