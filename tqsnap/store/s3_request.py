"""The bottom of the S3 backend: one object that sends a request and says where it went.

:class:`S3Requests` holds what every S3 request needs (the boto3 client, the bucket, the key
prefix, the endpoint, the retry policy) and does what every request does: make the full key,
run the attempt under the retry policy, translate a final failure into a tqsnap error that
names the object. The store (:mod:`.s3`), the multipart upload (:mod:`.s3_multipart`) and the
bucket checks (:mod:`.s3_bucket`) all go through it, so imports run one way
(``s3`` -> ``s3_multipart``/``s3_bucket`` -> ``s3_request`` -> ``s3_errors``/``s3_io``) and no
module reaches into another's private members.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from botocore.exceptions import ClientError

from ..errors import AccessDeniedError, BucketNotFoundError, CommitOutcomeUnknownError, StoreError
from .retry import RetryPolicy
from .s3_errors import (
    _PRECONDITION_CODES,
    REQUEST_ERRORS,
    _at,
    _describe,
    _error_code,
    is_retryable,
    surely_not_applied,
    translate,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")


def missing_bucket(exc: ClientError) -> bool:
    code, status = _error_code(exc)
    return status == 404 or code in ("NoSuchBucket", "NotFound")


@dataclass
class S3Requests:
    """Requests to ``s3://bucket/prefix`` through ``client``, retried under ``policy``."""

    client: Any
    bucket: str
    prefix: str
    url: str
    endpoint_url: str | None
    region: str
    policy: RetryPolicy
    conditional_mode: str = "if-none-match"
    workers: int = 8
    _pool: ThreadPoolExecutor | None = field(default=None, init=False, repr=False)
    _pool_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @property
    def root(self) -> str:
        """The prefix of every full key: ``prefix/``, or empty for a whole bucket."""
        return self.prefix + "/" if self.prefix else ""

    def key(self, key: str) -> str:
        """The full object key of a store key."""
        if key.startswith("/"):
            raise StoreError(f"refusing key {key!r}: keys are relative to {self.url}")
        return self.root + key

    def where(self, key: str | None) -> str:
        """"Where am I", for messages: the object's full address and the endpoint."""
        where = f"s3://{self.bucket}/{self.key(key)}" if key is not None else self.url
        if self.endpoint_url:
            where += f" (endpoint {self.endpoint_url})"
        return where

    def executor(self) -> ThreadPoolExecutor:
        """Threads for parallel parts, made on first use."""
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="tqsnap-s3")
            return self._pool

    def close(self) -> None:
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    # --- one request ---------------------------------------------------------------------

    def call(self, op: str, key: str | None, attempt: Callable[[], T], *, conditional: bool = False) -> T:
        """Run ``attempt`` under the retry policy; a final failure becomes a tqsnap error.

        Only failures of the request itself are caught; anything else is a bug and surfaces
        unchanged.
        """

        def final(exc: BaseException, attempts: int) -> BaseException:
            return self._translate(exc, op, key, attempts)

        return self.policy.run(
            attempt,
            retryable=lambda exc: is_retryable(exc, conditional),
            catch=REQUEST_ERRORS,
            final=final,
            what=lambda: f"S3 {op} of {self.where(key)}",
            describe=_describe,
        )

    def create(self, op: str, key: str, attempt: Callable[[], bool]) -> bool:
        """A conditional create: True if this call created ``key``, False if it existed before.

        ``attempt`` returns False for "precondition failed". Repeating a create is safe only
        while no earlier attempt can have been applied: once one may have been (a reset or
        timeout after sending, a 5xx), a later "exists" may be this very writer's object, and
        running out of attempts leaves the outcome open. Both raise
        :class:`~tqsnap.errors.CommitOutcomeUnknownError` for the caller to resolve by reading
        the key back; a True is always definite.
        """
        uncertain: list[BaseException] = []

        def once() -> bool:
            try:
                created = attempt()
            except REQUEST_ERRORS as exc:
                if is_retryable(exc, True) and not surely_not_applied(exc):
                    uncertain.append(exc)  # a 4xx refusal changed nothing; a reset or 5xx may have
                raise
            if not created and uncertain:
                raise CommitOutcomeUnknownError(
                    key,
                    f"S3 {op} of {self.where(key)} may have been applied ({_describe(uncertain[0])}), "
                    "and a retry found the object existing: it may be this writer's own or a rival's. "
                    "Read it back to tell",
                )
            return created

        def final(exc: BaseException, attempts: int) -> BaseException:
            error = self._translate(exc, op, key, attempts)
            if uncertain and not isinstance(error, CommitOutcomeUnknownError):
                return CommitOutcomeUnknownError(
                    key,
                    f"S3 {op} of {self.where(key)} failed ({error}), and an earlier attempt may have been "
                    f"applied ({_describe(uncertain[0])}): whether {key!r} was created is unknown. "
                    "Read it back to tell",
                )
            return error

        return self.policy.run(
            once,
            retryable=lambda exc: is_retryable(exc, True),
            catch=REQUEST_ERRORS,
            final=final,
            what=lambda: f"S3 {op} of {self.where(key)}",
            describe=_describe,
        )

    def lost_race(self, exc: ClientError) -> bool:
        """True when a conditional write was refused because the key exists."""
        code, status = _error_code(exc)
        if status == 412 or code in _PRECONDITION_CODES:
            return True
        return self.conditional_mode == "obs" and status == 409 and code == "ObjectAlreadyExists"

    def _translate(self, exc: BaseException, op: str, key: str | None, attempts: int) -> BaseException:
        error = translate(
            exc,
            op,
            self.where(key),
            key,
            bucket=self.bucket,
            url=self.url,
            endpoint_url=self.endpoint_url,
            attempts=attempts,
        )
        if isinstance(error, AccessDeniedError) and isinstance(exc, ClientError) and key is not None:
            error = self._denied_or_missing_bucket(error, op)
        return error

    # --- the bucket ----------------------------------------------------------------------

    def probe_bucket(self) -> dict[str, Any]:
        """A one-key listing under the prefix: proves the bucket exists and carries a ``Date``.

        Not HeadBucket: AWS authorises HeadBucket as ``s3:ListBucket`` without an ``s3:prefix``,
        which least-privilege roles scoped to the repository prefix do not grant.
        """
        return self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.key(""), MaxKeys=1)

    def _denied_or_missing_bucket(self, error: Exception, op: str) -> Exception:
        """Some servers (SeaweedFS) answer a write to a missing bucket with 403; say which it is."""
        try:
            self.probe_bucket()
        except ClientError as exc:
            if missing_bucket(exc):
                return BucketNotFoundError(
                    f"bucket {self.bucket!r} does not exist{_at(self.endpoint_url)} ({op} was refused); "
                    "create it, fix the bucket name in the URL, or pass create_bucket=True"
                )
        except Exception:  # noqa: BLE001 - the original error is the better report
            pass
        return error
