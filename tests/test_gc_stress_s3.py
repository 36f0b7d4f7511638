"""Stress: two writer processes commit non-stop while forget + gc loop beside them on SeaweedFS.

The repository runs with a grace of 6 s and a write deadline of 2 s, so in a minute (20 s in CI)
gc sweeps many generations of garbage and finalises many forgotten snapshots while saves are in
flight. Afterwards every visible snapshot must verify and restore byte-exact, nothing a live
snapshot references may have been deleted, and once the writers are quiet for longer than
grace, gc must leave no unreferenced shard behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import random
import time
from pathlib import Path
from typing import Any

import pytest
from grace_wait import sleep_past_grace

from tqsnap.engine import PackOptions, Repository, SnapshotWriter
from tqsnap.engine.gc import collect_garbage
from tqsnap.engine.retention import RetentionPolicy, forget
from tqsnap.errors import CommitConflictError, WriteDeadlineExceededError
from tqsnap.format.keys import (
    SHARDS_PREFIX,
    SNAPSHOTS_PREFIX,
    TOMBSTONES_PREFIX,
    parse_stream_key,
    snapshot_key,
)

logger = logging.getLogger(__name__)

GRACE, MAX_WRITE = 6.0, 2.0
DURATION = float(os.environ.get("TQSNAP_STRESS_SECONDS") or (20 if os.environ.get("CI") else 60))
PACK = PackOptions(chunk_size=64 * 1024, pack_size=32 * 1024, small_item=16 * 1024, upload_threads=4)


def _digest(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def _writer_main(url: str, options: dict[str, str], name: str, seconds: float, out: str, seed: int) -> None:
    """A writer process: save, save, save... to its own stream and to a shared one, logging each
    commit's ``write_id`` and item digests so the test can check restores byte-exact."""
    rng = random.Random(seed)
    repo = Repository.open(url, storage_options=options)
    stable = {f"stable{i}": rng.randbytes(rng.choice((3000, 20_000, 90_000))) for i in range(4)}
    stop = time.monotonic() + seconds
    counts = {"commits": 0, "deadline": 0, "conflict": 0}
    with open(out, "a") as log:
        while time.monotonic() < stop:
            stream = rng.choice((name, "shared"))
            for key in stable:
                if rng.random() < 0.2:
                    stable[key] = rng.randbytes(len(stable[key]))
            items = dict(stable)
            items |= {f"fresh{i}": rng.randbytes(rng.choice((500, 5000, 40_000))) for i in range(3)}
            try:
                w = SnapshotWriter.begin(repo, stream, "stress", options=PACK)
                packer = w.packer()
                for path, data in items.items():
                    packer.add(path, data)
                w.add_result(packer.finish())
                info = w.commit()
            except WriteDeadlineExceededError:
                counts["deadline"] += 1
                continue
            except CommitConflictError:
                counts["conflict"] += 1
                continue
            counts["commits"] += 1
            entry = {"write_id": info.write_id, "stream": info.stream, "seq": info.seq}
            entry["items"] = {p: _digest(d) for p, d in items.items()}
            log.write(json.dumps(entry) + "\n")
            log.flush()
            time.sleep(rng.uniform(0, 0.2))
        log.write(json.dumps({"counts": counts}) + "\n")


def _state(repo: Repository) -> tuple[dict[tuple[str, int], str], dict[tuple[str, int], float]]:
    manifests = {}
    for info in repo.store.list(SNAPSHOTS_PREFIX):
        sid = parse_stream_key(info.key, SNAPSHOTS_PREFIX)
        if sid:
            manifests[sid] = info.key
    stones = {}
    for info in repo.store.list(TOMBSTONES_PREFIX):
        sid = parse_stream_key(info.key, TOMBSTONES_PREFIX)
        if sid:
            stones[sid] = info.last_modified
    return manifests, stones


def _protected_refs(repo: Repository, margin: float) -> dict[tuple[str, int], set[str]]:
    """Shard keys of every manifest that is visible or tombstoned less than grace ago."""
    manifests, stones = _state(repo)
    now = repo.store.now()
    out = {}
    for sid in manifests:
        if sid in stones and now - stones[sid] > GRACE - margin:
            continue
        try:
            manifest = repo.load_manifest(*sid)
        except Exception:  # noqa: BLE001 - finalised between the listing and the read
            if sid in stones:
                continue
            raise
        out[sid] = {ref.key for ref in manifest.shards}
    return out


