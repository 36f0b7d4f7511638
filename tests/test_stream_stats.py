"""``tqsnap stats --stream``: one stream's figures, checked against the shard objects in the store."""

from __future__ import annotations

import torch
from cli_subprocess import Target, json_out, target_fixture  # noqa: F401 - the fixture
from cli_subprocess import tqsnap as run

import tqsnap
from tqsnap.engine import Repository
from tqsnap.store import open_store


def _shard_sizes(t: Target) -> dict[str, int]:
    return {i.key: i.size for i in open_store(t.url, **t.storage_options()).list("shards/")}


def _referenced(t: Target, stream: str, seq: int) -> set[str]:
    m = Repository.open(t.url, storage_options=t.storage_options()).load_manifest(stream, seq)
    return {ref.key for ref in m.shards}


def test_stream_figures_match_the_bytes_stored(target: Target) -> None:
    opts = target.storage_options()
    keep = torch.randn(200_000)
    tqsnap.save(target.url, {"keep": keep, "x": torch.randn(100_000)}, stream="a", storage_options=opts)
    tqsnap.save(target.url, {"keep": keep, "x": torch.randn(100_000)}, stream="a", storage_options=opts)
    alone = json_out(run(target, "stats", "--stream", "a", "--json"))
    assert alone["snapshots"] == 2
    assert alone["logical_bytes"] == 2 * (200_000 + 100_000) * 4, "each snapshot's items, counted per snapshot"
    assert alone["stored_bytes"] == sum(_shard_sizes(target).values()), "one stream: every shard is its own"
    assert alone["shared_stored_bytes"] == 0 and alone["unique_stored_bytes"] == alone["stored_bytes"]
    assert alone["logical_to_stored_ratio"] == round(alone["logical_bytes"] / alone["stored_bytes"], 3)

    # A fork of a@2 into stream b reuses a@2's shards: they become shared.
    tqsnap.copy(target.url, target.url, stream="a", snapshot=2, dst_stream="b", storage_options=opts,
                dst_storage_options=opts)
    sizes = _shard_sizes(target)
    shared_keys = _referenced(target, "a", 2) & _referenced(target, "b", 1)
    assert shared_keys, "the fork reuses the shards"
    after = json_out(run(target, "stats", "--stream", "a", "--json"))
    assert after["stored_bytes"] == alone["stored_bytes"]
    assert after["shared_stored_bytes"] == sum(sizes[k] for k in shared_keys)
    only_a1 = _referenced(target, "a", 1) - _referenced(target, "b", 1)
    assert after["unique_stored_bytes"] == sum(sizes[k] for k in only_a1)
    whole = json_out(run(target, "stats", "--json"))
    assert whole["stored_bytes"] == sum(sizes.values()), "without --stream: the whole repository"
    assert run(target, "stats", "--stream", "nope").returncode == 3
