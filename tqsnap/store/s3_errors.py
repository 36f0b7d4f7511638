"""How the S3 store classifies errors: what to retry, what is "denied", "missing", "exists".

Transient (repeated under the store's :class:`~tqsnap.store.retry.RetryPolicy`): throttling
(503 SlowDown, 429), 500, 502, 503, 504, connection resets before or during a reply
(botocore's ``ConnectionClosedError``, ``ResponseStreamingError``), timeouts (botocore's own,
urllib3's and the copy of urllib3 vendored inside botocore, which share no base class),
failed connects, bodies shorter than their Content-Length, and replies that are malformed or
incomplete (:class:`MalformedReplyError`: a part upload whose ETag was lost or cut, a
truncated listing without a continuation token).

Also how a final failure becomes a tqsnap error whose message names the object and says what
to do (:func:`translate`).
"""

from __future__ import annotations

import http.client

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    IncompleteReadError,
    NoCredentialsError,
    ReadTimeoutError,
    ResponseStreamingError,
    SSLError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError
from urllib3.exceptions import HTTPError as Urllib3HTTPError

from ..errors import AccessDeniedError, BucketNotFoundError, ObjectNotFoundError, StoreError

try:  # botocore still ships a vendored urllib3 whose errors match none of the real one's
    from botocore.vendored.requests.packages.urllib3.exceptions import (
        HTTPError as VendoredUrllib3HTTPError,
    )
except ImportError:  # pragma: no cover - a botocore without the vendored copy
    VendoredUrllib3HTTPError = Urllib3HTTPError  # type: ignore[misc, assignment]


class _Retry(Exception):
    """Internal: the attempt failed in a way worth repeating; ``cause`` says why."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class MalformedReplyError(Exception):
    """The server's reply lacks what the request must return (an ETag, an UploadId, a
    continuation token) or has it cut. Treated as a failure of that request, so it is retried,
    and never passed on: a cut ETag would make the server reject the whole upload later."""


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
_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
#: Refusals that S3 documents as "not processed": repeating a conditional write after one of
#: these cannot find the writer's own earlier attempt in place.
_NOT_APPLIED_CODES = frozenset({"SlowDown", "TooManyRequests", "TooManyRequestsException", "Throttling"})
_DENIED_CODES = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled", "InvalidToken"}
)
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
_PRECONDITION_CODES = frozenset({"PreconditionFailed", "412"})
#: Errors raised while a response body streams in; the request must be sent again.
_TRANSIENT_EXCEPTIONS: tuple[type[BaseException], ...] = (
    BotoConnectionError,
    ConnectionClosedError,
    ReadTimeoutError,
    IncompleteReadError,
    ResponseStreamingError,
    Urllib3HTTPError,
    VendoredUrllib3HTTPError,
    http.client.HTTPException,
    ConnectionError,
    TimeoutError,
    MalformedReplyError,
)
#: What a request to S3 can raise that the store handles (anything else is a bug).
REQUEST_ERRORS: tuple[type[BaseException], ...] = (ClientError, BotoCoreError, _Retry, *_TRANSIENT_EXCEPTIONS)
#: Failures before the request left the client: nothing can have been applied.
_NEVER_SENT = (EndpointConnectionError, ConnectTimeoutError, ConnectionRefusedError)


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


def is_retryable(exc: BaseException, conditional: bool = False) -> bool:
    """Throttling, 5xx, dropped connections, timeouts, cut or malformed replies; and 409
    ConditionalRequestConflict on conditional writes."""
    if isinstance(exc, _Retry):
        return True
    if isinstance(exc, SSLError):
        return False  # a certificate problem does not pass by itself
    if isinstance(exc, ClientError):
        code, status = _error_code(exc)
        if code in _RETRY_CODES or status in _RETRY_STATUS:
            return True
        return conditional and status == 409 and code == "ConditionalRequestConflict"
    return isinstance(exc, _TRANSIENT_EXCEPTIONS)


def surely_not_applied(exc: BaseException) -> bool:
    """True when the failed request certainly changed nothing on the server.

    A connect that failed, throttling, and 409 ConditionalRequestConflict qualify. A reset or
    timeout after sending, a 500 or a bare 503 do not: the server may have applied the
    request and lost only the reply.
    """
    if isinstance(exc, _Retry):
        exc = exc.cause
    if isinstance(exc, ClientError):
        code, status = _error_code(exc)
        return code in _NOT_APPLIED_CODES or status == 429 or (status == 409 and code == "ConditionalRequestConflict")
    cur: BaseException | None = exc
    for _ in range(8):
        if cur is None:
            break
        if isinstance(cur, _NEVER_SENT):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


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
