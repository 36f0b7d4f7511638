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
- **A commit is never guessed.** A conditional create is repeated only while no earlier
  attempt can have been applied; once one may have been (its reply was lost), the result is
  True if a retry creates the key, and otherwise
  :class:`~tqsnap.errors.CommitOutcomeUnknownError`, never a False that may hide the
  writer's own commit (:meth:`.s3_request.S3Requests.create`).
- **Conditional modes.** ``"if-none-match"`` (AWS and most S3 servers), ``"obs"`` (Huawei OBS,
  which documents no ``If-None-Match`` on PUT: the header ``x-obs-forbid-overwrite: true`` is
  sent instead and 409 ``ObjectAlreadyExists`` means "exists"), and ``"none"`` (no conditional
  create at all: refused unless the caller promises a single writer).
- **No checksums, no payload signing** (:mod:`.s3_client`): each is a full pass over every byte.
- **One retry budget** (:mod:`.retry`, :mod:`.s3_errors`): botocore's own retries are
  switched off and every request that is safe to repeat is repeated on throttling, 5xx,
  timeouts, resets, cut bodies and malformed replies, with exponential backoff and full
  jitter, bounded by attempts and time. The attempts come from the ``retries`` option, a
  botocore ``Config``, or botocore's ``AWS_MAX_ATTEMPTS``/profile settings, in that order.
  A broken body resumes with a ranged GET from the first byte not received; a listing
  retries the page it was on, with the same continuation token.
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
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import urlparse

from botocore.config import Config
from botocore.exceptions import ClientError, IncompleteReadError

from ..errors import (
    AccessDeniedError,
    ConditionalWriteUnsupportedError,
    ObjectNotFoundError,
    StoreError,
)
from .base import DELETE_BATCH, Buffer, ObjectInfo, ObjectStore, PendingUpload, StoreSpec, batched
from .retry import RetryPolicy, policy_from_botocore
from .s3_bucket import ensure_bucket
from .s3_client import make_client
from .s3_errors import (
    _DENIED_CODES,
    _NOT_FOUND_CODES,
    _PRECONDITION_CODES,
    MalformedReplyError,
    _error_code,
    _Retry,
)
from .s3_io import _body, _byte_view, _nbytes, _read_all, _read_into, valid_etag
from .s3_multipart import MIN_PART, abort_upload, list_uploads, upload_in_parts
from .s3_request import S3Requests

