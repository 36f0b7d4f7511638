"""The one boto3 client an S3 store uses, configured for few requests and no extra passes.

- Path-style addressing, so bucket names need no DNS and any S3-compatible server works.
- No payload signing and no request or response checksums: each is a full pass over every
  byte, which TLS already protects in transit.
- botocore's own retries off (one attempt): the store retries under its own
  :class:`~tqsnap.store.retry.RetryPolicy`, which reads the user's botocore retry settings
  (:func:`~tqsnap.store.retry.policy_from_botocore`), so one budget bounds the worst case
  instead of two retry layers multiplying.
- A botocore ``Config`` the user passes is merged over these defaults (timeouts, pool size,
  proxies, ...), except its retries, which the store's policy applies.
"""

from __future__ import annotations

from typing import Any

import boto3
import botocore.exceptions
import botocore.session
from botocore.config import Config

#: botocore makes one attempt; the store's policy makes the rest.
_ONE_ATTEMPT = Config(retries={"mode": "standard", "total_max_attempts": 1})


def make_client(
    endpoint_url: str | None,
    region: str | None,
    aws_access_key_id: str | None,
    aws_secret_access_key: str | None,
    max_pool_connections: int,
    config: Config | None = None,
    *,
    session_token: str | None = None,
    profile: str | None = None,
) -> tuple[Any, str, Any]:
    """The client, the signing region it uses (``region``, the boto3 chain's, else us-east-1),
    and the botocore session whose settings (``AWS_MAX_ATTEMPTS``, profiles) it was made from.

    ``profile`` names a section of the AWS config and credentials files (one per cluster, e.g.);
    a profile that does not exist is refused with a ``ValueError`` naming it."""
    core = botocore.session.Session()
    try:
        session = boto3.session.Session(
            aws_access_key_id=aws_access_key_id,
            aws_secret_access_key=aws_secret_access_key,
            aws_session_token=session_token,
            profile_name=profile,
            botocore_session=core,
        )
    except botocore.exceptions.ProfileNotFound:
        raise ValueError(
            f"the AWS profile {profile!r} is not in the AWS config or credentials files "
            "(~/.aws/config, ~/.aws/credentials, or $AWS_CONFIG_FILE / $AWS_SHARED_CREDENTIALS_FILE)"
        ) from None
    region = region or session.region_name or "us-east-1"
    merged = Config(
        region_name=region,
        signature_version="s3v4",
        s3={"addressing_style": "path", "payload_signing_enabled": False},
        max_pool_connections=max_pool_connections,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        connect_timeout=10,
        read_timeout=120,
        tcp_keepalive=True,
    )
    if config is not None:
        merged = merged.merge(config)
    merged = merged.merge(_ONE_ATTEMPT)
    return session.client("s3", endpoint_url=endpoint_url, config=merged), region, core
