"""A manifest's shard table for a subset of its items: which shards, and the extents renumbered.

The one place extents are remapped: merging packer results, copying a snapshot with some
shards already present, and handing one TransferQueue unit exactly the shards its samples use.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence

from ..format.manifest import Extent, Item, ShardRef


def remap_items(items: Iterable[Item], new_index: Mapping[int, int] | Sequence[int]) -> list[Item]:
    """Copies of ``items`` whose extents point at shard ``new_index[old]`` instead of ``old``."""
    return [
        dataclasses.replace(item, extents=[Extent(new_index[e.shard], e.offset, e.length) for e in item.extents])
        for item in items
    ]


def select_shards(shards: Sequence[ShardRef], items: Iterable[Item]) -> tuple[list[ShardRef], list[Item]]:
    """The shards ``items`` use (in the order first used) and the items renumbered into that list.

    How a job that needs only some items (one TransferQueue unit's samples) is handed exactly
    the shards it must fetch.
    """
    new_index: dict[int, int] = {}
    table: list[ShardRef] = []
    items = list(items)
    for item in items:
        for e in item.extents:
            if e.shard not in new_index:
                new_index[e.shard] = len(table)
                table.append(shards[e.shard])
    return table, remap_items(items, new_index)
