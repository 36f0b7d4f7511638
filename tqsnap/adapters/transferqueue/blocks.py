"""Encode the values of one field for one block of samples as one item, and decode them back.

Three encodings, chosen per block from the values themselves (not from the controller's field
metadata, which can lag behind an overwrite in flight):

- ``dense``: every value is a tensor of the same dtype and shape. The item is one C-order
  tensor ``[count, *shape]``. Rows that sit next to each other in memory (a unit stores one
  put's rows as views of one buffer) are handed to the packer as one view, so a typical block
  is hashed and uploaded without any copy.
- ``jagged``: tensors of one dtype but different shapes. The item is the concatenation of
  their bytes; ``meta.shapes`` lists each sample's shape.
- ``json``: anything else (strings, dicts, lists, numbers, mixed values), as typed JSON
  (:mod:`.jsonval`). Objects only pickle can store need ``allow_pickle``.

``meta.gi`` lists the samples' global indexes as runs (:func:`.layout.encode_runs`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ...errors import FormatError
from ..tensors import dtype_name, tensor_bytes, tensor_from_bytes
from . import jsonval
from .layout import decode_runs, encode_runs


@dataclass
class EncodedBlock:
    """What :meth:`ShardPacker.add` needs for one item, plus the tensors its views point into."""

    kind: str
    parts: list[memoryview]
    dtype: str | None
    shape: list[int] | None
    meta: dict[str, Any]
    keepalive: list[Any] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.parts)


def _is_plain_tensor(v: Any) -> bool:
    import torch

    return (
        isinstance(v, torch.Tensor)
        and v.layout == torch.strided
        and not v.is_nested
        and not v.is_quantized
        and not v.requires_grad
    )


#: Below this average run size, per-run views cost more than one concatenating copy.
_MIN_AVG_RUN = 64 * 1024
_MAX_VIEWS = 16


def _flatten(tensors: list[Any]) -> Any:
    """One contiguous 1-d copy of same-dtype tensors, in one native call when torch offers it."""
    import torch

    try:
        from torch._utils import _flatten_dense_tensors  # what DDP uses to bucket gradients

        return _flatten_dense_tensors(tensors)
    except ImportError:  # pragma: no cover - older or newer torch
        return torch.cat([t.reshape(-1) for t in tensors])


def _coalesce(tensors: list[Any], keepalive: list[Any]) -> list[memoryview]:
    """Byte views of ``tensors`` in order, merging neighbours that share one buffer.

    A unit stores one put's dense rows as views of one buffer, so a dense block is usually a
    handful of runs and costs no copy. Jagged samples arrive as separate tensors; when the runs
    are many and small, one ``torch.cat`` is cheaper than a view per sample.
    """
    import torch

    runs: list[list[Any]] = []  # [storage ptr, storage, start_offset, end_offset]
    for t in tensors:
        nbytes = t.numel() * t.element_size()
        if nbytes == 0:
            continue
        storage = t.untyped_storage()
        base = storage.data_ptr()
        start = t.data_ptr() - base
        if runs and runs[-1][0] == base and runs[-1][3] == start:
            runs[-1][3] = start + nbytes
        else:
            runs.append([base, storage, start, start + nbytes])
    if not runs:
        return []
    total = sum(r[3] - r[2] for r in runs)
    if len(runs) > _MAX_VIEWS and total / len(runs) < _MIN_AVG_RUN:
        flat = _flatten([t for t in tensors if t.numel()]).view(torch.uint8)
        keepalive.append(flat)
        return [memoryview(flat.numpy()).cast("B")]
    views: list[memoryview] = []
    for _, storage, start, end in runs:
        flat = torch.empty(0, dtype=torch.uint8).set_(storage, start, (end - start,))
        keepalive.append(flat)
        views.append(memoryview(flat.numpy()).cast("B"))
    return views


def encode_block(gis: list[int], values: list[Any], *, allow_pickle: bool, where: str) -> EncodedBlock:
    """Encode the values of samples ``gis`` (same order) of one field as one item."""
    runs = encode_runs(gis)
    if values and all(_is_plain_tensor(v) for v in values):
        first = values[0]
        if all(v.dtype == first.dtype for v in values):
            keepalive: list[Any] = []
            owned = []
            for v in values:
                if v.is_contiguous() and v.device.type == "cpu":
                    owned.append(v)
                else:
                    _, t = tensor_bytes(v)
                    owned.append(t)
            keepalive.extend(owned)
            parts = _coalesce(owned, keepalive)
            name = dtype_name(first.dtype)
            if all(v.shape == first.shape for v in values):
                return EncodedBlock(
                    "tensor",
                    parts,
                    name,
                    [len(values), *first.shape],
                    {"enc": "dense", "gi": runs},
                    keepalive,
                )
            shapes = [list(v.shape) for v in values]
            total = sum(v.numel() for v in values)
            meta = {"enc": "jagged", "gi": runs, "shapes": shapes}
            return EncodedBlock("tensor", parts, name, [total], meta, keepalive)
    encoder = jsonval.Encoder(allow_pickle, where)
    # Plain strings (the common non-tensor field) are their own JSON; skip the encoder for them.
    tree = values if all(type(v) is str for v in values) else [encoder.encode(v) for v in values]
    body = json.dumps(tree, separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode()
    meta = {"enc": "json", "gi": runs}
    if encoder.pickled:
        meta["pickle"] = True
    return EncodedBlock("blob", [memoryview(body)], None, None, meta)


def block_gis(meta: dict[str, Any]) -> list[int]:
    return decode_runs(meta.get("gi") or [])


def decode_block(
    meta: dict[str, Any],
    dtype: str | None,
    shape: list[int] | None,
    data: memoryview,
    *,
    wanted: set[int] | None = None,
    allow_pickle: bool = False,
    where: str = "",
) -> tuple[list[int], list[Any]]:
    """Return ``(gis, values)`` of the samples in an item; only those in ``wanted`` if given.

    Dense values come back as row views of one tensor (as a unit stores a put). When only
    some rows are wanted they are copied out, so the shard buffer is not kept alive.
    """
    import torch

    gis = block_gis(meta)
    enc = meta.get("enc")
    picks = list(range(len(gis))) if wanted is None else [i for i, g in enumerate(gis) if g in wanted]
    if enc == "dense":
        if dtype is None or shape is None or shape[0] != len(gis):
            raise FormatError(f"{where}: dense block has shape {shape} for {len(gis)} samples")
        t = tensor_from_bytes(data, dtype, shape)
        if len(picks) != len(gis):
            t = t.index_select(0, torch.tensor(picks, dtype=torch.long)) if picks else t[:0].clone()
        return [gis[i] for i in picks], list(t.unbind(0))
    if enc == "jagged":
        shapes = meta.get("shapes") or []
        if dtype is None or len(shapes) != len(gis):
            raise FormatError(f"{where}: jagged block lists {len(shapes)} shapes for {len(gis)} samples")
        flat = tensor_from_bytes(data, dtype, [sum(_numel(s) for s in shapes)])
        values: list[Any] = []
        offset = 0
        pick_set = set(picks)
        copy = len(picks) != len(gis)
        for i, s in enumerate(shapes):
            n = _numel(s)
            if i in pick_set:
                v = flat[offset : offset + n].view(s)
                values.append(v.clone() if copy else v)
            offset += n
        return [gis[i] for i in picks], values
    if enc == "json":
        decoded = jsonval.loads(data, allow_pickle=allow_pickle, where=where)
        if not isinstance(decoded, list) or len(decoded) != len(gis):
            raise FormatError(f"{where}: JSON block does not hold {len(gis)} values")
        return [gis[i] for i in picks], [decoded[i] for i in picks]
    raise FormatError(f"{where}: unknown block encoding {enc!r}")


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n
