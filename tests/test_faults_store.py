"""The S3 store under injected faults, through the fault proxy in front of a real SeaweedFS.

What is promised: every request that is safe to repeat completes with the right bytes under a
few percent of faults of every kind; the retry settings a user gives botocore are the ones
used; a conditional create whose reply was lost never answers True or False by guessing.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from typing import Any

import pytest
from botocore.config import Config
from faultproxy import KINDS, ProxiedBucket

from tqsnap.errors import CommitOutcomeUnknownError, ObjectNotFoundError, StoreError
from tqsnap.store import open_store
from tqsnap.store.s3 import S3Store

MiB = 2**20
SMALL_PARTS = {"multipart_threshold": 5 * MiB, "multipart_chunk": 5 * MiB}
FAST = {"latency_s": 0.05, "late_s": 0.02}


def _open(bucket: ProxiedBucket, **options: Any) -> S3Store:
    store = open_store(bucket.url, **bucket.options, **{**SMALL_PARTS, **options})
    assert isinstance(store, S3Store)
    return store


def _direct(bucket: ProxiedBucket) -> S3Store:
    """The same bucket without the proxy: what really landed on the server."""
    store = open_store(bucket.url, **bucket.server.options(), **SMALL_PARTS)
    assert isinstance(store, S3Store)
    return store


def test_safe_requests_complete_under_five_percent_faults(faulty_s3: Callable[..., ProxiedBucket]) -> None:
    bucket = faulty_s3(seed=12, rate=0.05, classes=("get", "head", "list", "put", "multipart", "delete"), **FAST)
    store = _open(bucket, retries={"total_max_attempts": 10})
    rng = random.Random(3)
    objects = {f"shards/{i:03d}": rng.randbytes(rng.randrange(1, 40_000)) for i in range(24)}
    objects["shards/big"] = rng.randbytes(11 * MiB)  # three parts
    for key, data in objects.items():  # 25 puts, 1 of them multipart
        store.put(key, data)
    for key, data in objects.items():  # 25 whole gets, 25 ranged reads into buffers
        assert store.get(key) == data
        buf = bytearray(len(data) // 2)
        assert store.get_into(key, memoryview(buf), start=len(data) - len(buf)) == len(buf)
        assert buf == data[len(data) - len(buf) :]
    assert store.get_range("shards/big", 7 * MiB, 100) == objects["shards/big"][7 * MiB : 7 * MiB + 100]
    listed = list(store.list("shards/", page_size=7))  # 4 pages
    assert [o.key for o in listed] == sorted(objects)
    assert all(o.size == len(objects[o.key]) for o in listed)
    assert store.head("shards/big") is not None and store.head("shards/big").size == 11 * MiB  # type: ignore[union-attr]
    gone = sorted(objects)[::2]
    store.delete_many(gone)
    assert [o.key for o in store.list("shards/", page_size=5)] == sorted(set(objects) - set(gone))
    for key in gone:
        with pytest.raises(ObjectNotFoundError):
            store.get(key)

    assert bucket.proxy.total_injected() >= 3, bucket.proxy.injected
    # Late-applied CreateMultipartUpload requests may leave uploads behind; they are found and aborted.
    bucket.proxy.clear()
    for upload in store.list_uploads():
        store.abort_upload(upload)
    assert list(store.list_uploads()) == []


@pytest.mark.parametrize("kind", [k for k in KINDS if k not in ("latency",)])
def test_every_fault_kind_on_a_read_is_ridden_out(faulty_s3: Callable[..., ProxiedBucket], kind: str) -> None:
    bucket = faulty_s3(**FAST)
    store = _open(bucket)
    data = random.Random(1).randbytes(300_000)
    store.put("obj", data)
    bucket.proxy.script("get", kind, count=2)
    assert store.get("obj") == data
    bucket.proxy.script("get", kind, count=2)
    buf = bytearray(len(data))
    assert store.get_into("obj", memoryview(buf)) == len(data) and buf == data


def test_a_cut_body_resumes_with_a_range_from_where_it_stopped(faulty_s3: Callable[..., ProxiedBucket]) -> None:
    bucket = faulty_s3()
    store = _open(bucket)
    data = random.Random(2).randbytes(2 * MiB)
    store.put("obj", data)
    bucket.proxy.log.clear()
    bucket.proxy.script("get", "truncate")  # the first get_into reply ends at 1 MiB
    buf = bytearray(len(data))
    assert store.get_into("obj", memoryview(buf)) == len(data) and buf == data
    ranges = [r for klass, _, _, r, _ in bucket.proxy.log if klass == "get"]
    assert ranges == [f"bytes=0-{len(data) - 1}", f"bytes={MiB}-{len(data) - 1}"]

    bucket.proxy.log.clear()
    bucket.proxy.script("get", "truncate", count=2)  # whole-object get: cut, then cut again
    assert store.get("obj") == data
    ranges = [r for klass, _, _, r, _ in bucket.proxy.log if klass == "get"]
    assert ranges[:2] == [None, f"bytes=0-{len(data) - 1}"]
    assert ranges[2] == f"bytes={MiB}-{len(data) - 1}"


def test_a_part_reply_with_a_cut_etag_is_retried(faulty_s3: Callable[..., ProxiedBucket]) -> None:
    bucket = faulty_s3()
    store = _open(bucket)
    data = random.Random(4).randbytes(11 * MiB)
    bucket.proxy.script("multipart", "cut_etag", count=2)  # the create (no ETag to cut) and a part
    store.put("big", data)
    assert _direct(bucket).get("big") == data
    assert bucket.proxy.injected[("multipart", "cut_etag")] == 2
    assert list(store.list_uploads()) == []


def test_a_listing_resumes_from_its_continuation_token(faulty_s3: Callable[..., ProxiedBucket]) -> None:
    bucket = faulty_s3()
    store = _open(bucket)
    keys = [f"k/{i:02d}" for i in range(12)]
    direct = _direct(bucket)
    for key in keys:
        direct.put(key, b"x")
    bucket.proxy.log.clear()
    seen = []
    for n, info in enumerate(store.list("k/", page_size=4)):
        seen.append(info.key)
        if n == 5:  # in the middle of the second page: the third page's request fails twice
            bucket.proxy.script("list", "reset")
            bucket.proxy.script("list", "truncate")
    assert seen == keys
    paths = [path for klass, _, path, _, _ in bucket.proxy.log if klass == "list"]
    assert len(paths) == 5 and "continuation-token" not in paths[0]
    assert paths[2] == paths[3] == paths[4]  # the failed page was asked for again, not the listing


def test_aws_max_attempts_is_honoured(faulty_s3: Callable[..., ProxiedBucket], monkeypatch: pytest.MonkeyPatch) -> None:
    bucket = faulty_s3()
    _direct(bucket).put("obj", b"payload")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    store = _open(bucket)
    assert store.retry_policy.max_attempts == 1
    bucket.proxy.script("get", "reset")
    with pytest.raises(StoreError, match="obj") as err:
        store.get("obj")
    assert not isinstance(err.value, ObjectNotFoundError)
    assert bucket.proxy.requests["get"] == 1
    monkeypatch.delenv("AWS_MAX_ATTEMPTS")
    assert _open(bucket).retry_policy.max_attempts == 7
    assert os.environ.get("AWS_MAX_ATTEMPTS") is None


def test_retries_in_config_and_storage_options_are_honoured(faulty_s3: Callable[..., ProxiedBucket]) -> None:
    bucket = faulty_s3()
    _direct(bucket).put("obj", b"payload")
    by_config = _open(bucket, config=Config(retries={"total_max_attempts": 2}))
    bucket.proxy.script("get", "503", count=2)
    with pytest.raises(StoreError, match="SlowDown"):
        by_config.get("obj")
    bucket.proxy.script("get", "503", count=1)
    assert by_config.get("obj") == b"payload"
    by_option = _open(bucket, retries={"max_attempts": 3}, config=Config(retries={"total_max_attempts": 2}))
    assert by_option.retry_policy.max_attempts == 4  # the store option wins; max_attempts counts retries
    bucket.proxy.script("get", "500", count=3)
    assert by_option.get("obj") == b"payload"


def test_a_conditional_put_whose_reply_was_lost_is_unknown(faulty_s3: Callable[..., ProxiedBucket]) -> None:
    bucket = faulty_s3()
    store = _open(bucket)
    for kind in ("apply_then_drop", "apply_then_500"):
        bucket.proxy.script("conditional_put", kind)
        with pytest.raises(CommitOutcomeUnknownError) as err:
            store.put_if_absent(f"commit-{kind}", b"mine")
        assert err.value.key == f"commit-{kind}"
        assert _direct(bucket).get(f"commit-{kind}") == b"mine"  # it was applied: False would lose it
    # A fault that cannot have been applied is retried and answers definitely.
    for kind in ("reset", "503", "429"):
        bucket.proxy.script("conditional_put", kind)
        assert store.put_if_absent(f"commit-{kind}", b"mine") is True
    _direct(bucket).put("rival", b"theirs")
    bucket.proxy.script("conditional_put", "503")
    assert store.put_if_absent("rival", b"mine") is False
    # Lost, but the retry arrives first and wins: True is definite, the late copy is refused.
    slow = faulty_s3(late_s=0.5)
    late_store = _open(slow)
    slow.proxy.script("conditional_put", "apply_late")
    assert late_store.put_if_absent("late", b"mine") is True
    slow.proxy.close()
    assert _direct(slow).get("late") == b"mine"


def test_a_multipart_commit_whose_reply_was_lost_is_unknown(faulty_s3: Callable[..., ProxiedBucket]) -> None:
    bucket = faulty_s3()
    store = _open(bucket)
    data = random.Random(5).randbytes(6 * MiB)
    bucket.proxy.script("conditional_put", "apply_then_drop")  # the conditional complete
    with pytest.raises(CommitOutcomeUnknownError):
        store.put_if_absent("big-commit", data)
    assert _direct(bucket).get("big-commit") == data
    assert list(store.list_uploads()) == []


def test_incomplete_uploads_under_the_prefix_are_listed_and_aborted(s3_server: Any) -> None:
    url, options = s3_server.make_bucket("repo")
    store = open_store(url, **options)
    raw = s3_server.client()
    bucket = url.split("/")[2]
    before = store.now()
    inside = raw.create_multipart_upload(Bucket=bucket, Key="repo/shards/ab/left.1")["UploadId"]
    outside = raw.create_multipart_upload(Bucket=bucket, Key="elsewhere/x")["UploadId"]
    (pending,) = store.list_uploads()
    assert (pending.key, pending.upload_id) == ("shards/ab/left.1", inside)
    if s3_server.name == "moto":  # moto answers a fixed Initiated date (2010-11-10) for every upload
        assert pending.initiated < before
    else:
        assert abs(pending.initiated - before) < 60
    assert list(store.list_uploads("snapshots/")) == []
    store.abort_upload(pending)
    store.abort_upload(pending)  # already gone: not an error
    assert list(store.list_uploads()) == []
    remaining = raw.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert [(u["Key"], u["UploadId"]) for u in remaining] == [("elsewhere/x", outside)]