logger = logging.getLogger(__name__)

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
        retries: how failed requests are repeated: a number of retries after the first
            attempt, botocore's dict (``{"total_max_attempts": 3}``, ``{"max_attempts": 2}``),
            or a :class:`~tqsnap.store.retry.RetryPolicy`. Unset: the ``retries`` of
            ``config``, else botocore's ``AWS_MAX_ATTEMPTS`` / profile ``max_attempts``, else 7
            attempts.
        retry_budget_s: no retry starts later than this after a request's first attempt.
        config: a botocore ``Config`` merged over the store's client settings.
        create_bucket: create the bucket if it does not exist (tests, demos, first setup).
    """

    #: Every process that reopens :meth:`spec` reaches the same bucket.
    shareable_across_processes = True

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        aws_access_key_id: str | None = None,
        aws_secret_access_key: str | None = None,
        aws_session_token: str | None = None,
        profile: str | None = None,
        conditional_mode: str = "if-none-match",
        single_writer: bool = False,
        multipart_threshold: int = 64 * 2**20,
        multipart_chunk: int = 16 * 2**20,
        max_pool_connections: int = 32,
        retries: int | dict[str, Any] | RetryPolicy | None = None,
        retry_budget_s: float | None = None,
        config: Config | None = None,
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
        scheme = "obs" if conditional_mode == "obs" else "s3"
        self.url = f"{scheme}://{bucket}/{self.prefix}" if self.prefix else f"{scheme}://{bucket}"
        self.conditional_mode = conditional_mode
        self.single_writer = single_writer
        self.atomic_create = conditional_mode != "none"
        self.multipart_threshold = max(1, int(multipart_threshold))
        self.multipart_chunk = int(multipart_chunk)
        self.endpoint_url = (
            endpoint_url
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
            or None
        )
        client, self.region, session = make_client(
            self.endpoint_url,
            region,
            aws_access_key_id,
            aws_secret_access_key,
            max_pool_connections,
            config,
            session_token=aws_session_token,
            profile=profile,
        )
        #: How failed requests are repeated (attempts, time budget, backoff).
        self.retry_policy = policy_from_botocore(retries, config=config, session=session, budget_s=retry_budget_s)
        self._spec = StoreSpec(  # what another process needs to reopen this store (see spec())
            self.url,
            {
                "endpoint_url": self.endpoint_url,
                "region": self.region,
                "aws_access_key_id": aws_access_key_id,
                "aws_secret_access_key": aws_secret_access_key,
                "aws_session_token": aws_session_token,
                "profile": profile,
                "conditional_mode": conditional_mode,
                "single_writer": single_writer,
                "multipart_threshold": self.multipart_threshold,
                "multipart_chunk": self.multipart_chunk,
                "max_pool_connections": max_pool_connections,
                "retries": self.retry_policy,
                "config": config,
            },
        )
        self._s3 = S3Requests(
            client,
            bucket,
            self.prefix,
            self.url,
            self.endpoint_url,
            self.region,
            self.retry_policy,
            conditional_mode,
            workers=max(1, min(8, max_pool_connections)),
        )
        #: The boto3 client; public so tools and tests can hook its events.
        self.client = client
        self._tls = threading.local()
        self._clock_lock = threading.Lock()
        self._clock_offset: float | None = None
        self._clock_checked = 0.0
        self._bucket_checked = False
        if conditional_mode == "obs":
            for op in ("PutObject", "CreateMultipartUpload", "CompleteMultipartUpload"):
                self.client.meta.events.register(f"before-sign.s3.{op}", self._add_obs_header)
        if create_bucket:
            ensure_bucket(self._s3)
            self._bucket_checked = True

    def declare_single_writer(self) -> None:
        self.single_writer = True
        self._spec = StoreSpec(self._spec.url, {**self._spec.options, "single_writer": True})

    def spec(self) -> StoreSpec:
        """URL, endpoint, region, conditional mode, retry policy, client config, and credentials
        only if they were passed explicitly (otherwise the other process uses its own boto3
        chain). The spec's repr masks the secret key; never log its options."""
        return self._spec

    @classmethod
    def from_spec(cls, spec: StoreSpec) -> S3Store:
        parsed = urlparse(spec.url)
        return cls(parsed.netloc, parsed.path, **spec.options)

    @property
    def retries(self) -> int:
        """Retries after the first attempt (the policy's attempts minus one)."""
        return self.retry_policy.max_attempts - 1

    def _add_obs_header(self, request: Any, **_: Any) -> None:
        """Mark conditional writes for OBS; only requests issued by ``put_if_absent`` carry it."""
        if getattr(self._tls, "forbid_overwrite", False):
            request.headers["x-obs-forbid-overwrite"] = "true"

    def _check_bucket(self) -> None:
        """Raise BucketNotFoundError if the bucket is missing (a HEAD 404 cannot tell by itself)."""
        if not self._bucket_checked:
            self._s3.call("ListObjectsV2", None, self._s3.probe_bucket)
            self._bucket_checked = True

    # --- reads ---------------------------------------------------------------------------

    def get(self, key: str) -> bytes:
        """The whole object; a body that breaks is completed by ranged GETs of the same version.

        The first attempt reads the body in one piece (no extra copy). If it breaks, what it
        read is lost (botocore drops a broken body), and the object is then filled into a
        buffer of the size the server announced, each further break resuming with a ranged
        GET from the first byte not yet received, pinned to the first reply's ETag.
        """
        full = self._s3.key(key)
        state: dict[str, Any] = {"size": None, "etag": None}

        def attempt() -> bytes:
            if state["size"] is None:
                resp = self._s3.client.get_object(Bucket=self.bucket, Key=full)
                size = resp.get("ContentLength")
                if size is None:
                    resp["Body"].close()
                    raise MalformedReplyError(f"GetObject of {full!r} answered without a Content-Length")
                etag = resp.get("ETag")
                if etag is not None and not valid_etag(etag):
                    resp["Body"].close()
                    raise MalformedReplyError(f"GetObject of {full!r} answered with ETag {etag!r}")
                try:
                    return _read_all(resp)
                except BaseException:
                    state["size"], state["etag"] = int(size), etag
                    raise
            if "buf" not in state:
                state["buf"] = bytearray(state["size"])  # kept across attempts with "done"
            self._fill(key, full, memoryview(state["buf"]), 0, state)
            return bytes(state["buf"])

        return self._s3.call("GetObject", key, attempt)

    def get_range(self, key: str, start: int, length: int) -> bytes:
        if start < 0 or length < 0:
            raise ValueError(f"invalid range start={start} length={length}")
        if length == 0:
            if self.head(key) is None:
                raise ObjectNotFoundError(key, f"object {key!r} does not exist in {self.url}")
            return b""
        full = self._s3.key(key)

        def attempt() -> bytes:
            try:
                resp = self._s3.client.get_object(
                    Bucket=self.bucket, Key=full, Range=f"bytes={start}-{start + length - 1}"
                )
            except ClientError as exc:
                if _error_code(exc)[0] == "InvalidRange":
                    return b""
                raise
            return _read_all(resp)

        return self._s3.call("GetObject", key, attempt)

    def get_into(self, key: str, buf: memoryview, start: int = 0) -> int:
        """Stream a range straight into ``buf``; a broken stream resumes where it stopped."""
        return self.get_into_sized(key, buf, start)[0]

    def get_into_sized(self, key: str, buf: memoryview, start: int = 0) -> tuple[int, int | None]:
        """:meth:`get_into`, with the object's size from the reply's ``Content-Range`` total."""
        view = _byte_view(buf)
        if start < 0:
            raise ValueError(f"invalid start {start}")
        if len(view) == 0:
            self.get_range(key, start, 0)
            return 0, None
        full = self._s3.key(key)
        state: dict[str, Any] = {"done": 0, "etag": None, "total": None}
        done = self._s3.call("GetObject", key, lambda: self._fill(key, full, view, start, state))
        return done, state["total"]

    def _fill(self, key: str, full: str, view: memoryview, start: int, state: dict[str, Any]) -> int:
        """One attempt at reading ``view``'s remaining bytes from ``start + state["done"]``.

        ``state`` carries the bytes done and the ETag across attempts, so a retry asks only for
        what is missing, and only of the version it began with.
        """
        done = state.setdefault("done", 0)
        kwargs: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": full,
            "Range": f"bytes={start + done}-{start + len(view) - 1}",
        }
        if state.get("etag"):
            kwargs["IfMatch"] = state["etag"]  # a resumed read must not splice two versions
        try:
            resp = self._s3.client.get_object(**kwargs)
        except ClientError as exc:
            code, status = _error_code(exc)
            if code == "InvalidRange":
                return done
            if state.get("etag") and (status == 412 or code in _PRECONDITION_CODES):
                raise StoreError(
                    f"{self._s3.where(key)} was replaced while it was being read; read it again"
                ) from exc
            raise
        etag = resp.get("ETag")
        if resp.get("ContentLength") is None or (etag is not None and not valid_etag(etag)):
            resp["Body"].close()
            raise MalformedReplyError(
                f"GetObject of {full!r} answered without a Content-Length or with a malformed ETag {etag!r}"
            )
        state["etag"] = etag or state.get("etag")
        state["total"] = _range_total(resp.get("ContentRange"))
        want = min(int(resp["ContentLength"]), len(view) - done)
        got = _read_into(resp, view[done : done + want])
        done += got
        state["done"] = done
        if got < want:
            raise _Retry(IncompleteReadError(actual_bytes=got, expected_bytes=want))
        return done

    def head(self, key: str) -> ObjectInfo | None:
        full = self._s3.key(key)

        def attempt() -> ObjectInfo | None:
            try:
                resp = self._s3.client.head_object(Bucket=self.bucket, Key=full)
            except ClientError as exc:
                code, status = _error_code(exc)
                if status == 404 or code in _NOT_FOUND_CODES:
                    return None
                raise
            size, modified = resp.get("ContentLength"), resp.get("LastModified")
            if size is None or modified is None:
                raise MalformedReplyError(f"HeadObject of {full!r} answered without its size or date")
            return ObjectInfo(key, int(size), modified.timestamp())

        info = self._s3.call("HeadObject", key, attempt)
        if info is None:
            self._check_bucket()
        return info

    def list(self, prefix: str = "", *, page_size: int | None = None) -> Iterator[ObjectInfo]:
        """Every object under ``prefix`` in key order, one page (at most ``page_size``) per request.

        A page that fails is asked for again with the same continuation token, so a long
        listing survives faults without starting over. A page cut short (truncated without a
        token, or naming keys outside the prefix) is a malformed reply, never an end.
        """
        full = self._s3.root + prefix
        cut = len(self._s3.root)
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": full}
            if token:
                kwargs["ContinuationToken"] = token
            if page_size:
                kwargs["MaxKeys"] = int(page_size)

            def attempt(kwargs: dict[str, Any] = kwargs) -> dict[str, Any]:
                page = self._s3.client.list_objects_v2(**kwargs)
                if page.get("IsTruncated") and not page.get("NextContinuationToken"):
                    raise MalformedReplyError(f"ListObjectsV2 of {full!r} is truncated without a continuation token")
                for obj in page.get("Contents", ()):
                    if not str(obj.get("Key", "")).startswith(full) or "Size" not in obj or "LastModified" not in obj:
                        raise MalformedReplyError(f"ListObjectsV2 of {full!r} returned an unusable entry {obj!r}")
                return page

            page = self._s3.call("ListObjectsV2", prefix, attempt)
            for obj in page.get("Contents", ()):
                yield ObjectInfo(obj["Key"][cut:], int(obj["Size"]), obj["LastModified"].timestamp())
            if not page.get("IsTruncated"):
                return
            token = page["NextContinuationToken"]

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
            resp = self._s3.probe_bucket()
            after = time.time()
            date = resp.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
            if not date:
                raise StoreError(f"{self.url}: the server sent no Date header, so its clock cannot be read")
            server = email.utils.parsedate_to_datetime(date).timestamp() + 0.5
            return server - (before + after) / 2

        offset = self._s3.call("ListObjectsV2", None, attempt)
        with self._clock_lock:
            self._clock_offset = offset
            self._clock_checked = mono
        self._bucket_checked = True
        return time.time() + offset

    # --- writes --------------------------------------------------------------------------

    def put(self, key: str, data: Buffer) -> None:
        size = _nbytes(data)
        if size >= self.multipart_threshold:
            upload_in_parts(self._s3, key, data, size, self.multipart_chunk, conditional=False)
            return
        full = self._s3.key(key)

        def attempt() -> None:
            self._s3.client.put_object(Bucket=self.bucket, Key=full, Body=_body(data))

        self._s3.call("PutObject", key, attempt)

    def put_if_absent(self, key: str, data: Buffer) -> bool:
        """Create ``key`` unless it exists; exactly one of many racers gets True.

        When a reply was lost and the outcome cannot be settled by a retry, raises
        :class:`~tqsnap.errors.CommitOutcomeUnknownError` instead of answering (see the module
        doc); the caller reads the key back to tell.
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
                return upload_in_parts(self._s3, key, data, size, self.multipart_chunk, conditional=True)
            full = self._s3.key(key)

            def attempt() -> bool:
                kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": full, "Body": _body(data)}
                if self.conditional_mode == "if-none-match":
                    kwargs["IfNoneMatch"] = "*"
                try:
                    self._s3.client.put_object(**kwargs)
                except ClientError as exc:
                    if self._s3.lost_race(exc):
                        return False
                    raise
                return True

            return self._s3.create("PutObject", key, attempt)
        finally:
            self._tls.forbid_overwrite = False

    def delete_many(self, keys: Iterable[str]) -> int:
        requests = 0
        for batch in batched(keys, DELETE_BATCH):
            requests += 1
            objects = [{"Key": self._s3.key(k)} for k in batch]

            def attempt(objects: list[dict[str, str]] = objects) -> dict[str, Any]:
                return self._s3.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True}
                )

            resp = self._s3.call("DeleteObjects", batch[0], attempt)
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

    # --- leftovers -----------------------------------------------------------------------

    def list_uploads(self, prefix: str = "") -> Iterator[PendingUpload]:
        """Incomplete multipart uploads under the repository prefix (key, upload id, initiated)."""
        return list_uploads(self._s3, prefix)

    def abort_upload(self, upload: PendingUpload) -> None:
        abort_upload(self._s3, upload.key, upload.upload_id)

    def close(self) -> None:
        self._s3.close()
        close = getattr(self.client, "close", None)
        if close is not None:
            close()


def _range_total(content_range: Any) -> int | None:
    """The object's size from a ``Content-Range: bytes a-b/total`` header; ``None`` if absent or ``*``."""
    if not isinstance(content_range, str):
        return None
    _, sep, total = content_range.rpartition("/")
    if not sep or not total.isascii() or not total.isdigit():
        return None
    return int(total)
