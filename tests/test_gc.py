"""gc: what it deletes, when, in which order, in how many requests, and what it refuses."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator

import pytest

import tqsnap
from tqsnap.engine import PackOptions, Repository, SnapshotWriter
from tqsnap.engine.gc import GarbageCollector, collect_garbage
from tqsnap.errors import ManifestError, UnsafeConfigError
from tqsnap.faces.api_retention import forget, gc
from tqsnap.faces.cli import main
from tqsnap.format.config import RepoConfig
from tqsnap.format.keys import CONFIG_KEY, SHARDS_PREFIX, shard_prefixes, snapshot_key
from tqsnap.store import MemoryStore, ObjectInfo, open_store

GRACE, MAX_WRITE = 100.0, 10.0
OPTS = PackOptions(upload_threads=1)


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class RecordingStore(MemoryStore):
    """A memory store that records lists (prefix, thread) and delete batches, in order."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock=clock)
        self.lists: list[tuple[str, str]] = []
        self.deletes: list[list[str]] = []
        self._rec = threading.Lock()

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        with self._rec:
            self.lists.append((prefix, threading.current_thread().name))
        if prefix.startswith(SHARDS_PREFIX):
            time.sleep(0.001)  # long enough that the pool really spreads the listing
        return super().list(prefix)

    def delete_many(self, keys) -> int:  # type: ignore[override]
        keys = list(keys)
        self.deletes.append(keys)
        return super().delete_many(keys)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(clock: Clock) -> RecordingStore:
    return RecordingStore(clock)


@pytest.fixture
def repo(store: RecordingStore) -> Repository:
    return Repository.init(store, grace=GRACE, max_write_duration=MAX_WRITE)


def save(repo: Repository, stream: str, **items: bytes) -> SnapshotWriter:
    w = SnapshotWriter.begin(repo, stream, "raw", options=OPTS)
    packer = w.packer()
    for path, data in items.items():
        packer.add(path, data)
    w.add_result(packer.finish())
    w.commit()
    return w


def upload_without_commit(repo: Repository, **items: bytes) -> list[str]:
    """What a crashed writer leaves: uploaded shards and no manifest."""
    w = SnapshotWriter.begin(repo, "s", "raw", options=OPTS)
    packer = w.packer()
    for path, data in items.items():
        packer.add(path, data)
    return [ref.key for ref in packer.finish().shards]


def shard_keys(repo: Repository) -> set[str]:
    return {i.key for i in repo.store.list(SHARDS_PREFIX)}


def referenced(repo: Repository, stream: str, seq: int) -> set[str]:
    return {ref.key for ref in repo.load_manifest(stream, seq).shards}


BIG = {"a": os.urandom(3_000_000), "b": os.urandom(2_000_000)}  # incompressible: stored raw


# --- what goes, and when --------------------------------------------------------------------------


def test_unreferenced_shards_survive_until_older_than_grace(repo: Repository, clock: Clock) -> None:
    save(repo, "s", **BIG)
    orphans = upload_without_commit(repo, c=os.urandom(2_000_000))
    clock.t += GRACE - 1
    report = collect_garbage(repo)
    assert report.shards_deleted == 0 and report.young_garbage == 1
    assert set(orphans) <= shard_keys(repo)
    clock.t += 2
    report = collect_garbage(repo)
    assert report.shards_deleted == 1
    assert report.deleted_shard_keys == orphans
    assert shard_keys(repo) == referenced(repo, "s", 1)
    assert repo.verify("s").ok


def test_report_counts_objects_bytes_and_requests(repo: Repository, clock: Clock) -> None:
    save(repo, "s", **BIG)
    orphans = upload_without_commit(repo, c=os.urandom(2_000_000), d=os.urandom(1_500_000))
    clock.t += GRACE + 1
    r = collect_garbage(repo)
    assert (r.shards_scanned, r.manifests_scanned, r.tombstones_scanned) == (4, 1, 0)
    assert r.objects_scanned == 5
    assert (
        r.shards_deleted == 2
        and r.bytes_freed == 3_500_000
        and sorted(r.deleted_shard_keys) == sorted(orphans)
    )
    assert r.live_manifests == 1 and r.referenced_shards == 2
    # 256 shard prefixes, snapshots/, tombstones/, and tqsnap-probe/ for a probe's leftovers
    assert r.requests["list"] == 256 + 3 and r.requests["get"] == 1 and r.requests["delete"] == 1
    assert r.requests["list_uploads"] == 1  # step 5 looks for incomplete uploads once
    doc = r.to_json()
    assert doc["objects_scanned"] == 5 and doc["requests"]["total"] == 262 and doc["dry_run"] is False


