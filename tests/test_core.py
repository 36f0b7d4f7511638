"""The core promises: exact round trips, incremental saves, atomic commits, typed errors.

Repository-level tests run on every backend: memory, local disk, SeaweedFS and moto (the last
two real S3 servers on loopback). Race tests run on local disk and SeaweedFS only: moto's
conditional put is not atomic under races (DESIGN.md §6).
"""

from __future__ import annotations

import json
import math
import threading
import uuid

import pytest
import torch

import tqsnap
from tqsnap.engine import PackOptions, Repository, SnapshotWriter
from tqsnap.errors import (
    AccessDeniedError,
    BucketNotFoundError,
    CorruptShardError,
    InvalidNameError,
    KindMismatchError,
    ManifestError,
    MissingShardError,
    PickleNotAllowedError,
    SnapshotNotFoundError,
    StoreError,
    UnsupportedFormatError,
    WriteDeadlineExceededError,
)
from tqsnap.format.keys import SHARDS_PREFIX, snapshot_key
from tqsnap.store import CountingStore, MemoryStore, ObjectStore, open_store

SMALL = PackOptions(chunk_size=256 * 1024, pack_size=64 * 1024, small_item=32 * 1024, upload_threads=4)
BACKENDS = ["memory", "local", "seaweedfs", "moto"]


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path) -> ObjectStore:
    """A fresh, empty store of each backend."""
    kind = request.param
    if kind == "memory":
        return MemoryStore()
    if kind == "local":
        return open_store(str(tmp_path / "repo"))
    server = request.getfixturevalue(f"{kind}_endpoint")
    url, options = server.make_bucket()
    return open_store(url, **options)


@pytest.fixture(params=["local", "seaweedfs"])
def race_store(request: pytest.FixtureRequest, tmp_path) -> ObjectStore:
    """Stores whose conditional create is atomic under races."""
    if request.param == "local":
        return open_store(str(tmp_path / "repo"))
    url, options = request.getfixturevalue("seaweedfs_endpoint").make_bucket()
    return open_store(url, **options)


def every_kind_state() -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "model": {
            "weight": torch.randn(300, 200, generator=g),
            "bf16": torch.randn(17, 5, generator=g).to(torch.bfloat16),
            "half": torch.randn(9, generator=g).to(torch.float16),
            "scalar": torch.tensor(3.25),
            "empty": torch.empty(0, 4),
            "big": torch.randn(400_000, generator=g),  # split across several shards
        },
        "ints": {
            "i64": torch.randint(0, 50_000, (70_000,), generator=g),
            "u8": torch.arange(256, dtype=torch.uint8),
            "bool": torch.tensor([True, False, True]),
            "i8": torch.tensor([-3, 7], dtype=torch.int8),
        },
        "complex": torch.randn(4, 2, dtype=torch.complex64, generator=g),
        "strided": torch.arange(60.0).reshape(6, 10).t(),
        "step": 1234,
        "lr": 3e-4,
        "inf": float("inf"),
        "name": "run-42 ✓",
        "flag": None,
        "blob": b"\x00\x01binary",
        "mutable_blob": bytearray(b"xyz"),
        "nested": [1, (2, "three"), {"deep": [torch.ones(2, 2)]}],
        "int_keys": {0: "zero", 7: torch.zeros(1)},
    }


def assert_same(a, b, where: str = "state") -> None:
    assert type(a) is type(b), f"{where}: {type(a)} != {type(b)}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            assert_same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}/{i}")
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b)
    else:
        assert a == b, where


def test_round_trip_of_every_value_kind(store: ObjectStore) -> None:
    state = every_kind_state()
    info = tqsnap.save(store, state, stream="run-1", metadata={"step": 1234}, options=SMALL)
    assert info.seq == 1 and info.metadata == {"step": 1234}
    assert_same(state, tqsnap.load(store, stream="run-1"))
    assert tqsnap.verify(store, stream="run-1").ok


