"""How the S3 store classifies errors: what to retry, what is "denied", "missing", "exists"."""

from __future__ import annotations

from botocore.exceptions import ClientError, IncompleteReadError, ResponseStreamingError
from botocore.exceptions import ConnectionError as BotoConnectionError
from urllib3.exceptions import HTTPError as Urllib3HTTPError


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
