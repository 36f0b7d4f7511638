"""Placing chunk bytes in tensors for the DCP reader.

Kept apart from :mod:`.reader` (which follows DCP's call sequence) because these are plain
functions over planners and tensors, each testable alone. Fetching shards is the shard
layer's (:mod:`tqsnap.engine.shards`).
"""

from __future__ import annotations

import torch
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.planner import LoadPlanner

from ...errors import ShapeMismatchError


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