def test_loaded_tensors_are_writable_and_independent_of_the_store(store: ObjectStore) -> None:
    tqsnap.save(store, {"t": torch.arange(10), "packed": torch.ones(3)}, stream="s")
    back = tqsnap.load(store, stream="s")
    back["t"] += 1  # must not raise, and must not change what is stored
    assert torch.equal(tqsnap.load(store, stream="s")["t"], torch.arange(10))


@pytest.mark.parametrize("codec", ["raw", "zstd"])
def test_large_loaded_tensors_are_writable_and_outlive_the_load(store: ObjectStore, codec: str) -> None:
    # Above the size at which shards land in memory mappings rather than bytearrays.
    big = torch.arange(3 << 20, dtype=torch.int64)  # 24 MiB; zstd shrinks it well
    tqsnap.save(store, {"big": big, "small": torch.ones(4)}, stream="s", options=PackOptions(codec=codec))
    info = tqsnap.snapshots(store, "s")[-1]
    reader = tqsnap.open_repo(store).reader("s")
    big_item = next(i for p, i in reader.items.items() if "big" in p)
    assert {reader.manifest.shards[e.shard].codec for e in big_item.extents} == {codec}
    back = tqsnap.load(store, stream="s")
    import gc

    gc.collect()  # nothing but the tensors keeps the shard buffers alive now
    back["big"][::1000] += 1
    expected = big.clone()
    expected[::1000] += 1
    assert torch.equal(back["big"], expected) and torch.equal(back["small"], torch.ones(4))
    assert torch.equal(tqsnap.load(store, stream="s", snapshot=info.seq)["big"], big)


def test_second_save_of_5_percent_changed_state_uploads_only_changed_shards(store: ObjectStore) -> None:
    counting = CountingStore(store)
    tensors = {f"layer{i:02d}": torch.randn(64 * 1024) for i in range(40)}  # 40 x 256 KiB
    first = tqsnap.save(counting, tensors, stream="inc", options=SMALL)
    full_bytes = counting.bytes["put"]
    assert first.stats["new_shards"] == 40
    counting.reset()
    tensors["layer07"] = torch.randn(64 * 1024)
    tensors["layer31"] = torch.randn(64 * 1024)
    second = tqsnap.save(counting, tensors, stream="inc", options=SMALL)
    assert second.stats["new_shards"] == 2 and second.stats["reused_shards"] == 38
    assert counting.requests["put"] == 2, "only the two changed shards are PUT"
    assert counting.bytes["put"] <= 0.07 * full_bytes
    assert_same(tensors, tqsnap.load(store, stream="inc"))


def test_identical_tensors_in_one_snapshot_are_stored_once(store: ObjectStore) -> None:
    same = torch.randn(100_000)
    info = tqsnap.save(store, {"a": same, "b": same.clone()}, stream="s", options=SMALL)
    assert info.stats["reused_shards"] == 0
    assert info.stats["new_bytes"] == same.numel() * 4


def test_a_large_body_moves_to_a_body_shard_and_still_round_trips(store: ObjectStore) -> None:
    state = {f"k{i:05d}": torch.tensor([i]) for i in range(6000)}
    tqsnap.save(store, state, stream="many")
    manifest = Repository.open(store).load_manifest("many", 1)
    assert manifest.body_shard is not None and manifest.items == [] and manifest.extra == {}
    assert len(manifest.shards) < 10, "6000 tiny tensors are packed, not stored one per object"
    assert len(store.get(snapshot_key("many", 1))) < 10_000
    assert_same(state, tqsnap.load(store, stream="many"))


class FailingStore(CountingStore):
    """Raises on the n-th shard PUT, as a crashed network or process would."""

    def __init__(self, inner: ObjectStore, fail_at: int) -> None:
        super().__init__(inner)
        self.fail_at = fail_at

    def put(self, key: str, data) -> None:
        with self._lock:
            self.requests["attempt"] += 1
            n = self.requests["attempt"]
        if n == self.fail_at:
            raise StoreError(f"injected failure uploading {key}")
        super().put(key, data)