def test_dry_run_reports_the_same_and_deletes_nothing(
    repo: Repository, clock: Clock, store: RecordingStore
) -> None:
    save(repo, "s", x=b"1")
    save(repo, "s", x=b"2")
    forget(repo, keep_last=1)
    upload_without_commit(repo, y=b"3")
    clock.t += GRACE + 1
    before = {i.key for i in store.list()}
    dry = collect_garbage(repo, dry_run=True)
    assert {i.key for i in store.list()} == before and store.deletes == []
    real = collect_garbage(repo)
    assert (dry.shards_deleted, dry.bytes_freed, dry.manifests_finalised, dry.tombstones_deleted) == (
        real.shards_deleted,
        real.bytes_freed,
        real.manifests_finalised,
        real.tombstones_deleted,
    )
    assert dry.dry_run and real.shards_deleted == 2 and real.manifests_finalised == ["s@1"]


def test_a_forgotten_snapshot_keeps_its_shards_until_its_tombstone_is_older_than_grace(
    repo: Repository, clock: Clock
) -> None:
    save(repo, "s", x=b"x" * 100, keep=b"k" * 100)
    save(repo, "s", y=b"y" * 100, keep=b"k" * 100)
    clock.t += 10 * GRACE  # every shard is old already
    forget(repo, keep_last=1)
    report = collect_garbage(repo)
    assert report.shards_deleted == 0 and report.manifests_finalised == []
    clock.t += GRACE + 1
    report = collect_garbage(repo)
    assert report.manifests_finalised == ["s@1"] and report.tombstones_deleted == 1
    assert report.shards_deleted == 1  # x's pack; the shared one stays with s@2
    assert shard_keys(repo) == referenced(repo, "s", 2)
    assert repo.manifest_seqs("s") == [2] and repo.tombstoned_seqs("s") == set()


def test_manifests_are_deleted_before_their_tombstones(
    repo: Repository, clock: Clock, store: RecordingStore
) -> None:
    for i in range(3):
        save(repo, "s", x=b"%d" % i)
    forget(repo, keep_last=1)
    clock.t += GRACE + 1
    collect_garbage(repo)
    kinds = [{k.split("/")[0] for k in batch} for batch in store.deletes]
    assert kinds == [{"shards"}, {"snapshots"}, {"tombstones"}]


def test_the_newest_manifest_is_never_finalised_so_seqs_never_repeat(repo: Repository, clock: Clock) -> None:
    save(repo, "s", x=b"1")
    save(repo, "s", x=b"2")
    repo.write_tombstone("s", 2)  # by hand: forget itself never tombstones the newest
    clock.t += GRACE + 1
    report = collect_garbage(repo)
    assert report.manifests_finalised == []
    assert repo.manifest_seqs("s") == [1, 2]
    assert save(repo, "s", x=b"3").committed.seq == 3  # type: ignore[union-attr]


def test_tombstones_whose_manifest_is_gone_are_cleaned_up(repo: Repository, clock: Clock) -> None:
    for i in range(3):
        save(repo, "s", x=b"%d" % i)
    forget(repo, keep_last=1)
    clock.t += GRACE + 1
    repo.store.delete_many([snapshot_key("s", 1)])  # a gc that died between its two deletes
    report = collect_garbage(repo)
    assert report.tombstones_deleted == 2 and repo.tombstoned_seqs("s") == set()


def test_keys_under_shards_that_are_not_shard_names_are_left_alone(repo: Repository, clock: Clock) -> None:
    repo.store.put("shards/ab/README", b"not a shard")
    clock.t += GRACE + 1
    report = collect_garbage(repo)
    assert report.foreign_keys == 1 and report.shards_deleted == 0
    assert repo.store.exists("shards/ab/README")


def test_two_gc_runs_at_once_are_harmless(repo: Repository, clock: Clock) -> None:
    for i in range(4):
        save(repo, "s", x=b"%d" % i * 50)
    forget(repo, keep_last=1)
    upload_without_commit(repo, z=b"z" * 50)
    clock.t += GRACE + 1
    a, b = GarbageCollector(repo), GarbageCollector(repo)
    shards_a, shards_b = a.list_shards(), b.list_shards()
    refs_a, refs_b = a.list_references(), b.list_references()
    a.delete_shards(a.garbage(shards_a, refs_a))
    a.finalise(refs_a)
    b.delete_shards(b.garbage(shards_b, refs_b))
    b.finalise(refs_b)
    assert repo.verify("s").ok and shard_keys(repo) == referenced(repo, "s", 4)


