"""A store on Amazon S3 or any S3-compatible server (SeaweedFS, MinIO, Ceph, Huawei OBS).

The store talks to S3 through one thread-safe boto3 client and keeps the request count low,
because on S3 the per-request latency, not the bandwidth, dominates small objects.

Choices that matter:

- **Conditional create.** ``put_if_absent`` is ``PutObject`` with ``If-None-Match: *``; the
  server answers 412 to every racer but one. A 412 is recognised from the error *code* of the
  ``ClientError``, never from an exception type, because servers and client libraries disagree
  on how to surface it. Objects above ``multipart_threshold`` go up in parts
  (:mod:`.s3_multipart`) with the condition on the complete; callers that need a race-proof
  commit keep the object below the threshold: no tested server makes that complete atomic.
- **Conditional modes.** ``"if-none-match"`` (AWS and most S3 servers), ``"obs"`` (Huawei OBS,
  which documents no ``If-None-Match`` on PUT: the header ``x-obs-forbid-overwrite: true`` is
  sent instead and 409 ``ObjectAlreadyExists`` means "exists"), and ``"none"`` (no conditional
  create at all: refused unless the caller promises a single writer).
- **No checksums, no payload signing** (:mod:`.s3_client`): each is a full pass over every byte.
- **One retry budget.** botocore's own retries are switched off and this module retries
  throttling, 5xx, timeouts, dropped connections (including ones that break while a response
  body streams, which botocore cannot retry), and 409 ``ConditionalRequestConflict`` on
  conditional writes, with exponential backoff and full jitter. A single budget keeps the worst
  case bounded instead of multiplying two retry layers.
- **No copies of upload buffers.** ``bytes`` go to botocore as they are; ``bytearray`` and
  ``memoryview`` are wrapped in a seekable read-only reader that hands out slices of the
  caller's buffer, so a 1 GiB tensor is never duplicated to be uploaded.
"""

from __future__ import annotations

import email.utils
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    IncompleteReadError,
)

from ..errors import (
    AccessDeniedError,
    ConditionalWriteUnsupportedError,
    ObjectNotFoundError,
    StoreError,
)
from .base import DELETE_BATCH, Buffer, ObjectInfo, ObjectStore, batched
from .s3_bucket import denied_or_missing_bucket, ensure_bucket
from .s3_client import make_client
from .s3_errors import (
    _DENIED_CODES,
    _NOT_FOUND_CODES,
    _PRECONDITION_CODES,
    _TRANSIENT_EXCEPTIONS,
    _describe,
    _error_code,
    _Retry,
    backoff,
    is_retryable,
    translate,
)
from .s3_io import _body, _byte_view, _nbytes, _read_all, _read_into
from .s3_multipart import MIN_PART, upload_in_parts

logger = logging.getLogger(__name__)

T = TypeVar("T")

CONDITIONAL_MODES = ("if-none-match", "obs", "none")

_CLOCK_REFRESH = 60.0