@pytest.mark.slow
def test_writers_forget_and_gc_run_together_without_breaking_a_snapshot(
    seaweedfs_endpoint, tmp_path: Path
) -> None:
    url, options = seaweedfs_endpoint.make_bucket()
    repo = Repository.init(url, grace=GRACE, max_write_duration=MAX_WRITE, storage_options=options)
    ctx = multiprocessing.get_context("spawn")
    logs = [tmp_path / f"writer{i}.jsonl" for i in range(2)]
    writers = [
        ctx.Process(target=_writer_main, args=(url, options, f"w{i}", DURATION, str(logs[i]), i), daemon=True)
        for i in range(2)
    ]
    for p in writers:
        p.start()

    deleted: set[str] = set()
    totals: dict[str, Any] = {"rounds": 0, "shards_deleted": 0, "finalised": 0, "tombstones": 0}
    stop = time.monotonic() + DURATION
    rng = random.Random(7)
    while time.monotonic() < stop or any(p.is_alive() for p in writers):
        policy = RetentionPolicy(keep_last=rng.randint(1, 3), keep_within=rng.choice((None, 2.0)))
        totals["tombstones"] += forget(repo, policy).tombstones_written
        report = collect_garbage(repo)
        deleted.update(report.deleted_shard_keys)
        totals["rounds"] += 1
        totals["shards_deleted"] += report.shards_deleted
        totals["finalised"] += len(report.manifests_finalised)
        # Nothing a visible or young-tombstoned snapshot references may be gone. gc runs only in
        # this process, so no delete can land between these listings.
        refs = _protected_refs(repo, margin=1.5)
        present = {i.key for i in repo.store.list(SHARDS_PREFIX)}
        for sid, keys in refs.items():
            assert keys <= present, (
                f"{sid} lost shards {sorted(keys - present)[:3]} during round {totals['rounds']}"
            )
            assert not keys & deleted, f"gc deleted shards {sorted(keys & deleted)[:3]} still used by {sid}"
        time.sleep(rng.uniform(0.2, 1.0))
    for p in writers:
        p.join(timeout=60)
        assert p.exitcode == 0, f"writer {p.name} failed with exit code {p.exitcode}"

    # Every visible snapshot verifies and restores exactly what its writer saved.
    expected: dict[str, dict[str, str]] = {}
    writer_counts = []
    for path in logs:
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            if "counts" in entry:
                writer_counts.append(entry["counts"])
            else:
                expected[entry["write_id"]] = entry["items"]
    visible = repo.snapshots()
    assert visible, "no snapshot survived"
    for info in visible:
        report = repo.verify(info.stream, info.seq)
        assert report.ok, f"{info.id}: missing {report.missing}, corrupt {report.corrupt}"
        restored = repo.reader(info.stream, info.seq).read_items()
        assert {p: _digest(v) for p, v in restored.items()} == expected[info.write_id], info.id

    # Quiet for longer than grace: one more gc leaves only shards live snapshots reference.
    sleep_past_grace(repo, grace=GRACE)
    final = collect_garbage(repo)
    deleted.update(final.deleted_shard_keys)
    refs = _protected_refs(repo, margin=0)
    live_keys = set().union(*refs.values())
    present = {i.key for i in repo.store.list(SHARDS_PREFIX)}
    assert present == live_keys, f"{len(present - live_keys)} unreferenced old shards left behind"
    assert not live_keys & deleted
    for sid in refs:
        assert repo.store.exists(snapshot_key(*sid))

    commits = sum(c["commits"] for c in writer_counts)
    logger.info(
        "stress over %.0fs: writers %s; gc rounds %d, shards deleted %d, snapshots finalised %d, "
        "tombstones %d; %d visible snapshots verified",
        DURATION,
        writer_counts,
        totals["rounds"],
        totals["shards_deleted"],
        totals["finalised"],
        totals["tombstones"],
        len(visible),
    )
    assert commits >= 10 * DURATION / 20, (commits, writer_counts)
    assert totals["shards_deleted"] > 0 and totals["finalised"] > 0 and totals["tombstones"] > 0, totals
