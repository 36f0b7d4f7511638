"""Store behaviour beyond the shared contract: batching, multipart, S3 error mapping and retries.

The verbs every backend keeps (put, get, ranges, put-if-absent and its races, list, head,
delete, the clock) are :class:`tqsnap.testing.StoreContract`'s, run in
tests/test_store_contract.py. Here: listing and deleting past 1000 keys and multipart puts on
every backend (``store`` fixture: local, memory, S3 on SeaweedFS and moto), and S3-only
behaviour (multipart, error mapping, retries, OBS mode), each with a server taken directly.
Faults AWS produces but no local server does (409 ConditionalRequestConflict, 503 SlowDown,
OBS's 409 ObjectAlreadyExists) are injected with a botocore ``before-call`` hook that answers
one request in place of the server, while every other request reaches the real one.
"""

from __future__ import annotations

import io
import math
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from botocore.awsrequest import AWSResponse
from botocore.response import StreamingBody
from s3servers import S3Server

from tqsnap.errors import (
    AccessDeniedError,
    BucketNotFoundError,
    ConditionalWriteUnsupportedError,
    StoreError,
)
from tqsnap.store import LocalStore, MemoryStore, ObjectStore, open_store
from tqsnap.store.s3 import S3Store
from tqsnap.store.s3_io import BufferReader

MiB = 2**20
SMALL_PARTS = {"multipart_threshold": 5 * MiB, "multipart_chunk": 5 * MiB}
S3 = pytest.mark.s3
BACKENDS = ["local", "memory", pytest.param("seaweedfs", marks=S3), pytest.param("moto", marks=S3)]


def _s3_store(server: S3Server, **options: Any) -> S3Store:
    url, opts = server.make_bucket("repo")
    store = open_store(url, **opts, **{**SMALL_PARTS, **options})
    assert isinstance(store, S3Store)
    return store


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    if request.param == "local":
        s: ObjectStore = LocalStore(tmp_path / "repo")
    elif request.param == "memory":
        s = MemoryStore()
    else:
        s = _s3_store(request.getfixturevalue(f"{request.param}_endpoint"))
    yield s
    s.close()


def _pattern(n: int, seed: int = 0) -> bytes:
    """Non-repeating-looking bytes, so misplaced ranges and parts are caught."""
    block = bytes((i * 31 + seed * 17 + (i >> 8)) & 0xFF for i in range(65536))
    return (block * (n // len(block) + 1))[:n]


class Inject:
    """A botocore ``before-call`` hook that answers chosen requests with a fake error reply.

    ``replies`` are consumed one per matching request; once exhausted, requests go to the
    server. ``calls`` counts every matching request, faked or real.
    """

    def __init__(self, store: S3Store, operation: str, replies: list[tuple[int, str]]) -> None:
        self.replies = list(replies)
        self.calls = 0
        self.event = f"before-call.s3.{operation}"
        self.store = store
        store.client.meta.events.register(self.event, self)

    def __call__(self, **kwargs: Any) -> tuple[AWSResponse, dict[str, Any]] | None:
        self.calls += 1
        if not self.replies:
            return None
        status, code = self.replies.pop(0)
        http = AWSResponse("http://injected", status, {}, None)
        parsed = {
            "Error": {"Code": code, "Message": f"injected {code}"},
            "ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": {}},
        }
        return http, parsed

    def remove(self) -> None:
        self.store.client.meta.events.unregister(self.event, self)


# --- every backend ---------------------------------------------------------------------------


def test_many_keys_list_and_delete(store: ObjectStore, request: pytest.FixtureRequest) -> None:
    """Listing pages past 1000 keys; deletes go in batches of 1000, absent keys included.

    moto writes slowly (about 4 ms a PUT with the GIL shared by every request), so it lists
    fewer real keys; its batch count is still checked on 2001 keys, most of them absent.
    """
    backend = request.node.callspec.params["store"]
    n = 150 if backend == "moto" else 1_001
    keys = [f"shards/{i % 7}/{i:05d}" for i in range(n)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: store.put(k, b"v"), keys))
    store.put("keep/me", b"k")
    pages = Inject(store, "ListObjectsV2", []) if isinstance(store, S3Store) else None
    assert [o.key for o in store.list("shards/")] == sorted(keys)
    if pages is not None:
        assert pages.calls == math.ceil(n / 1000)
    absent = [f"shards/absent/{i}" for i in range(2_001 - n)]
    deletes = Inject(store, "DeleteObjects", []) if isinstance(store, S3Store) else None
    assert store.delete_many(iter(keys + absent)) == 3
    if deletes is not None:
        assert deletes.calls == 3
    assert list(store.list("shards/")) == []
    assert [o.key for o in store.list()] == ["keep/me"]
    assert store.delete_many([]) == 0


