"""A snapshot uploads only the blocks that changed since its parent."""

from __future__ import annotations

import torch
from helpers import put
from tensordict import TensorDict

from tqsnap.adapters.transferqueue import snapshot_system
from tqsnap.adapters.transferqueue.layout import parse_data_path
from tqsnap.engine import PackOptions, Repository

BLOCK = 16
# One shard per item, so each changed block is visible as exactly one new shard.
ONE_SHARD_PER_ITEM = PackOptions(small_item=0)


def _new_data_items(repo: Repository, stream: str) -> list[tuple[str, int, int, int]]:
    """(field, block, unit, units) of every data item whose shard the parent did not have."""
    latest = repo.reader(stream)
    parent = repo.load_manifest(stream, latest.manifest.seq - 1)
    old = {s.key for s in parent.shards}
    out = []
    for path, item in latest.items.items():
        parsed = parse_data_path(path)
        if parsed and any(latest.manifest.shards[e.shard].key not in old for e in item.extents):
            out.append(parsed[1:])
    return sorted(out)


def test_second_snapshot_after_appending_uploads_only_the_new_block(tq_main, repo_url):
    repo = Repository.open(repo_url, create=True)
    put(tq_main.client, "train", list(range(96)))  # blocks 0-5, full
    first = snapshot_system(tq_main.system, repo, "inc", options=ONE_SHARD_PER_ITEM, block_size=BLOCK)

    put(tq_main.client, "train", list(range(96, 101)))  # 5 samples into block 6
    second = snapshot_system(tq_main.system, repo, "inc", options=ONE_SHARD_PER_ITEM, block_size=BLOCK)

    # gi 96..100 land on units 0,1,2,0,1: block 6 has a part on each of the 3 units, per field.
    expected = sorted((f, 6, u, 3) for f in ("dense", "jag", "txt") for u in range(3))
    assert _new_data_items(repo, "inc") == expected
    assert second.new_bytes < first.new_bytes  # the rest is the (small) controller state


def test_overwriting_one_sample_reuploads_only_its_block_on_its_unit(tq_main, repo_url):
    repo = Repository.open(repo_url, create=True)
    meta = put(tq_main.client, "train", list(range(64)))
    snapshot_system(tq_main.system, repo, "ow", options=ONE_SHARD_PER_ITEM, block_size=BLOCK)

    one = meta.select_samples([37])  # gi 37: block 2, unit 1
    tq_main.client.put(TensorDict({"dense": torch.full((1, 6), -1.0)}, batch_size=1), metadata=one)
    snapshot_system(tq_main.system, repo, "ow", options=ONE_SHARD_PER_ITEM, block_size=BLOCK)

    assert _new_data_items(repo, "ow") == [("dense", 2, 1, 3)]
