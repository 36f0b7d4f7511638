"""gc fanned out over threads and Ray tasks: the same result as one process, the same refusals.

The repository lives on local disk, which every Ray worker process reopens from the store's
spec; objects are aged with ``os.utime`` (LastModified is the file mtime on local disk).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from tqsnap.engine import PackOptions, Repository, SnapshotWriter
from tqsnap.engine.check import check_repository
from tqsnap.engine.copy_resume import find_young_orphans
from tqsnap.engine.fanout import split
from tqsnap.engine.fanout_sweep import ReferenceSet
from tqsnap.engine.gc import GarbageCollector
from tqsnap.errors import IncompleteListingError, JobError
from tqsnap.faces.api_retention import forget
from tqsnap.faces.cli import main
from tqsnap.format.keys import SHARDS_PREFIX, shard_key
from tqsnap.format.manifest import ShardRef
from tqsnap.store import MemoryStore

GRACE, MAX_WRITE = 60.0, 10.0
OPTS = PackOptions(upload_threads=1, small_item=1024)  # each 3 kB item is a shard of its own

pytestmark = pytest.mark.timeout(120)


def save(repo: Repository, stream: str, n: int, tag: int) -> None:
    w = SnapshotWriter.begin(repo, stream, "raw", options=OPTS)
    packer = w.packer()
    for i in range(n):
        packer.add(f"t{i}", os.urandom(3000) + b"%d" % tag)
    w.add_result(packer.finish())
    w.commit()


def age_everything(root: Path, seconds: float) -> None:
    old = time.time() - seconds
    for dirpath, _, files in os.walk(root):
        for name in files:
            os.utime(os.path.join(dirpath, name), (old, old))


def digest_of(kind: bytes, i: int) -> str:
    """A shard name's hash, spread over the 256 prefixes as real content hashes are."""
    return hashlib.md5(kind + b"%d" % i).hexdigest()


def plant(root: Path, key: str, data: bytes = b"x", age: float = 0.0) -> None:
    path = root / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if age:
        t = time.time() - age
        os.utime(path, (t, t))


def all_keys(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and ".tmp" not in p.parts}


@pytest.fixture
def mixed_repo(tmp_path: Path) -> Path:
    """Old garbage, young garbage, a young tombstone, finalisable snapshots, a foreign key."""
    root = tmp_path / "repo"
    repo = Repository.init(str(root), grace=GRACE, max_write_duration=MAX_WRITE)
    for i in range(4):
        save(repo, "a", 6, i)
        save(repo, "b", 3, i)
    forget(repo, keep_last=1)  # a@1..3 and b@1..3 tombstoned
    for i in range(300):  # old orphans spread over many prefixes, as a killed save leaves them
        plant(root, shard_key(digest_of(b"old", i), f"{i:016x}"), b"o" * (i + 1))
    age_everything(root, 3 * GRACE)  # all of the above is older than grace
    save(repo, "a", 2, 9)
    forget(repo, keep_last=1)  # a@4 tombstoned now: young, still protects its shards
    for i in range(40):  # young orphans: an uncommitted writer's uploads
        plant(root, shard_key(digest_of(b"young", i), f"{i:016x}"), b"y")
    plant(root, "shards/ab/not-a-shard", age=3 * GRACE)
    return root


def copies(root: Path, n: int) -> list[Path]:
    out = []
    for i in range(n):
        dst = root.parent / f"copy{i}"
        shutil.copytree(root, dst, symlinks=True)  # copy2: mtimes travel with the files
        out.append(dst)
    return out


def outcome(root: Path, **kw: object) -> tuple[dict[str, object], set[str]]:
    report = GarbageCollector(Repository.open(str(root)), **kw).run()  # type: ignore[arg-type]
    doc = report.to_json()
    for volatile in ("url", "server_time", "duration_s", "young_garbage_deletable_at", "young_tombstones_due_at"):
        doc.pop(volatile)
    doc["deleted_shard_keys"] = report.deleted_shard_keys
    return doc, all_keys(root)


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    ray = pytest.importorskip("ray")
    os.environ.update({"RAY_DEDUP_LOGS": "1", "RAY_AUTH_MODE": "disabled"})
    started = not ray.is_initialized()
    if started:
        try:
            ray.init(
                num_cpus=2,
                _node_ip_address="127.0.0.1",
                include_dashboard=False,
                logging_level="WARNING",
                log_to_driver=False,
            )
        except Exception as exc:  # noqa: BLE001 - Ray's startup timeout is a bare Exception
            pytest.skip(f"a local Ray cluster could not start on this machine: {exc}")
    yield
    if started:
        ray.shutdown()


