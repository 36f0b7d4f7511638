"""Multipart uploads for the S3 store: parts in parallel, a conditional complete, no leftovers.

An object of at least ``multipart_threshold`` bytes goes up in parts of ``multipart_chunk``
bytes (more when it would need over 10,000 parts), each a zero-copy view of the caller's
buffer. A conditional upload puts ``If-None-Match: *`` on ``CompleteMultipartUpload``. Any
failure, and a lost race, aborts the upload, because pending parts are stored and billed
until someone aborts them.
"""

from __future__ import annotations

import logging
import math
from concurrent.futures import Future, wait
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from ..errors import StoreError
from .base import Buffer
from .s3_errors import _error_code
from .s3_io import BufferReader, _byte_view

if TYPE_CHECKING:
    from .s3 import S3Store

logger = logging.getLogger(__name__)

#: S3 refuses more parts than this in one multipart upload.
MAX_PARTS = 10_000
#: ...and parts smaller than this, except the last.
MIN_PART = 5 * 2**20


def upload_in_parts(store: S3Store, key: str, data: Buffer, size: int, *, conditional: bool) -> bool:
    """Upload ``data`` to ``key`` in parallel parts; False when a conditional upload lost its race."""
    full = store._key(key)
    chunk = max(store.multipart_chunk, math.ceil(size / MAX_PARTS))
    view = _byte_view(data)
    client, bucket = store.client, store.bucket

    def create() -> str:
        return client.create_multipart_upload(Bucket=bucket, Key=full)["UploadId"]

    upload_id = store._with_retries("CreateMultipartUpload", key, create)
    futures: list[Future[dict[str, Any]]] = []
    try:
        pool = store._executor()
        for number, offset in enumerate(range(0, size, chunk), start=1):
            futures.append(
                pool.submit(_upload_part, store, key, full, upload_id, number, view[offset : offset + chunk])
            )
        parts = [f.result() for f in futures]

        def complete() -> bool:
            kwargs: dict[str, Any] = {
                "Bucket": bucket,
                "Key": full,
                "UploadId": upload_id,
                "MultipartUpload": {"Parts": parts},
            }
            if conditional and store.conditional_mode == "if-none-match":
                kwargs["IfNoneMatch"] = "*"
            try:
                client.complete_multipart_upload(**kwargs)
            except ClientError as exc:
                if conditional and store._lost_race(exc):
                    return False
                raise
            return True

        created = store._with_retries("CompleteMultipartUpload", key, complete, conditional=conditional)
    except BaseException:
        # Stop the remaining parts first, or they would land after the abort and keep
        # an upload (and its storage) alive.
        for f in futures:
            f.cancel()
        wait(futures)
        _abort(store, key, full, upload_id)
        raise
    if not created:
        _abort(store, key, full, upload_id)
    return created


def _upload_part(
    store: S3Store, key: str, full: str, upload_id: str, number: int, part: memoryview
) -> dict[str, Any]:
    def attempt() -> dict[str, Any]:
        resp = store.client.upload_part(
            Bucket=store.bucket, Key=full, UploadId=upload_id, PartNumber=number, Body=BufferReader(part)
        )
        return {"PartNumber": number, "ETag": resp["ETag"]}

    return store._with_retries("UploadPart", key, attempt)


def _abort(store: S3Store, key: str, full: str, upload_id: str) -> None:
    def attempt() -> None:
        try:
            store.client.abort_multipart_upload(Bucket=store.bucket, Key=full, UploadId=upload_id)
        except ClientError as exc:
            if _error_code(exc)[0] != "NoSuchUpload":
                raise

    try:
        store._with_retries("AbortMultipartUpload", key, attempt)
    except StoreError as exc:
        logger.warning(
            "could not abort multipart upload %s of %s; it keeps costing storage until a "
            "lifecycle rule or `aws s3api abort-multipart-upload` removes it: %s",
            upload_id,
            store._where(key),
            exc,
        )
