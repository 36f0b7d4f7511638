"""The S3 store's bucket: create it on request, and tell "no such bucket" from "access denied".

Both use a one-key listing under the repository prefix (``S3Store._probe_bucket``) rather than
HeadBucket, which least-privilege roles scoped to a prefix cannot call.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from ..errors import BucketNotFoundError
from .s3_errors import _at, _error_code

if TYPE_CHECKING:
    from .s3 import S3Store

logger = logging.getLogger(__name__)


def _missing(exc: ClientError) -> bool:
    code, status = _error_code(exc)
    return status == 404 or code in ("NoSuchBucket", "NotFound")


def denied_or_missing_bucket(store: S3Store, error: Exception, op: str) -> Exception:
    """Some servers (SeaweedFS) answer a write to a missing bucket with 403; say which it is."""
    try:
        store._probe_bucket()
    except ClientError as exc:
        if _missing(exc):
            return BucketNotFoundError(
                f"bucket {store.bucket!r} does not exist{_at(store.endpoint_url)} ({op} was refused); "
                "create it, fix the bucket name in the URL, or pass create_bucket=True"
            )
    except Exception:  # noqa: BLE001 - the original error is the better report
        pass
    return error


def ensure_bucket(store: S3Store) -> None:
    """Create the store's bucket unless it exists (``create_bucket=True``)."""

    def exists() -> bool:
        try:
            store._probe_bucket()
        except ClientError as exc:
            if _missing(exc):
                return False
            raise
        return True

    if store._with_retries("ListObjectsV2", None, exists):
        return
    kwargs: dict[str, Any] = {"Bucket": store.bucket}
    if store.region != "us-east-1":
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": store.region}

    def create() -> None:
        try:
            store.client.create_bucket(**kwargs)
        except ClientError as exc:
            if _error_code(exc)[0] != "BucketAlreadyOwnedByYou":  # a concurrent creator won
                raise

    store._with_retries("CreateBucket", None, create)
    logger.info("created bucket %s%s", store.bucket, _at(store.endpoint_url))