class StallOnFirstManifestRead(MemoryStore):
    """A view of ``inner`` whose first manifest GET runs ``during`` first: a gc that stalls
    between listing manifests and reading them."""

    def __init__(self, inner: MemoryStore, during) -> None:  # type: ignore[no-untyped-def]
        super().__init__(clock=inner.clock)
        self._objects = inner._objects  # the same objects: a second client of one bucket
        self.during = during

    def get(self, key: str) -> bytes:
        if key.startswith("snapshots/") and self.during is not None:
            during, self.during = self.during, None
            during()
        return super().get(key)


def test_a_live_manifest_finalised_under_a_stalled_gc_makes_it_list_again(
    repo: Repository, clock: Clock
) -> None:
    # s@1 holds K; W starts from s@1 (reusing K); s@1 is forgotten; gc A lists manifests (s@1's
    # tombstone is young), then stalls; W commits s@3 with K; much later gc B finalises s@1.
    # When A resumes, s@1 is gone and s@3 was never listed: without a second listing A would
    # delete K from under the visible s@3.
    big = os.urandom(2_000_000)  # a shard of its own, so W reuses it at s@1's key
    save(repo, "s", k=big)
    clock.t += GRACE - 5
    w = SnapshotWriter.begin(repo, "s", "raw", options=OPTS)
    packer = w.packer()
    packer.add("k", big)
    packer.add("n", b"N" * 100)
    w.add_result(packer.finish())
    save(repo, "s", z=b"Z" * 100)
    forget(repo, keep_last=1)
    clock.t += 6

    def meanwhile() -> None:
        w.commit()
        clock.t += GRACE - 5
        assert collect_garbage(repo).manifests_finalised == ["s@1"]

    a = GarbageCollector(Repository(StallOnFirstManifestRead(repo.store, meanwhile), repo.config))  # type: ignore[arg-type]
    a.run()
    assert w.committed is not None and w.committed.stats["reused_shards"] == 1  # K, at s@1's key
    assert repo.manifest_seqs("s") == [2, 3]
    assert repo.verify("s", 3).ok


# --- how it lists and deletes ------------------------------------------------------------------------


def test_shards_are_listed_across_all_256_prefixes_in_parallel(
    repo: Repository, store: RecordingStore
) -> None:
    save(repo, "s", x=b"1")
    store.lists.clear()
    collect_garbage(repo, threads=8)
    shard_lists = [(p, t) for p, t in store.lists if p.startswith(SHARDS_PREFIX)]
    assert sorted(p for p, _ in shard_lists) == shard_prefixes()
    assert len({t for _, t in shard_lists}) > 1


def test_deletes_go_in_batches_of_at_most_1000_keys(
    repo: Repository, clock: Clock, store: RecordingStore
) -> None:
    for i in range(2500):
        digest = f"{i:032x}"
        store.put(f"shards/{digest[:2]}/{digest}.{i:x}", b"garbage")
    clock.t += GRACE + 1
    report = collect_garbage(repo)
    assert report.shards_deleted == 2500 and report.requests["delete"] == 3
    assert not shard_keys(repo)


# --- refusals -------------------------------------------------------------------------------------


def unsafe_repo(url: str) -> None:
    store = open_store(url)
    store.put_if_absent(CONFIG_KEY, RepoConfig("r", time.time(), grace=60, max_write_duration=60).encode())


def test_an_unsafe_grace_is_refused_and_nothing_is_deleted(tmp_path) -> None:
    url = str(tmp_path / "repo")
    unsafe_repo(url)
    store = open_store(url)
    store.put("shards/00/" + "0" * 32 + ".1", b"old garbage")
    os.utime(tmp_path / "repo" / "shards/00" / ("0" * 32 + ".1"), (0, 0))
    with pytest.raises(UnsafeConfigError, match="grace .* must be more than 2 \\* max_write_duration"):
        gc(url)
    assert store.exists("shards/00/" + "0" * 32 + ".1")


def test_gc_of_a_repository_object_with_an_unsafe_config_is_refused(clock: Clock) -> None:
    store = MemoryStore(clock=clock)
    repo = Repository(store, RepoConfig("r", clock.t, grace=5, max_write_duration=5))
    with pytest.raises(UnsafeConfigError):
        collect_garbage(repo)