class S3Store(ObjectStore):
    """Objects under ``s3://bucket/prefix``; keys passed in are relative to the prefix.

    Parameters:
        bucket: the bucket name.
        prefix: key prefix inside the bucket (the repository root); slashes at either end are
            ignored.
        endpoint_url: S3 endpoint of a non-AWS server; defaults to ``AWS_ENDPOINT_URL_S3`` or
            ``AWS_ENDPOINT_URL`` from the environment, else AWS itself.
        region: signing region; defaults to the boto3 chain, else ``us-east-1``.
        aws_access_key_id, aws_secret_access_key: explicit credentials; otherwise the normal
            boto3 chain (environment, config files, instance roles).
        conditional_mode: ``"if-none-match"``, ``"obs"`` or ``"none"`` (see the module doc).
        single_writer: with ``conditional_mode="none"``, the caller guarantees that only one
            writer touches the repository; ``put_if_absent`` then checks with HEAD and PUTs.
        multipart_threshold: objects of at least this many bytes are uploaded in parts.
        multipart_chunk: part size (raised if the object would need more than 10,000 parts).
        max_pool_connections: HTTP connections kept open; bounds concurrent requests.
        retries: how many times a failed request is repeated before the error is raised.
        create_bucket: create the bucket if it does not exist (tests, demos, first setup).
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        aws_access_key_id: str | None = None,
        aws_secret_access_key: str | None = None,
        conditional_mode: str = "if-none-match",
        single_writer: bool = False,
        multipart_threshold: int = 64 * 2**20,
        multipart_chunk: int = 16 * 2**20,
        max_pool_connections: int = 32,
        retries: int = 6,
        create_bucket: bool = False,
    ) -> None:
        if not bucket:
            raise ValueError("an S3 store needs a bucket: use s3://BUCKET/prefix")
        if conditional_mode not in CONDITIONAL_MODES:
            raise ValueError(f"conditional_mode must be one of {CONDITIONAL_MODES}, not {conditional_mode!r}")
        if multipart_chunk < MIN_PART:
            raise ValueError(f"multipart_chunk must be at least {MIN_PART} bytes (S3's minimum part size)")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._root = self.prefix + "/" if self.prefix else ""
        scheme = "obs" if conditional_mode == "obs" else "s3"
        self.url = f"{scheme}://{bucket}/{self.prefix}" if self.prefix else f"{scheme}://{bucket}"
        self.conditional_mode = conditional_mode
        self.single_writer = single_writer
        self.atomic_create = conditional_mode != "none"
        self.multipart_threshold = max(1, int(multipart_threshold))
        self.multipart_chunk = int(multipart_chunk)
        self.retries = max(0, int(retries))
        self.endpoint_url = (
            endpoint_url
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
            or None
        )

        #: The boto3 client; public so tools and tests can hook its events.
        self.client, self.region = make_client(
            self.endpoint_url, region, aws_access_key_id, aws_secret_access_key, max_pool_connections
        )
        self._workers = max(1, min(8, max_pool_connections))
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._tls = threading.local()
        self._clock_lock = threading.Lock()
        self._clock_offset: float | None = None
        self._clock_checked = 0.0
        self._bucket_checked = False
        if conditional_mode == "obs":
            for op in ("PutObject", "CreateMultipartUpload", "CompleteMultipartUpload"):
                self.client.meta.events.register(f"before-sign.s3.{op}", self._add_obs_header)
        if create_bucket:
            ensure_bucket(self)
            self._bucket_checked = True

    # --- plumbing ------------------------------------------------------------------------

    def _key(self, key: str) -> str:
        if key.startswith("/"):
            raise StoreError(f"refusing key {key!r}: keys are relative to {self.url}")
        return self._root + key

    def _where(self, key: str | None) -> str:
        where = f"s3://{self.bucket}/{self._key(key)}" if key is not None else self.url
        if self.endpoint_url:
            where += f" (endpoint {self.endpoint_url})"
        return where

    def _add_obs_header(self, request: Any, **_: Any) -> None:
        """Mark conditional writes for OBS; only requests issued by ``put_if_absent`` carry it."""
        if getattr(self._tls, "forbid_overwrite", False):
            request.headers["x-obs-forbid-overwrite"] = "true"

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="tqsnap-s3")
            return self._pool

    def _with_retries(
        self, op: str, key: str | None, attempt_fn: Callable[[], T], conditional: bool = False
    ) -> T:
        """Run ``attempt_fn`` until it succeeds, the error is final, or the budget is spent.

        Only request failures are caught and translated; anything else is a bug and surfaces
        unchanged.
        """
        attempt = 0
        while True:
            try:
                return attempt_fn()
            except (ClientError, BotoCoreError, _Retry, *_TRANSIENT_EXCEPTIONS) as exc:
                if attempt < self.retries and is_retryable(exc, conditional):
                    delay = backoff(attempt)
                    attempt += 1
                    logger.info(
                        "S3 %s of %s failed (%s); retry %d/%d in %.2fs",
                        op,
                        self._where(key),
                        _describe(exc),
                        attempt,
                        self.retries,
                        delay,
                    )
                    time.sleep(delay)
                    continue
                error = translate(
                    exc,
                    op,
                    self._where(key),
                    key,
                    bucket=self.bucket,
                    url=self.url,
                    endpoint_url=self.endpoint_url,
                    attempts=attempt + 1,
                )
                if isinstance(error, AccessDeniedError) and isinstance(exc, ClientError) and key is not None:
                    error = denied_or_missing_bucket(self, error, op)
                raise error from exc

    def _probe_bucket(self) -> dict[str, Any]:
        """A one-key listing under the prefix: proves the bucket exists and carries a ``Date``.

        Not HeadBucket: AWS authorises HeadBucket as ``s3:ListBucket`` without an ``s3:prefix``,
        which least-privilege roles scoped to the repository prefix do not grant.
        """
        return self.client.list_objects_v2(Bucket=self.bucket, Prefix=self._key(""), MaxKeys=1)

    def _check_bucket(self) -> None:
        """Raise BucketNotFoundError if the bucket is missing (a HEAD 404 cannot tell by itself)."""
        if not self._bucket_checked:
            self._with_retries("ListObjectsV2", None, self._probe_bucket)
            self._bucket_checked = True

    # --- reads ---------------------------------------------------------------------------

    def get(self, key: str) -> bytes:
        full = self._key(key)

        def attempt() -> bytes:
            resp = self.client.get_object(Bucket=self.bucket, Key=full)
            return _read_all(resp)

        return self._with_retries("GetObject", key, attempt)

    def get_range(self, key: str, start: int, length: int) -> bytes:
        if start < 0 or length < 0:
            raise ValueError(f"invalid range start={start} length={length}")
        if length == 0:
            if self.head(key) is None:
                raise ObjectNotFoundError(key, f"object {key!r} does not exist in {self.url}")
            return b""
        full = self._key(key)

        def attempt() -> bytes:
            try:
                resp = self.client.get_object(
                    Bucket=self.bucket, Key=full, Range=f"bytes={start}-{start + length - 1}"
                )
            except ClientError as exc:
                if _error_code(exc)[0] == "InvalidRange":
                    return b""
                raise
            return _read_all(resp)

        return self._with_retries("GetObject", key, attempt)

    def get_into(self, key: str, buf: memoryview, start: int = 0) -> int:
        """Stream a range straight into ``buf``; a broken stream resumes where it stopped."""
        view = _byte_view(buf)
        if start < 0:
            raise ValueError(f"invalid start {start}")
        if len(view) == 0:
            self.get_range(key, start, 0)
            return 0
        full = self._key(key)
        done = 0
        etag: str | None = None

        def attempt() -> int:
            nonlocal done, etag
            kwargs: dict[str, Any] = {
                "Bucket": self.bucket,
                "Key": full,
                "Range": f"bytes={start + done}-{start + len(view) - 1}",
            }
            if etag is not None:
                kwargs["IfMatch"] = etag  # a resumed read must not splice two versions
            try:
                resp = self.client.get_object(**kwargs)
            except ClientError as exc:
                code, status = _error_code(exc)
                if code == "InvalidRange":
                    return done
                if etag is not None and (status == 412 or code in _PRECONDITION_CODES):
                    raise StoreError(
                        f"{self._where(key)} was replaced while it was being read; read it again"
                    ) from exc
                raise
            etag = resp.get("ETag") or etag
            want = min(int(resp.get("ContentLength", 0)), len(view) - done)
            got = _read_into(resp, view[done : done + want])
            done += got
            if got < want:
                raise _Retry(IncompleteReadError(actual_bytes=got, expected_bytes=want))
            return done

        return self._with_retries("GetObject", key, attempt)

    def head(self, key: str) -> ObjectInfo | None:
        full = self._key(key)

        def attempt() -> ObjectInfo | None:
            try:
                resp = self.client.head_object(Bucket=self.bucket, Key=full)
            except ClientError as exc:
                code, status = _error_code(exc)
                if status == 404 or code in _NOT_FOUND_CODES:
                    return None
                raise
            return ObjectInfo(key, int(resp["ContentLength"]), resp["LastModified"].timestamp())

        info = self._with_retries("HeadObject", key, attempt)
        if info is None:
            self._check_bucket()
        return info

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        full = self._root + prefix
        cut = len(self._root)
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": full}
            if token:
                kwargs["ContinuationToken"] = token

            def attempt(kwargs: dict[str, Any] = kwargs) -> dict[str, Any]:
                return self.client.list_objects_v2(**kwargs)

            page = self._with_retries("ListObjectsV2", prefix, attempt)
            for obj in page.get("Contents", ()):
                yield ObjectInfo(obj["Key"][cut:], int(obj["Size"]), obj["LastModified"].timestamp())
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    def now(self) -> float:
        """Server time: the local clock plus the offset to the server's ``Date`` header.

        The offset is measured with a one-key listing of the prefix at most once a minute; ``Date`` has one-second
        resolution, so the estimate is the middle of that second, placed at the middle of the
        round trip.
        """
        mono = time.monotonic()
        with self._clock_lock:
            offset = self._clock_offset
            fresh = offset is not None and mono - self._clock_checked < _CLOCK_REFRESH
        if fresh:
            assert offset is not None
            return time.time() + offset

        def attempt() -> float:
            before = time.time()
            resp = self._probe_bucket()
            after = time.time()
            date = resp.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
            if not date:
                raise StoreError(f"{self.url}: the server sent no Date header, so its clock cannot be read")
            server = email.utils.parsedate_to_datetime(date).timestamp() + 0.5
            return server - (before + after) / 2

        offset = self._with_retries("ListObjectsV2", None, attempt)
        with self._clock_lock:
            self._clock_offset = offset
            self._clock_checked = mono
        self._bucket_checked = True
        return time.time() + offset

    # --- writes --------------------------------------------------------------------------

    def put(self, key: str, data: Buffer) -> None:
        size = _nbytes(data)
        if size >= self.multipart_threshold:
            upload_in_parts(self, key, data, size, conditional=False)
            return
        full = self._key(key)

        def attempt() -> None:
            self.client.put_object(Bucket=self.bucket, Key=full, Body=_body(data))

        self._with_retries("PutObject", key, attempt)

    def put_if_absent(self, key: str, data: Buffer) -> bool:
        """Create ``key`` unless it exists; exactly one of many racers gets True.

        A retried request whose first attempt did succeed (and whose reply was lost) answers
        False; callers that must tell the two apart store a unique id in the object and read
        it back.
        """
        if self.conditional_mode == "none":
            if not self.single_writer:
                raise ConditionalWriteUnsupportedError(
                    f"{self.url} is configured with conditional_mode='none': the store cannot create "
                    f"{key!r} atomically, so concurrent writers could overwrite each other's commits. "
                    "Use a server that honours If-None-Match, or pass single_writer=True if you can "
                    "guarantee that only one writer uses this repository at a time"
                )
            if self.head(key) is not None:
                return False
            self.put(key, data)
            return True
        size = _nbytes(data)
        self._tls.forbid_overwrite = self.conditional_mode == "obs"
        try:
            if size >= self.multipart_threshold:
                # Losing is cheap to detect before uploading hundreds of MiB; the conditional
                # complete still decides any race that starts after this check.
                if self.head(key) is not None:
                    return False
                return upload_in_parts(self, key, data, size, conditional=True)
            full = self._key(key)

            def attempt() -> bool:
                kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": full, "Body": _body(data)}
                if self.conditional_mode == "if-none-match":
                    kwargs["IfNoneMatch"] = "*"
                try:
                    self.client.put_object(**kwargs)
                except ClientError as exc:
                    if self._lost_race(exc):
                        return False
                    raise
                return True

            return self._with_retries("PutObject", key, attempt, conditional=True)
        finally:
            self._tls.forbid_overwrite = False

    def _lost_race(self, exc: ClientError) -> bool:
        code, status = _error_code(exc)
        if status == 412 or code in _PRECONDITION_CODES:
            return True
        return self.conditional_mode == "obs" and status == 409 and code == "ObjectAlreadyExists"

    def delete_many(self, keys: Iterable[str]) -> int:
        requests = 0
        for batch in batched(keys, DELETE_BATCH):
            requests += 1
            objects = [{"Key": self._key(k)} for k in batch]

            def attempt(objects: list[dict[str, str]] = objects) -> dict[str, Any]:
                return self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True}
                )

            resp = self._with_retries("DeleteObjects", batch[0], attempt)
            errors = resp.get("Errors") or []
            if errors:
                shown = ", ".join(f"{e.get('Key')} ({e.get('Code')}: {e.get('Message')})" for e in errors[:5])
                more = f" and {len(errors) - 5} more" if len(errors) > 5 else ""
                codes = {str(e.get("Code")) for e in errors}
                cls = AccessDeniedError if codes & _DENIED_CODES else StoreError
                raise cls(
                    f"S3 DeleteObjects in {self.url} failed for {len(errors)} keys: {shown}{more}. "
                    "The other keys of the batch were deleted; re-run the deletion once the cause is fixed"
                )
        return requests

    def close(self) -> None:
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        close = getattr(self.client, "close", None)
        if close is not None:
            close()
