"""A planted manifest cannot make an honest save commit a snapshot that cannot be restored.

Whoever can PUT into the bucket (a writer without delete permission) can write a manifest at
the head of a stream that maps known shard hashes to keys that do not exist, or to an object
of the wrong size under a well-formed name. The next honest save takes that manifest as its
parent; it must confirm every shard it reuses and upload the content again where a reference
is bad, or refuse to commit. The cost is measured in requests per incremental save.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import tqsnap
from tqsnap.adapters.state_dict import save_state
from tqsnap.engine import Repository, ShardPacker, SnapshotWriter
from tqsnap.engine.shard_confirm import CONFIRMED
from tqsnap.errors import MissingShardError
from tqsnap.format.keys import shard_key, snapshot_key
from tqsnap.format.manifest import Manifest, ShardRef
from tqsnap.store import CountingStore, ObjectStore, open_store

STATE = {f"layer{i}": bytes([i]) * (1_100_000 + i) for i in range(6)}  # over 1 MiB: a shard each


def _plant(repo: Repository, seq: int, bad: dict[int, str]) -> Manifest:
    """Copy the head manifest to ``seq`` with the shards at ``bad``'s indexes re-pointed:
    ``"absent"`` to a well-formed key nobody uploaded, ``"short"`` to a short object the
    attacker uploads under a well-formed key."""
    head = repo.load_manifest("s", seq - 1)
    shards = list(head.shards)
    for i, how in bad.items():
        ref = shards[i]
        key = shard_key(ref.hash, f"{0xBAD0 + i:016x}", ref.codec)
        if how == "short":
            repo.store.put(key, b"not the shard")
        shards[i] = replace(ref, key=key)
    planted = replace(head, seq=seq, write_id="f" * 32, shards=shards)
    planted.parent = head.id
    repo.store.put(snapshot_key("s", seq), planted.encode())
    return planted


def _fresh_process_cache() -> None:
    CONFIRMED.clear()  # what a new process starts with


def _restores(repo: Repository, seq: int) -> None:
    assert repo.verify("s", seq).ok
    assert tqsnap.load(repo, stream="s", snapshot=seq) == STATE


@pytest.fixture(params=["local", pytest.param("seaweedfs", marks=pytest.mark.s3)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return open_store(str(tmp_path / "repo"))
    url, options = request.getfixturevalue("seaweedfs_endpoint").make_bucket("repo")
    return open_store(url, **options)


def test_an_honest_save_after_a_planted_head_uploads_the_bad_shards_again(store: ObjectStore) -> None:
    repo = Repository.init(store)
    save_state(repo, STATE, stream="s")
    planted = _plant(repo, 2, {0: "absent", 3: "short"})
    _fresh_process_cache()
    info = save_state(repo, STATE, stream="s")
    assert info.seq == 3 and info.parent is not None and info.parent.seq == 2
    written = repo.load_manifest("s", 3)
    bogus = {planted.shards[0].key, planted.shards[3].key}
    assert not bogus & {ref.key for ref in written.shards}, "no bad reference is carried forward"
    assert info.stats["new_shards"] == 2 and info.stats["reused_shards"] == len(STATE) - 2
    _restores(repo, 3)


def test_a_packer_with_its_own_index_from_a_planted_parent_cannot_commit(tmp_path: Path) -> None:
    """A packer that builds its own reuse index (as a DCP rank does) bypasses begin's check;
    the commit refuses, names the key, and commits nothing."""
    repo = Repository.init(str(tmp_path / "repo"))
    save_state(repo, STATE, stream="s")
    planted = _plant(repo, 2, {1: "absent"})
    _fresh_process_cache()
    writer = SnapshotWriter.begin(repo, "s", "state_dict")
    packer = ShardPacker(repo.store, {ref.hash: ref for ref in planted.shards})
    for path, value in sorted(STATE.items()):
        packer.add(path, value)
    writer.add_result(packer.finish())
    with pytest.raises(MissingShardError) as err:
        writer.commit()
    assert err.value.key == planted.shards[1].key and "Nothing was committed" in str(err.value)
    assert repo.manifest_seqs("s") == [1, 2]


def test_reused_shards_cost_one_head_each_per_process_then_nothing(tmp_path: Path) -> None:
    counting = CountingStore(open_store(str(tmp_path / "repo")))
    repo = Repository.init(counting)
    save_state(repo, STATE, stream="s")
    counts: list[dict[str, Any]] = []
    _fresh_process_cache()
    for n in range(3):
        counting.reset()
        changed = dict(STATE, layer0=bytes([n + 100]) * 1_100_000)
        save_state(repo, changed, stream="s")
        counts.append(dict(counting.requests))
    shards = len(repo.load_manifest("s", 1).shards)
    # A new process confirms every parent shard once; after that its own uploads are known.
    assert counts[0].get("head", 0) == shards
    assert counts[1].get("head", 0) == 0 and counts[2].get("head", 0) == 0
    print(f"\nrequests per incremental save ({shards} shards, 1 changed): {counts}")


def test_a_size_check_is_made_against_the_declared_stored_size(tmp_path: Path) -> None:
    repo = Repository.init(str(tmp_path / "repo"))
    save_state(repo, STATE, stream="s")
    head = repo.load_manifest("s", 1)
    ref = head.shards[2]
    bigger = ShardRef(ref.key, ref.hash, ref.size, ref.stored_size + 1, ref.codec)
    _plant(repo, 2, {})
    planted = replace(repo.load_manifest("s", 2), shards=[*head.shards[:2], bigger, *head.shards[3:]])
    repo.store.put(snapshot_key("s", 2), planted.encode())
    _fresh_process_cache()
    info = save_state(repo, STATE, stream="s")
    assert info.stats["new_shards"] == 1
    _restores(repo, info.seq)


def test_a_confirmation_is_trusted_for_half_the_grace_period_only(tmp_path: Path) -> None:
    """After grace/2 a key is confirmed again: gc may delete a key once it has been
    unreferenced for longer than grace, and the cache must never outlive that."""
    counting = CountingStore(open_store(str(tmp_path / "repo")))
    repo = Repository.init(counting, grace=2.0, max_write_duration=0.9)
    save_state(repo, STATE, stream="s")
    counting.reset()
    save_state(repo, STATE, stream="s")
    assert counting.requests.get("head", 0) == 0, "confirmed by this process a moment ago"
    time.sleep(1.1)
    counting.reset()
    save_state(repo, STATE, stream="s")
    assert counting.requests.get("head", 0) == len(repo.load_manifest("s", 2).shards)
