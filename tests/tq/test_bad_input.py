"""Every bad restore gets a typed error and leaves the target TransferQueue exactly as it was."""

from __future__ import annotations

from datetime import date
from fractions import Fraction
from pathlib import Path

import pytest
import torch
from helpers import assert_same, dump, fill, put
from tensordict import TensorDict
from tensordict.tensorclass import NonTensorStack

import tqsnap
import tqsnap.tq
from tqsnap.errors import (
    CorruptShardError,
    KindMismatchError,
    PickleNotAllowedError,
    SnapshotNotFoundError,
    TargetNotEmptyError,
)
from tqsnap.format.keys import parse_shard_key


def _flip_a_data_shard(repo_url: str, stream: str) -> str:
    repo = tqsnap.open_repo(repo_url)
    reader = repo.reader(stream)
    item = next(i for p, i in sorted(reader.items.items()) if p.startswith("d/") and "/dense/" in p)
    key = reader.manifest.shards[item.extents[0].shard].key
    path = Path(repo_url) / key
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert parse_shard_key(key) is not None
    return key


def test_state_dict_snapshot_given_to_tq_restore_is_refused_and_target_unchanged(tq_two, repo_url):
    tqsnap.save(repo_url, {"w": torch.ones(3)}, stream="weights")
    fill(tq_two.client)
    before = dump(tq_two.system)

    with pytest.raises(KindMismatchError):
        tqsnap.tq.restore(repo_url, stream="weights", system=tq_two.system, force=True)

    assert_same(before, dump(tq_two.system))


def test_non_empty_target_is_refused_and_unchanged(tq_main, tq_two, repo_url):
    put(tq_main.client, "train", list(range(8)))
    tqsnap.tq.snapshot(repo_url, stream="s")
    put(tq_two.client, "mine", [500, 501])
    before = dump(tq_two.system)

    with pytest.raises(TargetNotEmptyError):
        tqsnap.tq.restore(repo_url, stream="s", system=tq_two.system)

    assert_same(before, dump(tq_two.system))


def test_force_replaces_everything_a_non_empty_target_held(tq_main, tq_two, repo_url):
    put(tq_main.client, "train", list(range(8)))
    source = dump(tq_main.system)
    tqsnap.tq.snapshot(repo_url, stream="s")
    put(tq_two.client, "mine", [500, 501, 502])

    tqsnap.tq.restore(repo_url, stream="s", system=tq_two.system, force=True)

    assert_same(source, dump(tq_two.system))


def test_corrupt_shard_is_refused_and_target_unchanged(tq_main, tq_two, repo_url):
    fill(tq_main.client)
    tqsnap.tq.snapshot(repo_url, stream="s")
    key = _flip_a_data_shard(repo_url, "s")
    put(tq_two.client, "mine", [7])
    before = dump(tq_two.system)

    with pytest.raises(CorruptShardError) as err:
        tqsnap.tq.restore(repo_url, stream="s", system=tq_two.system, force=True)

    assert err.value.key == key
    assert_same(before, dump(tq_two.system))


def test_corrupt_shard_into_empty_target_leaves_it_empty(tq_main, tq_two, repo_url):
    fill(tq_main.client)
    tqsnap.tq.snapshot(repo_url, stream="s")
    _flip_a_data_shard(repo_url, "s")
    before = dump(tq_two.system)

    with pytest.raises(CorruptShardError):
        tqsnap.tq.restore(repo_url, stream="s", system=tq_two.system)

    assert_same(before, dump(tq_two.system))
    assert not before["data"] and not before["state"].partitions


def test_missing_snapshot_is_refused_and_target_unchanged(tq_main, tq_two, repo_url):
    put(tq_main.client, "train", list(range(4)))
    tqsnap.tq.snapshot(repo_url, stream="s")
    put(tq_two.client, "mine", [1])
    before = dump(tq_two.system)

    with pytest.raises(SnapshotNotFoundError):
        tqsnap.tq.restore(repo_url, stream="s", snapshot=9, system=tq_two.system, force=True)
    with pytest.raises(SnapshotNotFoundError):
        tqsnap.tq.restore(repo_url, stream="nope", system=tq_two.system, force=True)

    assert_same(before, dump(tq_two.system))


def test_values_only_pickle_can_store_need_allow_pickle_on_both_sides(tq_main, tq_two, repo_url):
    td = TensorDict({"obj": NonTensorStack(Fraction(1, 3), date(2024, 2, 29))}, batch_size=2)
    tq_main.client.put(data=td, partition_id="odd")

    with pytest.raises(PickleNotAllowedError):
        tqsnap.tq.snapshot(repo_url, stream="p")
    tqsnap.tq.snapshot(repo_url, stream="p", allow_pickle=True)
    before = dump(tq_two.system)
    with pytest.raises(PickleNotAllowedError):
        tqsnap.tq.restore(repo_url, stream="p", system=tq_two.system)
    assert_same(before, dump(tq_two.system))

    tqsnap.tq.restore(repo_url, stream="p", system=tq_two.system, allow_pickle=True)
    assert_same(dump(tq_main.system), dump(tq_two.system))
