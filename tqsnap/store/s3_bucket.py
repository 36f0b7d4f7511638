"""The S3 store's bucket: create it on request.

The existence check is a one-key listing under the repository prefix
(:meth:`~.s3_request.S3Requests.probe_bucket`) rather than HeadBucket, which least-privilege
roles scoped to a prefix cannot call.
"""

from __future__ import annotations

import logging
from typing import Any

from botocore.exceptions import ClientError

from .s3_errors import _at, _error_code
from .s3_request import S3Requests, missing_bucket

logger = logging.getLogger(__name__)


def ensure_bucket(s3: S3Requests) -> None:
    """Create the store's bucket unless it exists (``create_bucket=True``)."""

    def exists() -> bool:
        try:
            s3.probe_bucket()
        except ClientError as exc:
            if missing_bucket(exc):
                return False
            raise
        return True

    if s3.call("ListObjectsV2", None, exists):
        return
    kwargs: dict[str, Any] = {"Bucket": s3.bucket}
    if s3.region != "us-east-1":
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": s3.region}

    def create() -> None:
        try:
            s3.client.create_bucket(**kwargs)
        except ClientError as exc:
            if _error_code(exc)[0] != "BucketAlreadyOwnedByYou":  # a concurrent creator won
                raise

    s3.call("CreateBucket", None, create)
    logger.info("created bucket %s%s", s3.bucket, _at(s3.endpoint_url))