def test_a_manifest_gc_cannot_parse_stops_it_before_any_delete(repo: Repository, clock: Clock) -> None:
    save(repo, "s", x=b"1")
    orphans = upload_without_commit(repo, y=b"2")
    repo.store.put(snapshot_key("s", 7), b"{not json")
    clock.t += GRACE + 1
    with pytest.raises(ManifestError, match="snapshots/s/00000000000000000007.json"):
        collect_garbage(repo)
    assert set(orphans) <= shard_keys(repo)


# --- the command ----------------------------------------------------------------------------------


def test_gc_on_local_disk_uses_file_mtime_as_last_modified(tmp_path) -> None:
    url = str(tmp_path / "repo")
    tqsnap.init_repo(url, grace="30s", max_write_duration="10s")
    tqsnap.save(url, {"w": b"w" * 100}, stream="s")
    repo = Repository.open(url)
    orphans = upload_without_commit(repo, y=b"y" * 100, z=b"z" * 100)
    assert collect_garbage(repo).shards_deleted == 0
    for key in orphans:
        os.utime(tmp_path / "repo" / key, (time.time() - 60, time.time() - 60))
    report = collect_garbage(repo)
    assert sorted(report.deleted_shard_keys) == sorted(orphans)
    assert tqsnap.verify(url, stream="s").ok


def test_cli_gc_prints_json_and_text_and_exits_zero(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    url = str(tmp_path / "repo")
    tqsnap.init_repo(url, grace="30s", max_write_duration="10s")
    tqsnap.save(url, {"w": b"w" * 100}, stream="s")
    assert main(["gc", url, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["shards_scanned"] == 1 and doc["shards_deleted"] == 0 and doc["grace_seconds"] == 30
    assert main(["gc", url, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "(dry run)" in out and "would delete 0 shards" in out


def test_cli_gc_exit_codes_for_unsafe_config_and_corrupt_manifest(
    tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    unsafe = str(tmp_path / "unsafe")
    unsafe_repo(unsafe)
    assert main(["gc", unsafe]) == 2
    assert "max_write_duration" in capsys.readouterr().err
    broken = str(tmp_path / "broken")
    tqsnap.init_repo(broken, grace="30s", max_write_duration="10s")
    open_store(broken).put(snapshot_key("s", 1), b"[]")
    assert main(["gc", broken]) == 1
    assert main(["gc", str(tmp_path / "missing")]) == 3


# --- a real S3 server --------------------------------------------------------------------------------


def test_gc_on_seaweedfs_deletes_in_batches_of_at_most_1000_keys(seaweedfs_endpoint) -> None:
    url, options = seaweedfs_endpoint.make_bucket()
    repo = Repository.init(url, grace="2.5s", max_write_duration="1s", storage_options=options)
    save(repo, "s", x=b"x" * 1000)
    from concurrent.futures import ThreadPoolExecutor

    names = [f"shards/{i % 256:02x}/{i % 256:02x}{i:030x}.{i:x}" for i in range(1500)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: repo.store.put(k, b"garbage"), names))
    calls: list[int] = []
    repo.store.client.meta.events.register(  # type: ignore[attr-defined]
        "before-parameter-build.s3.DeleteObjects",
        lambda params, **_: calls.append(len(params["Delete"]["Objects"])),
    )
    time.sleep(3.0)
    report = collect_garbage(repo)
    assert report.shards_deleted == 1500
    probe = [report.probe_objects_deleted] if report.probe_objects_deleted else []  # init's probe objects
    assert sorted(calls) == sorted([500, 1000, *probe])
    assert shard_keys(repo) == referenced(repo, "s", 1)
    assert repo.verify("s").ok


def test_gc_removes_what_a_store_probe_left_once_older_than_grace(repo: Repository, clock: Clock) -> None:
    """init probes with the writer's credentials, which may not delete: gc removes the leftovers."""
    save(repo, "s", **BIG)
    repo.store.put("tqsnap-probe/0123456789abcdef/small-1", b"x" * 10)
    assert collect_garbage(repo).probe_objects_deleted == 0, "a probe younger than grace may still be running"
    assert repo.store.exists("tqsnap-probe/0123456789abcdef/small-1")
    clock.t += GRACE + 1
    report = collect_garbage(repo)
    assert report.probe_objects_deleted == 1 and report.to_json()["probe_objects_deleted"] == 1
    assert not repo.store.exists("tqsnap-probe/0123456789abcdef/small-1")
    assert repo.snapshots("s"), "the repository itself is untouched"