def test_multipart_put(store: ObjectStore) -> None:
    data = _pattern(12 * MiB + 12345, seed=7)
    store.put("big", memoryview(data))
    assert store.head("big").size == len(data)  # type: ignore[union-attr]
    assert store.get("big") == data
    # Ranges across the 5 MiB part boundaries.
    assert store.get_range("big", 5 * MiB - 100, 200) == data[5 * MiB - 100 : 5 * MiB + 100]
    buf = bytearray(len(data))
    assert store.get_into("big", memoryview(buf)) == len(data)
    assert buf == data


def test_multipart_put_if_absent(store: ObjectStore) -> None:
    first = _pattern(11 * MiB, seed=2)
    assert store.put_if_absent("big-cond", bytearray(first)) is True
    assert store.put_if_absent("big-cond", _pattern(11 * MiB, seed=5)) is False
    assert store.get("big-cond") == first


# --- S3 only ---------------------------------------------------------------------------------


def test_prefix_is_the_root(s3_server: S3Server) -> None:
    url, opts = s3_server.make_bucket("deep/root")
    store = open_store(url, **opts)
    assert isinstance(store, S3Store) and store.url == url
    store.put("a/b", b"1")
    raw = s3_server.client()
    bucket = url.split("/")[2]
    assert raw.get_object(Bucket=bucket, Key="deep/root/a/b")["Body"].read() == b"1"
    raw.put_object(Bucket=bucket, Key="deep/rootless", Body=b"outside")
    assert [o.key for o in store.list()] == ["a/b"]


def test_delete_many_reports_per_key_errors(moto_endpoint: S3Server) -> None:
    store = _s3_store(moto_endpoint)
    store.put("a", b"1")

    def fail_key(parsed: dict[str, Any], **kwargs: Any) -> None:
        parsed["Errors"] = [{"Key": "repo/a", "Code": "AccessDenied", "Message": "injected"}]

    store.client.meta.events.register("after-call.s3.DeleteObjects", fail_key)
    with pytest.raises(AccessDeniedError, match="repo/a"):
        store.delete_many(["a", "b"])


def test_conditional_complete_losing_race_aborts_upload(s3_server: S3Server) -> None:
    """A rival creates the key between our parts and our CompleteMultipartUpload."""
    store = _s3_store(s3_server)
    rival = s3_server.client()
    full_key = store.prefix + "/contested"

    def rival_commits(**kwargs: Any) -> None:
        rival.put_object(Bucket=store.bucket, Key=full_key, Body=b"rival")

    store.client.meta.events.register("before-call.s3.CompleteMultipartUpload", rival_commits)
    assert store.put_if_absent("contested", _pattern(7 * MiB)) is False
    assert store.get("contested") == b"rival"
    pending = rival.list_multipart_uploads(Bucket=store.bucket).get("Uploads", [])
    assert [u for u in pending if u["Key"] == full_key] == []


def test_multipart_failure_aborts_upload(moto_endpoint: S3Server) -> None:
    store = _s3_store(moto_endpoint, retries=0)
    inject = Inject(store, "UploadPart", [(400, "InvalidArgument")])
    with pytest.raises(StoreError):
        store.put("broken", _pattern(11 * MiB))
    assert inject.calls >= 1
    assert store.head("broken") is None
    pending = store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", [])
    assert pending == []


def test_conditional_conflict_409_is_retried(s3_server: S3Server) -> None:
    store = _s3_store(s3_server)
    inject = Inject(store, "PutObject", [(409, "ConditionalRequestConflict")] * 2)
    assert store.put_if_absent("commit", b"manifest") is True
    assert inject.calls == 3
    assert store.get("commit") == b"manifest"
    # A conflict that never clears surfaces as a StoreError naming the key.
    small = _s3_store(s3_server, retries=2)
    stuck = Inject(small, "PutObject", [(409, "ConditionalRequestConflict")] * 3)
    with pytest.raises(StoreError, match="ConditionalRequestConflict") as err:
        small.put_if_absent("commit2", b"m")
    assert "commit2" in str(err.value)
    assert stuck.calls == 3


def test_transient_errors_are_retried(seaweedfs_endpoint: S3Server) -> None:
    store = _s3_store(seaweedfs_endpoint)
    store.put("x", b"payload")
    get = Inject(store, "GetObject", [(503, "SlowDown"), (500, "InternalError")])
    assert store.get("x") == b"payload"
    assert get.calls == 3
    put = Inject(store, "PutObject", [(409, "ConditionalRequestConflict")])
    with pytest.raises(StoreError):  # a plain PUT never gets a conditional conflict: not retried
        store.put("y", b"")
    assert put.calls == 1


def test_get_into_resumes_a_broken_stream(seaweedfs_endpoint: S3Server) -> None:
    """A body that breaks halfway is re-requested from the first byte not yet received."""
    store = _s3_store(seaweedfs_endpoint)
    data = _pattern(3 * MiB, seed=9)
    store.put("stream", data)
    ranges: list[str] = []
    broken = [True]

    def record(params: dict[str, Any], **kwargs: Any) -> None:
        ranges.append(params["Range"])

    def break_once(parsed: dict[str, Any], **kwargs: Any) -> None:
        if broken.pop() if broken else False:
            real = parsed["Body"]
            head = real.read(MiB + 7)
            real.close()
            parsed["Body"] = StreamingBody(io.BytesIO(head), int(parsed["ContentLength"]))

    store.client.meta.events.register("provide-client-params.s3.GetObject", record)
    store.client.meta.events.register("after-call.s3.GetObject", break_once)
    buf = bytearray(len(data) - 100)
    assert store.get_into("stream", memoryview(buf), start=100) == len(buf)
    assert buf == data[100:]
    assert ranges == [f"bytes=100-{len(data) - 1}", f"bytes={100 + MiB + 7}-{len(data) - 1}"]


