"""Moving chunk bytes between shards and tensors for the DCP reader.

Kept apart from :mod:`.reader` (which follows DCP's call sequence) because these are plain
functions over stores, shard references and tensors, each testable alone.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.planner import LoadPlanner

from ...errors import CorruptShardError, MissingShardError, ObjectNotFoundError, ShapeMismatchError
from ...format.manifest import Item, ShardRef
from ...format.shard import content_hash
from ...store import ObjectStore


def resolves_views(planner: LoadPlanner) -> bool:
    """True for DCP's default load planner (and subclasses that keep its tensor handling).

    Its ``resolve_tensor`` returns a view into the state dict and ``commit_tensor`` does
    nothing, so every destination can be resolved up front and filled in parallel. Other
    planners may hand out one staging buffer per call and copy it in ``commit_tensor``; they
    keep DCP's strict resolve -> copy -> commit order on the buffered path.
    """
    return isinstance(planner, DefaultLoadPlanner) and all(
        getattr(type(planner), name) is getattr(DefaultLoadPlanner, name)
        for name in ("resolve_tensor", "commit_tensor", "lookup_tensor", "transform_tensor")
    )


def fetch_into(store: ObjectStore, ref: ShardRef, buf: memoryview, snapshot: str) -> None:
    """Read a raw shard into ``buf`` and verify its hash there (as the engine's ``fetch_shard`` does)."""
    try:
        got = store.get_into(ref.key, buf, 0)
    except ObjectNotFoundError:
        raise MissingShardError(ref.key, snapshot) from None
    if got != ref.size:
        raise CorruptShardError(ref.key, ref.hash, f"truncated ({got} of {ref.size} bytes)")
    actual = content_hash(buf)
    if actual != ref.hash:
        raise CorruptShardError(ref.key, ref.hash, actual)


def windows(items: list[Item], sizes: list[int], budget: int) -> Iterator[tuple[list[Item], list[int]]]:
    """Group items (in shard order) so each group brings at most about ``budget`` new shard bytes."""
    seen: set[int] = set()
    group: list[Item] = []
    fetch: list[int] = []
    total = 0
    for item in items:
        new = [s for s in dict.fromkeys(e.shard for e in item.extents) if s not in seen]
        grow = sum(sizes[s] for s in new)
        if group and total + grow > budget:
            yield group, fetch
            group, fetch, total = [], [], 0
        group.append(item)
        fetch.extend(new)
        seen.update(new)
        total += grow
    if group:
        yield group, fetch


def narrow(t: torch.Tensor, offsets: torch.Size, lengths: torch.Size, path: str) -> torch.Tensor:
    """The hypercube ``[offsets, offsets + lengths)`` of ``t``; refuses regions outside it."""
    if len(offsets) != t.dim() or len(lengths) != t.dim():
        raise ShapeMismatchError(
            f"item {path!r} has {t.dim()} dimensions, but DCP asked for a {len(lengths)}-dimensional region"
        )
    for dim, (start, length) in enumerate(zip(offsets, lengths, strict=True)):
        if start < 0 or start + length > t.size(dim):
            raise ShapeMismatchError(
                f"item {path!r} of shape {list(t.shape)} has no region at offsets {list(offsets)} "
                f"of lengths {list(lengths)}"
            )
        if start != 0 or length != t.size(dim):
            t = t.narrow(dim, start, length)
    return t
