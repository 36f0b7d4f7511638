"""The shard layer on real stores: local disk, memory, and the S3 servers over HTTP.

Every rule of docs/format.md §4 is checked where it is made: sizes before allocation, the
stored length exactly (shorter and longer objects), decoding, the hash; plus zero-copy reads
into caller buffers, the bounded window of ``get_many``, fresh keys, adopt, and stores that
are pickled and reopened in another process.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard

from tqsnap.engine.shard_checks import MAX_SHARD_SIZE, ZSTD_MAX_EXPANSION
from tqsnap.engine.shard_table import remap_items, select_shards
from tqsnap.engine.shards import Shards
from tqsnap.errors import CorruptShardError, ManifestError, MissingShardError
from tqsnap.format.keys import parse_shard_key
from tqsnap.format.manifest import Extent, Item, ShardRef
from tqsnap.format.shard import content_hash
from tqsnap.store import CountingStore, MemoryStore, ObjectStore, StoreSpec, open_store
from tqsnap.store.memory import forget_memory_store

MiB = 1 << 20
PATTERN = bytes(range(256)) * 64  # 16 KiB that zstd compresses well


@pytest.fixture(
    params=["local", "memory", *(pytest.param(name, marks=pytest.mark.s3) for name in ("seaweedfs", "moto"))]
)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    """A fresh, empty store of each kind: local disk, memory, and a bucket on each S3 server."""
    if request.param == "local":
        opened: ObjectStore = open_store(str(tmp_path / "repo"))
    elif request.param == "memory":
        name = f"shards-{uuid.uuid4().hex}"
        opened = open_store(f"memory://{name}")
        request.addfinalizer(lambda: forget_memory_store(name))
    else:
        url, options = request.getfixturevalue(f"{request.param}_endpoint").make_bucket()
        opened = open_store(url, **options)
    yield opened
    opened.close()


def _data(n: int) -> bytes:
    return (PATTERN * (n // len(PATTERN) + 1))[:n]


# --- round trips ---------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["raw", "zstd"])
def test_round_trip_each_codec(store: ObjectStore, codec: str) -> None:
    shards = Shards(store)
    data = _data(100_000)
    ref = shards.put([data[:1000], memoryview(data)[1000:]], codec)
    assert ref.hash == content_hash(data) and ref.size == len(data) and ref.codec == codec
    assert parse_shard_key(ref.key) == (ref.hash, parse_shard_key(ref.key)[1], codec)  # type: ignore[index]
    assert (ref.stored_size < ref.size) == (codec == "zstd")
    assert store.head(ref.key).size == ref.stored_size  # type: ignore[union-attr]
    assert bytes(shards.get(ref)) == data


def test_incompressible_zstd_shard_is_stored_raw(store: ObjectStore) -> None:
    data = os.urandom(50_000)
    ref = Shards(store).put([data], "zstd")
    assert ref.codec == "raw" and ref.stored_size == ref.size
    assert bytes(Shards(store).get(ref)) == data


def test_empty_shard_round_trips(store: ObjectStore) -> None:
    ref = Shards(store).put([], "raw")
    assert ref.size == 0 and bytes(Shards(store).get(ref)) == b""


@pytest.mark.parametrize("codec", ["raw", "zstd"])
def test_large_shard_read_in_parallel_ranges(store: ObjectStore, codec: str) -> None:
    shards = Shards(store, range_size=64 * 1024, threads=4)
    data = _data(1 * MiB + 123) if codec == "zstd" else os.urandom(1 * MiB + 123)
    ref = shards.put([data], codec)
    assert ref.codec == codec
    assert bytes(shards.get(ref)) == data
    buf = bytearray(ref.size)
    assert bytes(shards.get(ref, into=memoryview(buf))) == data and bytes(buf) == data


def test_every_upload_gets_a_fresh_key(store: ObjectStore) -> None:
    shards = Shards(store)
    a, b = shards.put([b"same bytes"], "raw"), shards.put([b"same bytes"], "raw")
    assert a.hash == b.hash and a.key != b.key
    assert store.exists(a.key) and store.exists(b.key)


# --- zero copy -----------------------------------------------------------------------------------


def test_raw_shard_is_read_straight_into_the_callers_buffer(store: ObjectStore) -> None:
    shards = Shards(store)
    data = os.urandom(70_000)
    ref = shards.put([data], "raw")
    buf = bytearray(len(data))
    view = shards.get(ref, into=memoryview(buf))
    assert bytes(buf) == data
    buf[0] ^= 0xFF  # the returned view is the caller's memory, not a copy of it
    assert view[0] == buf[0]


def test_zstd_shard_decodes_into_the_callers_buffer(store: ObjectStore) -> None:
    shards = Shards(store)
    data = _data(70_000)
    ref = shards.put([data], "zstd")
    buf = bytearray(len(data))
    shards.get(ref, into=memoryview(buf))
    assert bytes(buf) == data


def test_into_of_the_wrong_size_is_refused(store: ObjectStore) -> None:
    shards = Shards(store)
    ref = shards.put([b"12345"], "raw")
    with pytest.raises(ValueError, match=ref.key):
        shards.get(ref, into=memoryview(bytearray(4)))


# --- damaged objects -----------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["raw", "zstd"])
@pytest.mark.parametrize("into", [False, True])
def test_an_object_longer_than_stored_size_is_refused(store: ObjectStore, codec: str, into: bool) -> None:
    shards = Shards(store)
    data = _data(30_000)
    ref = shards.put([data], codec)
    store.put(ref.key, store.get(ref.key) + b"trailing garbage")
    with pytest.raises(CorruptShardError, match="longer than its stored_size") as err:
        shards.get(ref, into=memoryview(bytearray(ref.size)) if into else None)
    assert err.value.key == ref.key


class _SizeBlind(CountingStore):
    """A real store whose reads do not report the object's size, like a backend that cannot."""

    def get_into_sized(self, key: str, buf: memoryview, start: int = 0) -> tuple[int, int | None]:
        return self.get_into(key, buf, start), None


