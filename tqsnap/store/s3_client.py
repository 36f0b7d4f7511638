"""The one boto3 client an S3 store uses, configured for few requests and no extra passes.

- Path-style addressing, so bucket names need no DNS and any S3-compatible server works.
- No payload signing and no request or response checksums: each is a full pass over every
  byte, which TLS already protects in transit.
- botocore's own retries off (one attempt): the store has a single retry budget of its own.
"""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config


def make_client(
    endpoint_url: str | None,
    region: str | None,
    aws_access_key_id: str | None,
    aws_secret_access_key: str | None,
    max_pool_connections: int,
) -> tuple[Any, str]:
    """The client and the signing region it uses (``region``, the boto3 chain's, else us-east-1)."""
    session = boto3.session.Session(
        aws_access_key_id=aws_access_key_id,
        aws_secret_access_key=aws_secret_access_key,
    )
    region = region or session.region_name or "us-east-1"
    config = Config(
        region_name=region,
        signature_version="s3v4",
        s3={"addressing_style": "path", "payload_signing_enabled": False},
        retries={"mode": "standard", "total_max_attempts": 1},
        max_pool_connections=max_pool_connections,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        connect_timeout=10,
        read_timeout=120,
        tcp_keepalive=True,
    )
    return session.client("s3", endpoint_url=endpoint_url, config=config), region