def test_nonexistent_bucket(s3_server: S3Server) -> None:
    store = open_store(f"s3://tqsnap-missing-{uuid.uuid4().hex[:8]}/repo", **s3_server.options())
    for call in (
        lambda: store.get("k"),
        lambda: store.put("k", b"v"),
        lambda: list(store.list()),
        lambda: store.head("k"),
        lambda: store.put_if_absent("k", b"v"),
    ):
        with pytest.raises(BucketNotFoundError, match="tqsnap-missing-"):
            call()


def test_create_bucket_option(moto_endpoint: S3Server) -> None:
    bucket = f"tqsnap-new-{uuid.uuid4().hex[:8]}"
    store = open_store(f"s3://{bucket}", **moto_endpoint.options(), create_bucket=True)
    store.put("k", b"v")
    assert open_store(f"s3://{bucket}", **moto_endpoint.options(), create_bucket=True).get("k") == b"v"


def test_wrong_credentials(seaweedfs_auth_endpoint: S3Server) -> None:
    url, good = seaweedfs_auth_endpoint.make_bucket()
    ok = open_store(url, **good)
    ok.put("k", b"v")
    assert ok.get("k") == b"v"
    bad = open_store(url, **{**good, "aws_secret_access_key": "wrong"})
    with pytest.raises(AccessDeniedError, match="bucket"):
        bad.get("k")
    with pytest.raises(AccessDeniedError):
        bad.put("k", b"v")
    stranger = open_store(url, **{**good, "aws_access_key_id": "nobody"})
    with pytest.raises(AccessDeniedError):
        list(stranger.list())


def test_conditional_mode_none(moto_endpoint: S3Server) -> None:
    url, opts = moto_endpoint.make_bucket()
    refusing = open_store(url, **opts, conditional_mode="none")
    assert refusing.atomic_create is False
    with pytest.raises(ConditionalWriteUnsupportedError, match="single_writer"):
        refusing.put_if_absent("k", b"v")
    single = open_store(url, **opts, conditional_mode="none", single_writer=True)
    assert single.atomic_create is False
    assert single.put_if_absent("k", b"v") is True
    assert single.put_if_absent("k", b"w") is False
    assert single.get("k") == b"v"


def test_obs_mode_sends_forbid_overwrite(seaweedfs_endpoint: S3Server) -> None:
    url, opts = seaweedfs_endpoint.make_bucket()
    store = open_store("obs://" + url[len("s3://") :], **opts)
    assert isinstance(store, S3Store) and store.conditional_mode == "obs" and store.url.startswith("obs://")
    sent: list[dict[str, str]] = []

    def capture(request: Any, **kwargs: Any) -> None:
        sent.append({k: v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()})

    store.client.meta.events.register("before-send.s3.PutObject", capture)
    assert store.put_if_absent("m", b"manifest") is True
    store.put("shard", b"bytes")
    conditional, plain = sent
    assert conditional.get("x-obs-forbid-overwrite") == "true"
    assert "If-None-Match" not in conditional
    assert "x-obs-forbid-overwrite" not in plain
    # The header is signed like any other x- header, so a real OBS would verify it.
    assert "x-obs-forbid-overwrite" in conditional["Authorization"]

    # SeaweedFS ignores the header, so OBS's refusal is injected.
    inject = Inject(store, "PutObject", [(409, "ObjectAlreadyExists"), (412, "PreconditionFailed")])
    assert store.put_if_absent("m", b"other") is False
    assert store.put_if_absent("m", b"other") is False
    assert inject.calls == 2
    assert store.get("m") == b"manifest"


def test_buffer_reader_does_not_copy() -> None:
    data = bytearray(_pattern(100_000))
    reader = BufferReader(data)
    assert len(reader) == 100_000
    chunk = reader.read(10)
    assert isinstance(chunk, memoryview) and chunk.obj is data
    data[0] ^= 0xFF
    assert chunk[0] == data[0]
    assert reader.tell() == 10
    reader.seek(0)
    assert bytes(reader.read()) == bytes(data)
    assert reader.read(5) == b""
    with pytest.raises(ValueError):
        BufferReader(memoryview(bytearray(100)).cast("B", (10, 10))[::2])


def test_invalid_options() -> None:
    with pytest.raises(ValueError, match="conditional_mode"):
        S3Store("b", conditional_mode="maybe")
    with pytest.raises(ValueError, match="multipart_chunk"):
        S3Store("b", multipart_chunk=1024)