def test_fanned_out_gc_deletes_exactly_what_one_process_deletes(mixed_repo: Path, ray_cluster: None) -> None:
    one, threads, on_ray, stepwise = copies(mixed_repo, 4)
    base_doc, base_keys = outcome(one, workers=1, executor="threads", threads=1)
    assert base_doc["shards_deleted"] > 300 and base_doc["young_garbage"] == 40  # the scene is what it claims
    assert base_doc["foreign_keys"] == 1 and base_doc["manifests_finalised"]
    for root, kw in ((threads, {"workers": 4, "executor": "threads"}), (on_ray, {"workers": 2, "executor": "ray"})):
        doc, keys = outcome(root, **kw)
        assert doc == base_doc, kw
        assert keys == base_keys, kw
    # The step-by-step form, which holds every listed key, decides the same garbage.
    gc = GarbageCollector(Repository.open(str(stepwise)), threads=1, dry_run=True)
    shards = gc.list_shards()
    assert [i.key for i in gc.garbage(shards, gc.list_references())] == base_doc["deleted_shard_keys"]
    for sid in ("a", "b"):
        assert Repository.open(str(on_ray)).verify(sid).ok


@pytest.mark.parametrize("executor", ["threads", "ray"])
def test_a_listing_error_in_any_worker_stops_gc_before_any_delete(
    mixed_repo: Path, ray_cluster: None, executor: str
) -> None:
    # A symlink inside shards/7f/ makes the real local store refuse that prefix's listing
    # (IncompleteListingError), in whichever worker process lists it.
    (mixed_repo / "shards" / "7f").mkdir(exist_ok=True)
    os.symlink("/etc", mixed_repo / "shards" / "7f" / "escape")
    before = all_keys(mixed_repo)
    gc = GarbageCollector(Repository.open(str(mixed_repo)), workers=2, executor=executor)
    with pytest.raises(IncompleteListingError, match="shards/7f/"):
        gc.run()
    assert all_keys(mixed_repo) == before  # not one of the 300+ old orphans elsewhere was deleted


def test_ray_needs_a_store_other_processes_can_open() -> None:
    repo = Repository.init(MemoryStore(), grace=GRACE, max_write_duration=MAX_WRITE)
    with pytest.raises(JobError, match="in-process only"):
        GarbageCollector(repo, executor="ray")
    with pytest.raises(JobError, match="executor 'dask'"):
        GarbageCollector(repo, executor="dask")
    assert GarbageCollector(repo).executor == "threads"  # auto: a memory store stays in-process


def test_references_cost_8_bytes_each_and_answer_membership() -> None:
    keys = [shard_key(f"{i:032x}", f"{i:016x}") for i in range(10_000)]
    refs = ReferenceSet.of_keys(keys + keys[:10])  # duplicates count once
    assert len(refs) == 10_000 and refs.nbytes == 80_000
    assert all(k in refs for k in keys[::97])
    assert shard_key(f"{1:032x}", f"{2:016x}") not in refs


def test_the_sweep_does_not_hold_every_listed_key(tmp_path: Path) -> None:
    """Peak memory of the streamed sweep stays far below what holding the listing takes."""
    root = tmp_path / "repo"
    repo = Repository.init(str(root), grace=GRACE, max_write_duration=MAX_WRITE)
    for i in range(20_000):  # young unreferenced shards: counted, never kept
        plant(root, shard_key(digest_of(b"mem", i), f"{i:016x}"), b"")
    gc = GarbageCollector(repo, workers=2, executor="threads", dry_run=True)
    refs = gc.list_references()
    tracemalloc.start()
    try:
        garbage = gc.sweep(refs)
        _, streamed = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        held = gc.list_shards()
        _, holding = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert garbage == [] and gc.report.young_garbage == 20_000 and len(held) == 20_000
    assert streamed * 5 < holding, (streamed, holding)


def test_prefixes_are_dealt_round_robin_into_pieces() -> None:
    prefixes = [f"{SHARDS_PREFIX}{i:02x}/" for i in range(256)]
    pieces = split(prefixes, 12)
    assert len(pieces) == 12 and sorted(p for piece in pieces for p in piece) == prefixes
    assert max(map(len, pieces)) - min(map(len, pieces)) <= 1
    assert split(prefixes[:3], 8) == [[prefixes[0]], [prefixes[1]], [prefixes[2]]]