@pytest.mark.parametrize("ranged", [False, True])
def test_a_zero_copy_read_sees_a_longer_object_without_an_extra_request(store: ObjectStore, ranged: bool) -> None:
    counting = CountingStore(store)
    shards = Shards(counting, range_size=8 * 1024 if ranged else 8 * MiB, threads=4)
    ref = shards.put([os.urandom(30_000)], "raw")
    reads = -(-ref.stored_size // shards.range_size)
    counting.requests.clear()
    shards.get(ref, into=memoryview(bytearray(ref.size)))
    assert counting.requests["get"] == reads  # the replies told the size: no read past the end
    store.put(ref.key, store.get(ref.key) + b"!")
    with pytest.raises(CorruptShardError, match="longer than its stored_size"):
        shards.get(ref, into=memoryview(bytearray(ref.size)))


def test_a_store_that_cannot_tell_the_size_is_asked_past_the_end(store: ObjectStore) -> None:
    blind = _SizeBlind(store)
    shards = Shards(blind)
    ref = shards.put([os.urandom(30_000)], "raw")
    blind.requests.clear()
    shards.get(ref, into=memoryview(bytearray(ref.size)))
    assert blind.requests["get"] == 2  # the shard, then one byte past its end
    store.put(ref.key, store.get(ref.key) + b"!")
    with pytest.raises(CorruptShardError, match="longer than its stored_size"):
        shards.get(ref, into=memoryview(bytearray(ref.size)))


@pytest.mark.parametrize("codec", ["raw", "zstd"])
@pytest.mark.parametrize("into", [False, True])
def test_a_truncated_object_is_corrupt(store: ObjectStore, codec: str, into: bool) -> None:
    shards = Shards(store)
    ref = shards.put([_data(30_000)], codec)
    store.put(ref.key, store.get(ref.key)[:-7])
    with pytest.raises(CorruptShardError, match="truncated") as err:
        shards.get(ref, into=memoryview(bytearray(ref.size)) if into else None)
    assert err.value.key == ref.key


@pytest.mark.parametrize("into", [False, True])
def test_a_missing_object_is_a_missing_shard(store: ObjectStore, into: bool) -> None:
    shards = Shards(store)
    ref = shards.put([b"soon gone"], "raw")
    store.delete_many([ref.key])
    with pytest.raises(MissingShardError, match="referenced by run@3") as err:
        shards.get(ref, into=memoryview(bytearray(ref.size)) if into else None, snapshot="run@3")
    assert err.value.key == ref.key


@pytest.mark.parametrize("codec", ["raw", "zstd"])
def test_flipped_bytes_fail_the_hash(store: ObjectStore, codec: str) -> None:
    shards = Shards(store)
    data = _data(30_000)
    ref = shards.put([data], codec)
    if codec == "raw":
        damaged = bytearray(data)
        damaged[1234] ^= 1
    else:  # a valid frame of the declared size that decodes to other bytes
        damaged = bytearray(zstandard.ZstdCompressor(level=1).compress(b"x" + data[1:]))
        ref = dataclasses.replace(ref, stored_size=len(damaged))
    store.put(ref.key, bytes(damaged))
    with pytest.raises(CorruptShardError) as err:
        shards.get(ref)
    assert err.value.key == ref.key and err.value.expected == ref.hash
    if codec == "raw":  # verify=False skips only the hash
        assert bytes(shards.get(ref, verify=False)) == bytes(damaged)


def test_a_zstd_frame_that_declares_another_size_is_refused_before_decoding(store: ObjectStore) -> None:
    shards = Shards(store)
    data = _data(40_000)
    ref = shards.put([data], "zstd")
    other = zstandard.ZstdCompressor(level=1).compress(_data(40_001))
    store.put(ref.key, other)
    bad = dataclasses.replace(ref, stored_size=len(other))
    with pytest.raises(CorruptShardError, match="zstd frame of 40001 bytes"):
        shards.get(bad)


def test_garbage_in_a_zstd_shard_is_corrupt(store: ObjectStore) -> None:
    shards = Shards(store)
    ref = shards.put([_data(40_000)], "zstd")
    store.put(ref.key, os.urandom(ref.stored_size))
    with pytest.raises(CorruptShardError):
        shards.get(ref)


# --- declared sizes ------------------------------------------------------------------------------


def _absurd_refs(ref: ShardRef) -> list[ShardRef]:
    return [
        dataclasses.replace(ref, size=1 << 40, stored_size=1 << 40),  # 1 TiB, raw
        dataclasses.replace(ref, size=-1, stored_size=-1),
        dataclasses.replace(ref, stored_size=ref.size + 1),  # raw: sizes must agree
        dataclasses.replace(ref, size=True, stored_size=True),  # type: ignore[arg-type]
        dataclasses.replace(ref, size=MAX_SHARD_SIZE + 1, stored_size=MAX_SHARD_SIZE + 1),
        dataclasses.replace(ref, codec="zstd", stored_size=10, size=10 * ZSTD_MAX_EXPANSION + 1),
        dataclasses.replace(ref, codec="lz4"),
    ]


def test_absurd_declared_sizes_are_refused_before_any_request(store: ObjectStore) -> None:
    counting = CountingStore(store)
    shards = Shards(counting)
    ref = shards.put([b"honest"], "raw")
    counting.reset()
    for bad in _absurd_refs(ref):
        for attempt in (
            lambda bad=bad: shards.get(bad),
            lambda bad=bad: dict(shards.get_many([(0, bad)])),
            lambda bad=bad: Shards(store).adopt(shards, bad),
        ):
            with pytest.raises(ManifestError, match=ref.key):
                attempt()
    assert sum(counting.requests.values()) == 0


def test_a_terabyte_declaration_does_not_allocate(tmp_path: Path) -> None:
    """In a process whose address space is capped at 1 GiB, the refusal still comes typed."""
    script = f"""
import resource, dataclasses
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
from tqsnap.engine.shards import Shards
from tqsnap.errors import ManifestError
from tqsnap.store import open_store
shards = Shards(open_store({str(tmp_path)!r}))
ref = shards.put([b"x" * 100], "zstd")
for size in (1 << 40, 10**30):
    try:
        shards.get(dataclasses.replace(ref, size=size))
    except ManifestError as exc:
        assert ref.key in str(exc)
    else:
        raise SystemExit("not refused")
print("refused")
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "refused"


def test_an_honest_shard_larger_than_the_memory_cap_is_a_typed_error(tmp_path: Path) -> None:
    """Sizes within the limits, but more than the process may map: OutOfMemoryError naming the key."""
    script = f"""
import resource
from tqsnap.engine.shards import Shards
from tqsnap.errors import OutOfMemoryError
from tqsnap.store import open_store
shards = Shards(open_store({str(tmp_path)!r}))
ref = shards.put([bytes(600 << 20)], "raw")
used = int(next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmSize:"))) << 10
resource.setrlimit(resource.RLIMIT_AS, (used + (300 << 20),) * 2)  # room for small things only
try:
    shards.get(ref)
except OutOfMemoryError as exc:
    assert ref.key in str(exc), exc
    print("typed")
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "typed"


def test_the_limit_is_configurable_and_writers_respect_it(store: ObjectStore) -> None:
    small = Shards(store, max_shard_size=1000)
    with pytest.raises(ValueError, match="exceeds the 1000-byte limit"):
        small.put([os.urandom(1001)], "raw")
    ref = Shards(store).put([os.urandom(1001)], "raw")
    with pytest.raises(ManifestError, match=ref.key):
        small.get(ref)


# --- get_many ------------------------------------------------------------------------------------


class _Tracking(CountingStore):
    """A real store, wrapped to see how many shard reads have begun at any moment."""

    def __init__(self, inner: ObjectStore) -> None:
        super().__init__(inner)
        self.begun: set[str] = set()
        self.guard = threading.Lock()

    def get_into_sized(self, key: str, buf: memoryview, start: int = 0) -> tuple[int, int | None]:
        with self.guard:
            self.begun.add(key)
        return super().get_into_sized(key, buf, start)


def test_get_many_yields_in_order_within_a_bounded_window(store: ObjectStore) -> None:
    tracking = _Tracking(store)
    shards = Shards(tracking, threads=8)
    refs = [shards.put([os.urandom(10_000)], "raw") for _ in range(24)]
    expected = {ref.key: bytes(shards.get(ref)) for ref in refs}
    tracking.begun.clear()
    window = 3 * 10_000
    seen: list[int] = []
    most_ahead = 0
    for i, view in shards.get_many(list(enumerate(refs)), window_bytes=window):
        time.sleep(0.01)  # a slow consumer: the fetcher must not run ahead of the window
        with tracking.guard:
            ahead = len(tracking.begun) - len(seen)
        most_ahead = max(most_ahead, ahead)
        assert bytes(view) == expected[refs[i].key]
        seen.append(i)
    assert seen == list(range(24))
    assert 1 <= most_ahead <= 3  # never more than the window's worth of shards in flight


def test_get_many_with_caller_buffers_and_a_failure(store: ObjectStore) -> None:
    shards = Shards(store)
    refs = [shards.put([os.urandom(5000)], "raw") for _ in range(5)]
    bufs = {i: memoryview(bytearray(5000)) for i in range(5)}
    for i, view in shards.get_many(list(enumerate(refs)), into=bufs):
        assert view.obj is bufs[i].obj  # landed in the caller's buffer
    store.delete_many([refs[2].key])
    with pytest.raises(MissingShardError, match=refs[2].key):
        list(shards.get_many(list(enumerate(refs))))
    outcomes = dict(shards.get_many(list(enumerate(refs)), return_exceptions=True))
    assert isinstance(outcomes[2], MissingShardError)
    assert all(isinstance(outcomes[i], memoryview) for i in (0, 1, 3, 4))


def test_get_many_inline_runs_in_the_calling_thread(store: ObjectStore) -> None:
    shards = Shards(store, threads=0)
    refs = [shards.put([bytes([i]) * 100], "zstd") for i in range(4)]
    names: set[str] = set()

    def spy() -> Iterator[tuple[int, ShardRef]]:
        for pair in enumerate(refs):
            names.add(threading.current_thread().name)
            yield pair

    assert [bytes(v)[:1] for _, v in shards.get_many(spy())] == [bytes([i]) for i in range(4)]
    assert names == {threading.current_thread().name}


# --- adopt ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["raw", "zstd"])
def test_adopt_copies_to_a_fresh_key(store: ObjectStore, tmp_path: Path, codec: str) -> None:
    source = Shards(store)
    data = _data(50_000)
    ref = source.put([data], codec)
    target = Shards(open_store(str(tmp_path / "other")))
    new = target.adopt(source, ref)
    assert new.key != ref.key and (new.hash, new.size, new.stored_size, new.codec) == (
        ref.hash,
        ref.size,
        ref.stored_size,
        ref.codec,
    )
    assert bytes(target.get(new)) == data


def test_adopt_never_spreads_a_damaged_shard(store: ObjectStore, tmp_path: Path) -> None:
    source = Shards(store)
    ref = source.put([os.urandom(5000)], "raw")
    store.put(ref.key, os.urandom(5000))
    target_store = open_store(str(tmp_path / "other"))
    with pytest.raises(CorruptShardError, match=ref.key):
        Shards(target_store).adopt(source, ref)
    assert list(target_store.list("shards/")) == []


# --- serializable stores -------------------------------------------------------------------------

_READ_IN_CHILD = """
import pickle, sys
shards, ref = pickle.load(sys.stdin.buffer)
sys.stdout.write(bytes(shards.get(ref)).hex())
"""


def test_a_pickled_store_reopens_in_another_process(store: ObjectStore) -> None:
    shards = Shards(store, threads=3)
    data = _data(20_000)
    ref = shards.put([data], "zstd")
    if not store.shareable_across_processes:
        assert isinstance(store, MemoryStore)
        with pytest.raises(TypeError, match="cannot be reopened in another process"):
            pickle.dumps(shards)
        return
    blob = pickle.dumps((shards, ref))
    assert b"aws_secret_access_key" not in repr(store.spec()).encode() or "***" in repr(store.spec())
    out = subprocess.run(
        [sys.executable, "-c", _READ_IN_CHILD], input=blob, capture_output=True, timeout=120
    )
    assert out.returncode == 0, out.stderr.decode()
    assert bytes.fromhex(out.stdout.decode()) == data
    again = pickle.loads(blob)[0]
    assert again.threads == 3 and again.store.url == store.url


def test_store_spec_round_trips_through_json_and_hides_secrets() -> None:
    spec = StoreSpec("s3://bucket/prefix", {"aws_secret_access_key": "hunter2", "region": "eu-west-1"})
    assert StoreSpec.from_json(spec.to_json()) == spec
    assert "hunter2" not in repr(spec) and "eu-west-1" in repr(spec)


def test_s3_spec_carries_what_reopening_needs(s3_repo_url: tuple[str, dict[str, str]]) -> None:
    url, options = s3_repo_url
    store = open_store(url, **options, retries=2)
    spec = store.spec()
    assert spec.url == url
    assert spec.options["endpoint_url"] == options["endpoint_url"]
    assert spec.options["aws_secret_access_key"] == options["aws_secret_access_key"]
    assert options["aws_secret_access_key"] not in repr(spec) and options["aws_secret_access_key"] not in repr(store)
    reopened = pickle.loads(pickle.dumps(store))
    assert reopened.retry_policy.max_attempts == 3 and reopened.conditional_mode == store.conditional_mode
    store.put("probe", b"1")
    assert reopened.get("probe") == b"1"


# --- shard tables --------------------------------------------------------------------------------


def _ref(n: int) -> ShardRef:
    h = f"{n:032x}"
    return ShardRef(f"shards/{h[:2]}/{h}.{n:016x}", h, 10, 10)


def test_select_shards_keeps_only_the_shards_the_items_use() -> None:
    table = [_ref(i) for i in range(5)]
    a = Item("a", "bytes", 6, [Extent(3, 0, 4), Extent(1, 0, 2)])
    b = Item("b", "bytes", 3, [Extent(3, 4, 3)])
    refs, items = select_shards(table, [a, b])
    assert refs == [table[3], table[1]]
    assert [[tuple(dataclasses.astuple(e)) for e in it.extents] for it in items] == [
        [(0, 0, 4), (1, 0, 2)],
        [(0, 4, 3)],
    ]
    assert a.extents[0].shard == 3  # the originals are not changed
    assert remap_items([a], {3: 7, 1: 8})[0].extents == [Extent(7, 0, 4), Extent(8, 0, 2)]
