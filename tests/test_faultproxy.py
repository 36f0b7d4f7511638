"""The fault proxy itself: it forwards faithfully, and each fault kind reaches the client as it would from a real network."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    IncompleteReadError,
    ResponseStreamingError,
)
from faultproxy import ProxiedBucket, classify
from urllib3.exceptions import ProtocolError

MiB = 2**20


def _through(bucket: ProxiedBucket) -> Any:
    """A plain boto3 client through the proxy that never retries, so every fault shows."""
    return boto3.client(
        "s3",
        endpoint_url=bucket.proxy.endpoint_url,
        aws_access_key_id=bucket.server.access_key,
        aws_secret_access_key=bucket.server.secret_key,
        region_name="us-east-1",
        config=Config(
            s3={"addressing_style": "path"},
            retries={"total_max_attempts": 1},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            read_timeout=10,
        ),
    )


def test_requests_are_classified() -> None:
    none: dict[str, str] = {}
    assert classify("GET", "/b/k", none) == "get"
    assert classify("GET", "/b?list-type=2&prefix=x", none) == "list"
    assert classify("GET", "/b?uploads", none) == "list"
    assert classify("HEAD", "/b/k", none) == "head"
    assert classify("PUT", "/b/k", none) == "put"
    assert classify("PUT", "/b/k", {"If-None-Match": "*"}) == "conditional_put"
    assert classify("PUT", "/b/k?partNumber=1&uploadId=u", none) == "multipart"
    assert classify("POST", "/b/k?uploads", none) == "multipart"
    assert classify("POST", "/b/k?uploadId=u", none) == "multipart"
    assert classify("POST", "/b/k?uploadId=u", {"If-None-Match": "*"}) == "conditional_put"
    assert classify("POST", "/b?delete", none) == "delete"
    assert classify("DELETE", "/b/k?uploadId=u", none) == "multipart"
    assert classify("PUT", "/b", none) == "other"


def test_forwards_faithfully(faulty_s3: Callable[..., ProxiedBucket]) -> None:
    bucket = faulty_s3()
    client = _through(bucket)
    body = bytes(range(256)) * 8192  # 2 MiB: Expect: 100-continue on the way up
    client.put_object(Bucket=bucket.bucket, Key="repo/a", Body=body)
    assert client.get_object(Bucket=bucket.bucket, Key="repo/a")["Body"].read() == body
    ranged = client.get_object(Bucket=bucket.bucket, Key="repo/a", Range="bytes=10-19")["Body"].read()
    assert ranged == body[10:20]
    assert client.head_object(Bucket=bucket.bucket, Key="repo/a")["ContentLength"] == len(body)
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket.bucket)["Contents"]]
    assert keys == ["repo/a"]
    assert bucket.proxy.requests == {"put": 1, "get": 2, "head": 1, "list": 1}
    assert bucket.proxy.total_injected() == 0


@pytest.mark.parametrize("kind,status", [("500", 500), ("503", 503), ("429", 429)])
def test_error_replies_are_not_applied(faulty_s3: Callable[..., ProxiedBucket], kind: str, status: int) -> None:
    bucket = faulty_s3()
    client = _through(bucket)
    bucket.proxy.script("put", kind)
    with pytest.raises(ClientError) as err:
        client.put_object(Bucket=bucket.bucket, Key="repo/x", Body=b"x")
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
    if kind == "503":
        assert err.value.response["Error"]["Code"] == "SlowDown"
    assert "Contents" not in bucket.server.client().list_objects_v2(Bucket=bucket.bucket)
    assert bucket.proxy.injected == {("put", kind): 1}


def test_resets_and_cut_bodies(faulty_s3: Callable[..., ProxiedBucket]) -> None:
    bucket = faulty_s3()
    client = _through(bucket)
    body = b"0123456789" * 100_000
    client.put_object(Bucket=bucket.bucket, Key="repo/a", Body=body)
    bucket.proxy.script("get", "reset")
    with pytest.raises(ConnectionClosedError):
        client.get_object(Bucket=bucket.bucket, Key="repo/a")
    for kind in ("truncate", "reset_mid_body"):
        bucket.proxy.script("get", kind)
        resp = client.get_object(Bucket=bucket.bucket, Key="repo/a")
        assert resp["ContentLength"] == len(body)
        with pytest.raises((IncompleteReadError, ResponseStreamingError, ProtocolError)):
            resp["Body"].read()
    assert client.get_object(Bucket=bucket.bucket, Key="repo/a")["Body"].read() == body


def test_lost_replies_are_applied(faulty_s3: Callable[..., ProxiedBucket]) -> None:
    bucket = faulty_s3(late_s=0.3)
    client = _through(bucket)
    direct = bucket.server.client()
    bucket.proxy.script("conditional_put", "apply_then_drop")
    with pytest.raises(ConnectionClosedError):
        client.put_object(Bucket=bucket.bucket, Key="repo/dropped", Body=b"d", IfNoneMatch="*")
    assert direct.get_object(Bucket=bucket.bucket, Key="repo/dropped")["Body"].read() == b"d"

    bucket.proxy.script("put", "apply_late")
    with pytest.raises(ConnectionClosedError):
        client.put_object(Bucket=bucket.bucket, Key="repo/late", Body=b"l")
    with pytest.raises(ClientError):  # not yet: the client gave up before the server saw it
        direct.head_object(Bucket=bucket.bucket, Key="repo/late")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            direct.head_object(Bucket=bucket.bucket, Key="repo/late")
            break
        except ClientError:
            time.sleep(0.05)
    assert direct.get_object(Bucket=bucket.bucket, Key="repo/late")["Body"].read() == b"l"

    bucket.proxy.script("put", "apply_then_500")
    with pytest.raises(ClientError):
        client.put_object(Bucket=bucket.bucket, Key="repo/applied", Body=b"a")
    assert direct.get_object(Bucket=bucket.bucket, Key="repo/applied")["Body"].read() == b"a"


def test_rate_is_seeded(faulty_s3: Callable[..., ProxiedBucket]) -> None:
    def run(seed: int) -> list[tuple[str, str]]:
        bucket = faulty_s3(seed=seed, rate=0.3, kinds=("500", "503", "429"))
        client = _through(bucket)
        for i in range(30):
            try:
                client.put_object(Bucket=bucket.bucket, Key=f"repo/{i}", Body=b"x")
            except ClientError:
                pass
        return sorted(bucket.proxy.injected.elements())

    first = run(7)
    assert first and first == run(7)
    assert 2 <= len(first) <= 20
