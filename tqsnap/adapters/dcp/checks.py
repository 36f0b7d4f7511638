"""Cross-checks of a ``dcp`` snapshot, run before the reader fetches a shard or fills a tensor.

A snapshot has three descriptions of the same bytes, all written by whoever can write the
bucket: DCP's metadata (JSON in ``extra.dcp``), the manifest's items (kind, dtype, shape,
size) and, at load time, DCP's read requests planned from that metadata. Each is parsed
strictly on its own (:mod:`.metadata_json`, :mod:`tqsnap.format.manifest`); this module checks
that they agree, because every way they can disagree was once a way to misuse the load:

- a tensor chunk whose item says ``bytes`` was handed to the planner's ``load_bytes``, which
  unpickles it;
- a chunk outside its tensor, chunks that overlap or leave holes, or an item whose size is
  not its shape times its element size made the load write part of a destination and then
  fail, or silently leave part of it as it was;
- a path in ``planner_data`` with a huge list index made DCP's ``set_element`` grow a list to
  that length.

Every check raises a :class:`~tqsnap.errors.TqsnapError` naming the snapshot and the fqn or
item, and all of them run before anything is written into the state dict.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import LoadItemType, LoadPlanner, ReadItem

from ...errors import ManifestError, ShapeMismatchError
from ...format.manifest import Item
from ..tensors import dtype_name

#: The item kind that holds each kind of DCP entry.
TENSOR_KIND = "tensor"
BYTES_KIND = "bytes"

#: At most this many pairs of chunks are compared for overlap in one snapshot. Real
#: checkpoints need about one comparison per chunk; only a crafted layout needs more.
MAX_OVERLAP_COMPARISONS = 10_000_000

#: How long a ``planner_data`` key path may be (nesting depth of the saved state dict).
MAX_PATH_LENGTH = 128
#: List slots that ``planner_data`` paths may make DCP create, beyond a few per entry.
MAX_LIST_SLOTS = 1 << 16


def check_snapshot(
    metadata: Metadata, paths: Mapping[MetadataIndex, str], items: Mapping[str, Item], name: str
) -> None:
    """Refuse a snapshot whose DCP metadata and manifest items disagree (see the module doc)."""
    budget = [MAX_OVERLAP_COMPARISONS]
    for fqn, smd in metadata.state_dict_metadata.items():
        if isinstance(smd, BytesStorageMetadata):
            item = _item(items, paths[MetadataIndex(fqn)], name, fqn)
            if item.kind != BYTES_KIND:
                raise ManifestError(
                    f"snapshot {name}: DCP metadata says {fqn!r:.200} is a non-tensor value, but its item "
                    f"{item.path!r:.200} is of kind {item.kind!r:.40}; the snapshot is inconsistent"
                )
            continue
        assert isinstance(smd, TensorStorageMetadata)
        for i, chunk in enumerate(smd.chunks):
            _check_bounds(smd.size, chunk, name, fqn)
            path = paths[MetadataIndex(fqn, chunk.offsets, i)]
            _check_tensor_item(_item(items, path, name, fqn), smd, chunk, name, fqn)
        _check_cover(smd, name, fqn, budget)
    check_planner_data(metadata, name)


def _item(items: Mapping[str, Item], path: str, name: str, fqn: str) -> Item:
    item = items.get(path)
    if item is None:
        raise ManifestError(
            f"snapshot {name}: DCP metadata names item {path!r:.200} for {fqn!r:.200}, which it lacks"
        )
    return item


def _check_bounds(
    size: torch.Size, chunk: ChunkStorageMetadata, name: str, fqn: str, source: str = "DCP metadata"
) -> None:
    for dim, (start, length) in enumerate(zip(chunk.offsets, chunk.sizes, strict=True)):
        if start < 0 or length < 0 or start + length > size[dim]:
            raise ManifestError(
                f"snapshot {name}: {source} places a chunk of {fqn!r:.200} at offsets "
                f"{list(chunk.offsets)} with sizes {list(chunk.sizes)}, outside the tensor's size {list(size)}"
            )


def _check_tensor_item(
    item: Item, smd: TensorStorageMetadata, chunk: ChunkStorageMetadata, name: str, fqn: str
) -> None:
    where = f"snapshot {name}: item {item.path!r:.200} of {fqn!r:.200}"
    if item.kind != TENSOR_KIND:
        raise ManifestError(
            f"{where} is of kind {item.kind!r:.40}, but DCP metadata says it holds a tensor chunk; "
            "the snapshot is inconsistent"
        )
    dtype = dtype_name(smd.properties.dtype)
    if item.dtype != dtype:
        raise ManifestError(f"{where} holds {item.dtype!r:.40} values, but DCP metadata says {dtype}")
    if item.shape != list(chunk.sizes):
        raise ShapeMismatchError(
            f"{where} holds a tensor of shape {item.shape}, but its DCP metadata describes a chunk of "
            f"{list(chunk.sizes)}; the snapshot is inconsistent"
        )
    expected = math.prod(chunk.sizes) * smd.properties.dtype.itemsize
    if item.size != expected:
        raise ShapeMismatchError(
            f"{where} is {item.size} bytes, but a {dtype} chunk of shape {item.shape} is {expected} bytes"
        )


def _check_cover(
    smd: TensorStorageMetadata, name: str, fqn: str, budget: list[int], source: str = "DCP metadata"
) -> None:
    """The chunks tile the tensor: their volumes add up to it and no two overlap.

    Together with :func:`_check_bounds` this means every element is loaded exactly once, as
    DCP's own save planner requires of a plan. Overlaps are found with a sweep along the
    dimension with the most distinct offsets (the sharded one), so a real layout costs about
    one comparison per chunk; a crafted one runs out of ``budget`` and is refused.
    """
    chunks = smd.chunks
    numel = math.prod(smd.size)
    if sum(math.prod(c.sizes) for c in chunks) != numel:
        raise ManifestError(
            f"snapshot {name}: the {len(chunks)} chunks {source} lists for {fqn!r:.200} do not add up to "
            f"its size {list(smd.size)}; part of it would not be loaded"
        )
    solid = [c for c in chunks if math.prod(c.sizes) > 0]
    if len(solid) < 2:
        return
    dims = len(smd.size)
    sweep = max(range(dims), key=lambda d: len({c.offsets[d] for c in solid}))
    solid.sort(key=lambda c: c.offsets[sweep])
    active: list[ChunkStorageMetadata] = []
    for chunk in solid:
        start = chunk.offsets[sweep]
        active = [a for a in active if a.offsets[sweep] + a.sizes[sweep] > start]
        budget[0] -= len(active) + 1
        if budget[0] < 0:
            raise ManifestError(
                f"snapshot {name}: the chunks {source} lists for {fqn!r:.200} take too long to check "
                "for overlaps; no checkpoint DCP writes is laid out like this"
            )
        for other in active:
            if all(_intersect(chunk, other, d) for d in range(dims)):
                raise ManifestError(
                    f"snapshot {name}: {source} lists overlapping chunks of {fqn!r:.200} at offsets "
                    f"{list(other.offsets)} and {list(chunk.offsets)}"
                )
        active.append(chunk)


def _intersect(a: ChunkStorageMetadata, b: ChunkStorageMetadata, dim: int) -> bool:
    return a.offsets[dim] < b.offsets[dim] + b.sizes[dim] and b.offsets[dim] < a.offsets[dim] + a.sizes[dim]


def check_planner_data(metadata: Metadata, name: str) -> None:
    """Key paths in ``planner_data`` must be paths DCP can follow without growing memory.

    DCP's tools that rebuild a state dict from metadata (``_EmptyStateDictLoadPlanner``,
    ``dcp_to_torch_save``, the sharded-optimizer loader) call ``set_element(state_dict,
    planner_data[fqn], value)``, which extends a list with ``None`` up to an integer key. A
    path is therefore a non-empty tuple of strings and non-negative integers, and all the
    list slots the paths imply together stay near the number of entries.
    """
    data = metadata.planner_data
    if not isinstance(data, dict):
        return
    slots: dict[tuple[Any, ...], int] = {}
    for fqn in metadata.state_dict_metadata:
        path = data.get(fqn)
        if path is None:
            continue
        if (
            not isinstance(path, tuple)
            or not 0 < len(path) <= MAX_PATH_LENGTH
            or not all(type(k) is str or (type(k) is int and k >= 0) for k in path)
        ):
            raise ManifestError(
                f"snapshot {name}: DCP planner_data for {fqn!r:.200} is not a key path of at most "
                f"{MAX_PATH_LENGTH} strings and non-negative integers: {path!r:.100}"
            )
        for depth, key in enumerate(path):
            if type(key) is int:
                prefix = path[:depth]
                slots[prefix] = max(slots.get(prefix, 0), key + 1)
    allowed = MAX_LIST_SLOTS + 4 * len(metadata.state_dict_metadata)
    if sum(slots.values()) > allowed:
        raise ManifestError(
            f"snapshot {name}: DCP planner_data holds list indexes that would make DCP build lists of "
            f"{sum(slots.values())} slots for {len(metadata.state_dict_metadata)} entries; refused"
        )


def check_reads(
    requests: Mapping[str, list[ReadItem]], items: Mapping[str, Item], planner: LoadPlanner, name: str
) -> None:
    """Each read request agrees with the item it reads; checked for all before any is carried out.

    A tensor request needs a ``tensor`` item and a region inside it; a bytes request needs a
    ``bytes`` item and, with a planner that keeps the state dict (DCP's default one), a
    destination that is not a tensor: a stored non-tensor value would replace the tensor in
    the dict instead of filling it, so the model would silently keep its old weights.
    """
    state = getattr(planner, "state_dict", None)
    for path, reqs in requests.items():
        item = items[path]
        for req in reqs:
            fqn = req.dest_index.fqn
            if req.type == LoadItemType.BYTE_IO:
                if item.kind != BYTES_KIND:
                    raise ManifestError(
                        f"snapshot {name}: DCP asked for {fqn!r:.200} as a non-tensor value, but item "
                        f"{path!r:.200} is of kind {item.kind!r:.40}"
                    )
                if isinstance(state, Mapping) and isinstance(state.get(fqn), torch.Tensor):
                    raise ManifestError(
                        f"snapshot {name} stores {fqn!r:.200} as a non-tensor value, but the state dict "
                        "being loaded holds a tensor there; refusing to replace it. Load into a matching "
                        "state dict"
                    )
                continue
            if item.kind != TENSOR_KIND or item.shape is None:
                raise ManifestError(
                    f"snapshot {name}: DCP asked for tensor data of {fqn!r:.200}, but item {path!r:.200} "
                    f"is of kind {item.kind!r:.40}"
                )
            _check_region(item, req, name)


def _check_region(item: Item, req: ReadItem, name: str) -> None:
    shape = item.shape or []
    offsets, lengths = list(req.storage_offsets), list(req.lengths)
    if len(offsets) != len(shape) or len(lengths) != len(shape) or any(
        o < 0 or n < 0 or o + n > dim for o, n, dim in zip(offsets, lengths, shape, strict=True)
    ):
        raise ShapeMismatchError(
            f"snapshot {name}: item {item.path!r:.200} of shape {shape} has no region at offsets {offsets} "
            f"of lengths {lengths}"
        )
