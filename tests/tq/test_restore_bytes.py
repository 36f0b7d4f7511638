"""A restore into another unit count reads each stored byte from the store about once.

One stored block holds samples of several target units when the unit counts differ. The units
read every shard once (verified whole) and hand the items others need on to them, so the
store serves about the snapshot's stored size, not that size times the number of target
units that share a block.
"""

from __future__ import annotations

import logging

import pytest
import torch
from helpers import assert_same, dump
from tensordict import TensorDict
from tensordict.tensorclass import NonTensorStack

from tqsnap.adapters.transferqueue import restore_system, snapshot_system
from tqsnap.adapters.transferqueue.layout import KIND, parse_data_path
from tqsnap.engine import Repository
from tqsnap.engine.job_read import open_reader
from tqsnap.engine.shard_table import select_shards

log = logging.getLogger(__name__)

# The first test of a session also waits for the shared Ray cluster and TransferQueues to start.
pytestmark = pytest.mark.timeout(600)

SAMPLES = 2048  # 4 blocks of 512 global indexes
ROW = 512  # float32 elements per dense sample: 2 KiB, so a unit's share of a block is a shard of its own


def _fill(client) -> None:
    """Incompressible dense rows (raw shards) and text values (zstd packs), one put per block."""
    gen = torch.Generator().manual_seed(5)
    for start in range(0, SAMPLES, 512):
        n = 512
        td = TensorDict(
            {
                "x": torch.rand(n, ROW, generator=gen),
                "txt": NonTensorStack(*[f"sample-{start + i}" * 3 for i in range(n)]),
            },
            batch_size=n,
        )
        client.put(data=td, partition_id="train")


def _stored(repo: Repository, stream: str) -> tuple[int, object]:
    """(stored bytes of the snapshot's shards, its reader)."""
    reader = open_reader(repo, stream, "latest", kind=KIND)
    shards = reader.manifest.shards
    total = sum(ref.stored_size for ref in shards)
    return total, reader


def _per_unit_whole_shards(reader, units: int) -> int:
    """The bytes fetched when every target unit reads every shard holding any of its samples."""
    from tqsnap.adapters.transferqueue.blocks import block_units

    per_unit: list[list] = [[] for _ in range(units)]
    for path, item in reader.items.items():
        parsed = parse_data_path(path)
        if parsed is None:
            continue
        targets = {parsed[3]} if parsed[4] == units else block_units(item.meta, units)
        for t in targets:
            per_unit[t].append(item)
    return sum(sum(r.stored_size for r in select_shards(reader.manifest.shards, items)[0]) for items in per_unit)


def _check(source, target, repo_url: str, stream: str) -> None:
    _fill(source.client)
    before = dump(source.system)
    repo = Repository.open(repo_url, create=True)
    snapshot_system(source.system, repo, stream)
    stored, reader = _stored(repo, stream)
    naive = _per_unit_whole_shards(reader, target.system.n_units)

    result = restore_system(target.system, Repository.open(repo_url), stream)

    assert_same(before, dump(target.system))
    assert (result.source_units, result.units, result.samples) == (source.system.n_units, target.system.n_units, SAMPLES)
    # The driver reads the controller items; the units read the rest, counted by their store.
    assert result.fetched_bytes <= 1.2 * stored, (result.fetched_bytes, stored, naive)
    assert result.shipped_bytes > 0  # blocks were shared between target units, and handed on
    log.warning(
        "%d -> %d units: stored %d bytes; units fetched %d (%.2fx), handed on %d; "
        "one whole read per unit and shard would fetch %d (%.2fx)",
        source.system.n_units,
        target.system.n_units,
        stored,
        result.fetched_bytes,
        result.fetched_bytes / stored,
        result.shipped_bytes,
        naive,
        naive / stored,
    )


def test_restore_from_two_units_into_three_fetches_each_shard_once(tq_main, tq_two, repo_url):
    _check(tq_two, tq_main, repo_url, "two")


def test_restore_from_three_units_into_two_fetches_each_shard_once(tq_main, tq_two, repo_url):
    _check(tq_main, tq_two, repo_url, "three")


def test_restore_into_the_same_unit_count_hands_nothing_on(tq_main, tq_two, repo_url):
    _fill(tq_two.client)
    before = dump(tq_two.system)
    repo = Repository.open(repo_url, create=True)
    snapshot_system(tq_two.system, repo, "same")
    stored, _ = _stored(repo, "same")

    result = restore_system(tq_two.system, repo, "same", force=True)

    assert_same(before, dump(tq_two.system))
    assert result.shipped_bytes == 0
    assert result.fetched_bytes <= stored
