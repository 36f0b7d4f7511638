"""What an fsspec filesystem's exceptions mean to tqsnap.

gcsfs, adlfs and the other fsspec backends each raise their own exceptions: gcsfs turns a 404
into ``FileNotFoundError``, a 403 into ``OSError("Forbidden...")`` and other statuses into its
``HttpError``; adlfs lets ``azure.core`` errors through (``HttpResponseError`` with a
``status_code``, ``ServiceRequestError`` for a request that never got an answer); aiohttp
raises ``ClientError`` subclasses. They are recognised here by class name and status code, so
this module imports none of those libraries (``import tqsnap`` must stay light).

A failure that may pass (a reset connection, a timeout, 5xx, 429) becomes
:class:`TransientStoreError`, which the retry wrapper repeats; the rest become the typed
errors of :mod:`tqsnap.errors`, each naming the key and the store.
"""

from __future__ import annotations

import asyncio

from ..errors import AccessDeniedError, BucketNotFoundError, ObjectNotFoundError, StoreError
from .retry import refused_os_error, transient_os_error

#: HTTP statuses worth repeating: timeouts, throttling, server errors.
TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
#: Exception class names (of aiohttp, azure.core, requests, google.auth) for a request that
#: failed in transit; matched along the class's MRO.
TRANSIENT_CLASS_NAMES = frozenset(
    {
        "ClientConnectionError",
        "ClientPayloadError",
        "ServerDisconnectedError",
        "ServerTimeoutError",
        "ServiceRequestError",
        "ServiceResponseError",
        "IncompleteReadError",
        "ChunkedEncodingError",
        "ReadTimeout",
        "ProxyError",
        "RefreshError",
    }
)
DENIED_CLASS_NAMES = frozenset({"ClientAuthenticationError"})


class TransientStoreError(StoreError):
    """A request to an fsspec filesystem failed in a way that may pass; its cause is chained.

    ``refused`` is True when the request never reached the server (nothing was applied), so
    even a conditional create may be repeated without doubt.
    """

    def __init__(self, message: str, *, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused


def status_of(exc: BaseException) -> int | None:
    """The HTTP status an exception carries (azure ``status_code``, gcsfs ``code``, aiohttp ``status``)."""
    for name in ("status_code", "status", "code"):
        value = getattr(exc, name, None)
        if isinstance(value, int) and 100 <= value < 600:
            return value
        if isinstance(value, str) and value.isdigit():
            return int(value)
    return None


def _class_names(exc: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(exc).__mro__}


def is_transient(exc: BaseException) -> bool:
    """True for a failure of the network or of an overloaded server, not of the request."""
    if isinstance(exc, TransientStoreError):
        return True
    if isinstance(exc, StoreError):
        return False
    if isinstance(exc, asyncio.TimeoutError) or transient_os_error(exc):
        return True
    if _class_names(exc) & TRANSIENT_CLASS_NAMES:
        return True
    return status_of(exc) in TRANSIENT_STATUSES


def is_denied(exc: BaseException) -> bool:
    if isinstance(exc, PermissionError) or _class_names(exc) & DENIED_CLASS_NAMES:
        return True
    if status_of(exc) in (401, 403):
        return True
    return isinstance(exc, OSError) and str(exc).startswith("Forbidden")


def translate(exc: BaseException, *, key: str | None, url: str, action: str, writing: bool = False) -> BaseException:
    """The tqsnap error for ``exc``, met while doing ``action`` on ``key`` in the store ``url``.

    ``FileNotFoundError`` on a read is a missing object; on a write it can only be a missing
    bucket or container, since writes create their keys.
    """
    if isinstance(exc, StoreError):
        return exc
    where = f"{key!r} in {url}" if key is not None else url
    if isinstance(exc, FileNotFoundError) or status_of(exc) == 404:
        if writing:
            return BucketNotFoundError(
                f"cannot {action} {where}: the bucket or container does not exist; create it first"
            )
        if key is None:
            return BucketNotFoundError(f"{url}: the bucket or container does not exist")
        return ObjectNotFoundError(key, f"object {key!r} does not exist in {url}")
    if is_denied(exc):
        return AccessDeniedError(
            f"access denied to {action} {where}: {exc}. Check the credentials in the storage options "
            "(or the environment) and their permissions on the bucket or container"
        )
    if is_transient(exc):
        return TransientStoreError(f"{action} of {where} failed: {exc!r}", refused=refused_os_error(exc))
    return StoreError(f"{action} of {where} failed: {type(exc).__name__}: {exc}")


def retryable(exc: BaseException) -> bool:
    """The retry wrapper's test: only failures that may pass are repeated."""
    return is_transient(exc)


def not_applied(exc: BaseException) -> bool:
    """True when the request certainly never reached the server (a refused connection)."""
    return bool(getattr(exc, "refused", False)) or refused_os_error(exc)