def test_fanned_out_check_finds_the_same_damage_as_one_process(mixed_repo: Path, ray_cluster: None) -> None:
    repo = Repository.open(str(mixed_repo))
    keys = sorted(ref.key for ref in repo.load_manifest("a", repo.resolve("a").seq).shards)
    (mixed_repo / keys[0]).unlink()  # missing
    (mixed_repo / keys[1]).write_bytes(b"short")  # wrong size
    one = check_repository(repo, workers=1, executor="threads").to_json()
    assert {b["key"]: b["problem"].split()[0] for b in one["bad_shards"]} == {keys[0]: "missing", keys[1]: "stored"}
    assert check_repository(repo, workers=4, executor="threads").to_json() == one
    assert check_repository(repo, workers=2, executor="ray").to_json() == one


def test_cli_gc_and_check_take_workers_and_executor(mixed_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(mixed_repo), "--workers", "3", "--executor", "threads", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    assert main(["gc", str(mixed_repo), "--workers", "3", "--executor", "threads", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["shards_deleted"] > 300
    assert main(["gc", str(mixed_repo), "--workers", "0"]) == 2  # bad usage


def orphan_scene(tmp_path: Path) -> tuple[Repository, list[ShardRef], float]:
    root = tmp_path / "dst"
    repo = Repository.init(str(root), grace=GRACE, max_write_duration=MAX_WRITE)  # reuse window 40 s
    wanted = []
    for i in range(400):
        h = digest_of(b"copy", i)
        wanted.append(ShardRef(shard_key(h, "0" * 16, "zstd"), h, 100, 10, "zstd"))
        kind = i % 5
        if kind == 0:  # young and right: reusable
            plant(root, shard_key(h, f"{i:016x}", "zstd"), b"z" * 10, age=5)
        elif kind == 1:  # right size, older than the window
            plant(root, shard_key(h, f"{i:016x}", "zstd"), b"z" * 10, age=GRACE)
        elif kind == 2:  # young, wrong size
            plant(root, shard_key(h, f"{i:016x}", "zstd"), b"z" * 11, age=5)
        elif kind == 3:  # young, wrong codec
            plant(root, shard_key(h, f"{i:016x}"), b"z" * 10, age=5)
        # kind 4: nothing there
    plant(root, shard_key(digest_of(b"copy", 0), "f" * 16, "zstd"), b"z" * 10, age=1)  # a younger second copy
    return repo, wanted, repo.store.now()


def test_copy_finds_the_same_young_orphans_by_prefix_sweep_as_by_one_list_per_hash(tmp_path: Path) -> None:
    repo, wanted, started = orphan_scene(tmp_path)
    one_by_one = find_young_orphans(repo.store, repo.config, wanted, started, sweep=False)
    assert len(one_by_one) == 80 and one_by_one[digest_of(b"copy", 0)].key.endswith("f" * 16 + ".zstd")
    assert find_young_orphans(repo.store, repo.config, wanted, started, sweep=True, executor="threads") == one_by_one


def test_copy_orphan_sweep_on_ray_finds_the_same(tmp_path: Path, ray_cluster: None) -> None:
    repo, wanted, started = orphan_scene(tmp_path)
    one_by_one = find_young_orphans(repo.store, repo.config, wanted, started, sweep=False)
    assert find_young_orphans(repo.store, repo.config, wanted, started, sweep=True, executor="ray", workers=2) == one_by_one


class DeleteRecorder(MemoryStore):
    def __init__(self) -> None:
        super().__init__(clock=lambda: 1_000_000.0)
        self.batches: list[list[str]] = []

    def delete_many(self, keys) -> int:  # type: ignore[no-untyped-def, override]
        self.batches.append(list(keys))
        return super().delete_many(self.batches[-1])


def test_each_delete_batch_spreads_over_the_prefixes_instead_of_filling_one() -> None:
    store = DeleteRecorder()
    repo = Repository.init(store, grace=GRACE, max_write_duration=MAX_WRITE)
    for i in range(3000):
        store._objects[shard_key(digest_of(b"g", i), f"{i:016x}")] = (b"g", 1_000_000.0 - 2 * GRACE)
    report = GarbageCollector(repo, executor="threads").run()
    assert report.shards_deleted == 3000 and report.deleted_shard_keys == sorted(report.deleted_shard_keys)
    shard_batches = [b for b in store.batches if b[0].startswith(SHARDS_PREFIX)]
    assert [len(b) for b in shard_batches] == [1000, 1000, 1000]
    for batch in shard_batches:  # ~4 keys per prefix, never 1000 of one (S3 limits writes per prefix)
        assert len({k[:10] for k in batch}) > 200
