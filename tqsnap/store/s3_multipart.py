"""Multipart uploads for the S3 store: parts in parallel, a conditional complete, no leftovers.

An object of at least ``multipart_threshold`` bytes goes up in parts of ``multipart_chunk``
bytes (more when it would need over 10,000 parts), each a zero-copy view of the caller's
buffer. A conditional upload puts ``If-None-Match: *`` on ``CompleteMultipartUpload``. Any
failure, and a lost race, aborts the upload, because pending parts are stored and billed
until someone aborts them; uploads left by a killed process are found by
:func:`list_uploads` and removed by :func:`abort_upload` (gc does both).

Every reply is checked before it is used: an UploadPart reply without a well-formed ETag, or a
CreateMultipartUpload reply without an UploadId, is a failed request (and retried), never an
untyped ``KeyError`` or a cut ETag sent on to a completion the server would reject.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Iterator
from concurrent.futures import Future, wait
from typing import Any

from botocore.exceptions import ClientError

from ..errors import StoreError
from .base import Buffer, PendingUpload
from .s3_errors import MalformedReplyError, _error_code
from .s3_io import BufferReader, _byte_view, valid_etag
from .s3_request import S3Requests

logger = logging.getLogger(__name__)

#: S3 refuses more parts than this in one multipart upload.
MAX_PARTS = 10_000
#: ...and parts smaller than this, except the last.
MIN_PART = 5 * 2**20

def upload_in_parts(
    s3: S3Requests, key: str, data: Buffer, size: int, chunk: int, *, conditional: bool
) -> bool:
    """Upload ``data`` to ``key`` in parallel parts; False when a conditional upload lost its race.

    With ``conditional``, a completion whose outcome is unknown raises
    :class:`~tqsnap.errors.CommitOutcomeUnknownError` (see :meth:`S3Requests.create`).
    """
    full = s3.key(key)
    chunk = max(chunk, math.ceil(size / MAX_PARTS))
    view = _byte_view(data)

    def create() -> str:
        resp = s3.client.create_multipart_upload(Bucket=s3.bucket, Key=full)
        upload_id = resp.get("UploadId")
        if not isinstance(upload_id, str) or not upload_id:
            raise MalformedReplyError(f"CreateMultipartUpload of {full!r} answered without an UploadId")
        return upload_id

    upload_id = s3.call("CreateMultipartUpload", key, create)
    futures: list[Future[dict[str, Any]]] = []
    try:
        pool = s3.executor()
        for number, offset in enumerate(range(0, size, chunk), start=1):
            futures.append(
                pool.submit(_upload_part, s3, key, full, upload_id, number, view[offset : offset + chunk])
            )
        parts = [f.result() for f in futures]
        tries = 0

        def complete() -> bool:
            nonlocal tries
            tries += 1
            kwargs: dict[str, Any] = {
                "Bucket": s3.bucket,
                "Key": full,
                "UploadId": upload_id,
                "MultipartUpload": {"Parts": parts},
            }
            if conditional and s3.conditional_mode == "if-none-match":
                kwargs["IfNoneMatch"] = "*"
            try:
                s3.client.complete_multipart_upload(**kwargs)
            except ClientError as exc:
                if conditional and s3.lost_race(exc):
                    return False
                if not conditional and tries > 1 and _error_code(exc)[0] == "NoSuchUpload":
                    if _completed_earlier(s3, full, size, parts):
                        return True
                raise
            return True

        if conditional:
            created = s3.create("CompleteMultipartUpload", key, complete)
        else:
            created = s3.call("CompleteMultipartUpload", key, complete)
    except BaseException:
        # Stop the remaining parts first, or they would land after the abort and keep
        # an upload (and its storage) alive.
        for f in futures:
            f.cancel()
        wait(futures)
        _abort_quietly(s3, key, upload_id)
        raise
    if not created:
        _abort_quietly(s3, key, upload_id)
    return created


def _completed_earlier(s3: S3Requests, full: str, size: int, parts: list[dict[str, Any]]) -> bool:
    """Whether a completion whose reply was lost did complete the upload (unconditional only).

    A repeated CompleteMultipartUpload of an upload an earlier attempt completed is answered
    ``NoSuchUpload``. The object is then ours when it has our size and, where the server uses
    the usual multipart ETag (the MD5 of the parts' MD5s, ``-`` and their count), that ETag
    too. Unconditional uploads go to fresh keys (shards are named with a fresh upload id), so
    nobody else writes one. A conditional completion is never settled here: its caller
    reads the key back (:meth:`S3Requests.create`).
    """
    try:
        head = s3.client.head_object(Bucket=s3.bucket, Key=full)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise  # a failed HEAD is retried with the completion
    if head.get("ContentLength") != size:
        return False
    etag = str(head.get("ETag") or "").strip('"')
    try:
        md5s = b"".join(bytes.fromhex(p["ETag"].strip('"')) for p in parts)
    except ValueError:  # part ETags that are not MD5s: the size is all there is to compare
        return True
    if "-" not in etag:
        return True
    ours = f"{hashlib.md5(md5s, usedforsecurity=False).hexdigest()}-{len(parts)}"
    if etag != ours:
        logger.warning("%s exists after NoSuchUpload with ETag %s, not this upload's %s", full, etag, ours)
    return etag == ours


def _upload_part(
    s3: S3Requests, key: str, full: str, upload_id: str, number: int, part: memoryview
) -> dict[str, Any]:
    def attempt() -> dict[str, Any]:
        resp = s3.client.upload_part(
            Bucket=s3.bucket, Key=full, UploadId=upload_id, PartNumber=number, Body=BufferReader(part)
        )
        etag = resp.get("ETag")
        if not valid_etag(etag):
            raise MalformedReplyError(f"UploadPart {number} of {full!r} answered with ETag {etag!r}")
        return {"PartNumber": number, "ETag": etag}

    return s3.call("UploadPart", key, attempt)


def list_uploads(s3: S3Requests, prefix: str = "") -> Iterator[PendingUpload]:
    """Incomplete uploads under the store's root whose key starts with ``prefix``, page by page."""
    cut = len(s3.root)
    markers: dict[str, str] = {}
    for _page in range(1_000_000):
        kwargs: dict[str, Any] = {"Bucket": s3.bucket, "Prefix": s3.root + prefix, **markers}

        def attempt(kwargs: dict[str, Any] = kwargs) -> dict[str, Any]:
            page = s3.client.list_multipart_uploads(**kwargs)
            if page.get("IsTruncated") and not (page.get("NextKeyMarker") or page.get("NextUploadIdMarker")):
                raise MalformedReplyError(f"ListMultipartUploads of {s3.url} was cut short without a marker")
            return page

        page = s3.call("ListMultipartUploads", prefix, attempt)
        for upload in page.get("Uploads", ()):
            full, upload_id = upload.get("Key"), upload.get("UploadId")
            if not isinstance(full, str) or not full.startswith(s3.root) or not upload_id:
                raise StoreError(f"ListMultipartUploads of {s3.url} returned an unusable entry {upload!r}")
            initiated = upload.get("Initiated")
            yield PendingUpload(full[cut:], upload_id, initiated.timestamp() if initiated else 0.0)
        if not page.get("IsTruncated"):
            return
        markers = {"KeyMarker": page.get("NextKeyMarker", ""), "UploadIdMarker": page.get("NextUploadIdMarker", "")}
    raise StoreError(f"ListMultipartUploads of {s3.url} did not end after a million pages")


def abort_upload(s3: S3Requests, key: str, upload_id: str) -> None:
    """Abort one upload; one that is already gone (completed or aborted) is not an error."""
    full = s3.key(key)

    def attempt() -> None:
        try:
            s3.client.abort_multipart_upload(Bucket=s3.bucket, Key=full, UploadId=upload_id)
        except ClientError as exc:
            if _error_code(exc)[0] != "NoSuchUpload":
                raise

    s3.call("AbortMultipartUpload", key, attempt)


def _abort_quietly(s3: S3Requests, key: str, upload_id: str) -> None:
    try:
        abort_upload(s3, key, upload_id)
    except StoreError as exc:
        logger.warning(
            "could not abort multipart upload %s of %s; gc removes it after its grace period, or "
            "`aws s3api abort-multipart-upload` now: %s",
            upload_id,
            s3.where(key),
            exc,
        )