def test_interrupted_save_leaves_no_snapshot_and_the_next_save_succeeds(store: ObjectStore) -> None:
    state = {f"t{i}": torch.randn(70_000) for i in range(12)}
    failing = FailingStore(store, fail_at=5)
    with pytest.raises(StoreError, match="injected"):
        tqsnap.save(failing, state, stream="s", options=SMALL)
    assert tqsnap.snapshots(store) == []
    assert any(i.key.startswith(SHARDS_PREFIX) for i in store.list(SHARDS_PREFIX)), "partial upload happened"
    info = tqsnap.save(store, state, stream="s", options=SMALL)
    assert info.seq == 1
    assert_same(state, tqsnap.load(store, stream="s"))


def test_save_killed_with_sigkill_mid_upload_leaves_no_snapshot(tmp_path) -> None:
    import subprocess
    import sys
    import textwrap
    import time

    repo = tmp_path / "repo"
    script = textwrap.dedent(f"""
        import time, torch, tqsnap
        from tqsnap.engine import PackOptions
        from tqsnap.store import LocalStore
        class Slow(LocalStore):
            def put(self, key, data):
                super().put(key, data)
                time.sleep(0.2)
        state = {{f"t{{i}}": torch.randn(70_000) for i in range(40)}}
        tqsnap.save(Slow({str(repo)!r}), state, stream="s",
                    options=PackOptions(chunk_size=1 << 18, small_item=1 << 15, upload_threads=1))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.time() + 60
    while (
        time.time() < deadline and not list((repo / "shards").rglob("*"))
        if (repo / "shards").exists()
        else True
    ):
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    time.sleep(0.5)
    proc.kill()
    proc.wait()
    assert proc.returncode == -9, "the save finished before it could be killed"
    shards = [p for p in (repo / "shards").rglob("*") if p.is_file()]
    assert shards, "some shards were uploaded before the kill"
    assert tqsnap.snapshots(str(repo)) == []
    state = {"after": torch.ones(3)}
    assert tqsnap.save(str(repo), state, stream="s").seq == 1
    assert_same(state, tqsnap.load(str(repo), stream="s"))


def test_racing_writers_all_commit_in_a_linear_history(race_store: ObjectStore) -> None:
    Repository.init(race_store)
    results, errors = [], []

    def write(i: int) -> None:
        try:
            for j in range(3):
                info = tqsnap.save(race_store, {"w": torch.full((1000,), float(i)), "j": j}, stream="shared")
                results.append(info)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    infos = tqsnap.snapshots(race_store, "shared")
    assert [i.seq for i in infos] == list(range(1, 13)), "no commit lost, no seq skipped"
    assert {i.write_id for i in infos} == {r.write_id for r in results}
    for prev, cur in zip(infos, infos[1:], strict=False):
        assert cur.parent is not None and cur.parent.seq == prev.seq, (
            "each commit's parent is its predecessor"
        )
    for info in infos:
        assert tqsnap.verify(race_store, stream="shared", snapshot=info.seq).ok


class LostReplyStore(CountingStore):
    """The first manifest commit lands on the store, but the client sees a network error."""

    def __init__(self, inner: ObjectStore) -> None:
        super().__init__(inner)
        self.lost = 0

    def put_if_absent(self, key: str, data) -> bool:
        created = super().put_if_absent(key, data)
        if key.startswith("snapshots/") and self.lost == 0:
            self.lost += 1
            raise StoreError(f"connection reset while committing {key}")
        return created


def test_retry_after_a_lost_commit_reply_recognises_its_own_commit(store: ObjectStore) -> None:
    lossy = LostReplyStore(store)
    Repository.init(lossy)
    info = tqsnap.save(lossy, {"x": torch.arange(5)}, stream="s")
    assert lossy.lost == 1
    assert info.seq == 1
    assert [i.seq for i in tqsnap.snapshots(store, "s")] == [1], "no duplicate commit at seq 2"
    assert tqsnap.snapshots(store, "s")[0].write_id == info.write_id


def test_writer_past_its_deadline_refuses_to_commit() -> None:
    now = [1000.0]
    store = MemoryStore(clock=lambda: now[0])
    repo = Repository.init(store, grace=100, max_write_duration=10)
    writer = SnapshotWriter.begin(repo, "s", "state_dict")
    packer = writer.packer()
    packer.add("x", b"abc")
    writer.add_result(packer.finish())
    now[0] += 11
    with pytest.raises(WriteDeadlineExceededError, match="deadline"):
        writer.commit()
    assert repo.snapshots() == []


def test_writer_never_picks_a_tombstoned_parent(store: ObjectStore) -> None:
    tqsnap.save(store, {"a": torch.ones(10)}, stream="s")
    tqsnap.save(store, {"a": torch.ones(10) * 2}, stream="s")
    repo = Repository.open(store)
    repo.write_tombstone("s", 2)
    info = tqsnap.save(store, {"a": torch.ones(10) * 3}, stream="s")
    assert info.seq == 3 and info.parent == tqsnap.SnapshotId("s", 1)
    assert [i.seq for i in tqsnap.snapshots(store, "s")] == [1, 3]


def test_fork_into_a_new_stream_reuses_the_parents_shards(store: ObjectStore) -> None:
    state = {"w": torch.randn(100_000)}
    tqsnap.save(store, state, stream="main")
    repo = Repository.open(store)
    writer = SnapshotWriter.begin(repo, "fork", "state_dict", parent=tqsnap.SnapshotId("main", 1))
    packer = writer.packer()
    view, _ = __import__("tqsnap.adapters.tensors", fromlist=["x"]).tensor_bytes(state["w"])
    packer.add("w", view)
    writer.add_result(packer.finish())
    info = writer.commit()
    assert info.parent == tqsnap.SnapshotId("main", 1) and info.stats["new_shards"] == 0


def test_tags_resolve_and_are_immutable(store: ObjectStore) -> None:
    tqsnap.save(store, {"v": 1}, stream="s")
    tqsnap.save(store, {"v": 2}, stream="s")
    tqsnap.tag(store, "release", stream="s", snapshot=1)
    assert tqsnap.load(store, stream="s", snapshot="tag:release") == {"v": 1}
    with pytest.raises(FileExistsError):
        tqsnap.tag(store, "release", stream="s", snapshot=2)


# --- bad input ------------------------------------------------------------------------------


def _first_tensor_shard(store: ObjectStore) -> str:
    manifest = Repository.open(store).load_manifest("s", 1)
    return max(manifest.shards, key=lambda s: s.size).key


def test_corrupt_shard_is_named_by_load_and_verify(store: ObjectStore) -> None:
    tqsnap.save(store, {"w": torch.randn(100_000)}, stream="s")
    key = _first_tensor_shard(store)
    data = bytearray(store.get(key))
    data[100] ^= 0xFF
    store.put(key, data)
    with pytest.raises(CorruptShardError, match=key):
        tqsnap.load(store, stream="s")
    report = tqsnap.verify(store, stream="s")
    assert not report.ok and report.corrupt == [key] and report.missing == []


def test_truncated_shard_is_reported_as_corrupt(store: ObjectStore) -> None:
    tqsnap.save(store, {"w": torch.randn(100_000)}, stream="s")
    key = _first_tensor_shard(store)
    store.put(key, store.get(key)[:1000])
    with pytest.raises(CorruptShardError, match=key):
        tqsnap.load(store, stream="s")
    assert tqsnap.verify(store, stream="s").corrupt == [key]


def test_missing_shard_is_named_by_load_and_verify(store: ObjectStore) -> None:
    tqsnap.save(store, {"w": torch.randn(100_000), "b": torch.ones(3)}, stream="s")
    key = _first_tensor_shard(store)
    store.delete_many([key])
    with pytest.raises(MissingShardError, match=key):
        tqsnap.load(store, stream="s")
    report = tqsnap.verify(store, stream="s")
    assert report.missing == [key] and report.corrupt == []


def test_malformed_manifest_gets_a_typed_error_naming_it(store: ObjectStore) -> None:
    tqsnap.save(store, {"v": 1}, stream="s")
    key = snapshot_key("s", 1)
    store.put(key, b"{not json")
    with pytest.raises(ManifestError, match=key):
        tqsnap.load(store, stream="s")
    store.put(key, json.dumps({"format_version": "1.0", "kind": "state_dict"}).encode())
    with pytest.raises(ManifestError, match=key):
        tqsnap.load(store, stream="s")


def test_future_format_version_is_refused(store: ObjectStore) -> None:
    tqsnap.save(store, {"v": 1}, stream="s")
    key = snapshot_key("s", 1)
    doc = json.loads(store.get(key))
    doc["format_version"] = "3.0"  # 2.0 is the columnar-body manifest
    store.put(key, json.dumps(doc).encode())
    with pytest.raises(UnsupportedFormatError, match="upgrade tqsnap"):
        tqsnap.load(store, stream="s")


@pytest.mark.parametrize("name", ["a/b", "..", "a..b", "../x", "", ".hidden", "x" * 200])
def test_bad_stream_names_are_refused_before_anything_is_written(name: str) -> None:
    store = MemoryStore()
    with pytest.raises(InvalidNameError):
        tqsnap.save(store, {"v": 1}, stream=name)
    assert [i.key for i in store.list()] == ["tqsnap.json"]


def test_loading_a_missing_stream_or_seq_is_a_typed_error(store: ObjectStore) -> None:
    tqsnap.save(store, {"v": 1}, stream="s")
    with pytest.raises(SnapshotNotFoundError):
        tqsnap.load(store, stream="nope")
    with pytest.raises(SnapshotNotFoundError):
        tqsnap.load(store, stream="s", snapshot=7)


def test_pickle_needs_an_explicit_opt_in_on_save_and_on_load() -> None:
    store = MemoryStore()
    with pytest.raises(PickleNotAllowedError):
        tqsnap.save(store, {"obj": {1, 2, 3}}, stream="s")
    assert tqsnap.snapshots(store) == []
    tqsnap.save(store, {"obj": {1, 2, 3}}, stream="s", allow_pickle=True)
    with pytest.raises(PickleNotAllowedError, match="could run code"):
        tqsnap.load(store, stream="s")
    assert tqsnap.load(store, stream="s", allow_pickle=True) == {"obj": {1, 2, 3}}


def test_snapshot_of_another_kind_is_refused_by_the_state_loader() -> None:
    store = MemoryStore()
    repo = Repository.init(store)
    writer = SnapshotWriter.begin(repo, "s", "dcp")
    writer.commit()
    with pytest.raises(KindMismatchError, match="dcp"):
        tqsnap.load(store, stream="s")


def test_nonexistent_bucket_is_a_typed_error(seaweedfs_endpoint) -> None:
    store = open_store(f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/p", **seaweedfs_endpoint.options())
    with pytest.raises(BucketNotFoundError, match="no-such-bucket"):
        tqsnap.save(store, {"v": 1}, stream="s")


def test_wrong_credentials_are_a_typed_error(seaweedfs_auth_endpoint) -> None:
    url, options = seaweedfs_auth_endpoint.make_bucket()
    options = dict(options, aws_secret_access_key="wrong-secret")
    with pytest.raises(AccessDeniedError):
        tqsnap.save(url, {"v": 1}, stream="s", storage_options=options)


class FailedCommitStore(CountingStore):
    """The first manifest commit fails before reaching the store."""

    def __init__(self, inner: ObjectStore) -> None:
        super().__init__(inner)
        self.failed = 0

    def put_if_absent(self, key: str, data) -> bool:
        if key.startswith("snapshots/") and self.failed == 0:
            self.failed += 1
            raise StoreError(f"connection refused while committing {key}")
        return super().put_if_absent(key, data)


def test_failed_commit_request_is_retried_at_the_same_seq(store: ObjectStore) -> None:
    flaky = FailedCommitStore(store)
    Repository.init(flaky)
    info = tqsnap.save(flaky, {"x": torch.arange(5)}, stream="s")
    assert flaky.failed == 1 and info.seq == 1
    assert [i.seq for i in tqsnap.snapshots(store, "s")] == [1]
