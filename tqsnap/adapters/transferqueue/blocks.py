"""Encode the values of one field for one block of samples as one item, and decode them back.

Three encodings, chosen per block from the values themselves (not from the controller's field
metadata, which can lag behind an overwrite in flight):

- ``dense``: every value is a tensor of the same dtype and shape. The item is one C-order
  tensor ``[count, *shape]``. Rows that sit next to each other in memory (a unit stores one
  put's rows as views of one buffer) are handed to the packer as one view, so a typical block
  is hashed and uploaded without any copy.
- ``jagged``: tensors of one dtype but different shapes. The item is the concatenation of
  their bytes; ``meta.lens`` lists each sample's length when all are 1-d, ``meta.shapes``
  each sample's shape otherwise.
- ``json``: anything else (strings, dicts, lists, numbers, mixed values), as typed JSON
  (:mod:`.jsonval`). Objects only pickle can store need ``allow_pickle``.

``meta.gi`` lists the samples' global indexes as runs (:func:`.layout.encode_runs`).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field
from typing import Any

from ...errors import FormatError
from ..tensors import dtype_name, tensor_bytes, tensor_from_bytes
from . import jsonval
from .layout import MAX_BLOCK_SIZE, MAX_INDEXES, count_runs, encode_runs, read_runs


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


def _flatten(tensors: list[Any]) -> Any:
    """One contiguous 1-d copy of same-dtype tensors, in one native call when torch offers it."""
    import torch

    try:
        from torch._utils import _flatten_dense_tensors  # what DDP uses to bucket gradients

        return _flatten_dense_tensors(tensors)
    except ImportError:  # pragma: no cover - older or newer torch
        return torch.cat([t.reshape(-1) for t in tensors])


def _byte_views(tensors: list[Any]) -> list[memoryview]:
    """Byte views of contiguous CPU ``tensors`` in order, merging neighbours adjacent in memory.

    A unit stores one put's dense rows as views of one buffer, so a dense block is usually a
    handful of runs, hashed and uploaded without a copy. The views point at memory the
    tensors own: the caller keeps the tensors alive while they are used. Two ranges merge
    only when both are alive and adjacent, so a merged view never covers memory that no
    tensor owns.
    """
    runs: list[list[int]] = []  # [address, nbytes]
    for t in tensors:
        n = t.nbytes
        if not n:
            continue
        ptr = t.data_ptr()
        if runs and runs[-1][0] + runs[-1][1] == ptr:
            runs[-1][1] += n
        else:
            runs.append([ptr, n])
    return [memoryview((ctypes.c_ubyte * n).from_address(ptr)).cast("B") for ptr, n in runs]


def _tensor_block(gis: list[int], values: list[Any]) -> EncodedBlock | None:
    """The ``dense`` or ``jagged`` item of same-dtype plain tensors; None for anything else."""
    import torch

    tensor, strided = torch.Tensor, torch.strided
    if not all(isinstance(v, tensor) for v in values):
        return None
    first = values[0]
    dtype = first.dtype
    # One quantized dtype check covers all: a quantized value has a dtype of its own.
    if first.is_quantized or not all(v.dtype == dtype for v in values):
        return None
    if not all(v.layout == strided and not v.is_nested and not v.requires_grad for v in values):
        return None
    owned = [v if v.is_cpu and v.is_contiguous() else tensor_bytes(v)[1] for v in values]
    name = dtype_name(dtype)
    runs = encode_runs(gis)
    shape = first.shape
    if all(v.shape == shape for v in values):
        parts = _byte_views(owned)
        return EncodedBlock("tensor", parts, name, [len(values), *shape], {"enc": "dense", "gi": runs}, owned)
    # Jagged samples are separate small tensors: one native concatenation costs less than a
    # view (and its Python objects) per sample.
    if all(v.dim() == 1 for v in owned):
        flat = torch.cat(owned)
        meta: dict[str, Any] = {"enc": "jagged", "gi": runs, "lens": [v.shape[0] for v in owned]}
    else:
        flat = _flatten(owned)
        meta = {"enc": "jagged", "gi": runs, "shapes": [list(v.shape) for v in owned]}
    view, flat = tensor_bytes(flat)
    return EncodedBlock("tensor", [view] if view.nbytes else [], name, [flat.numel()], meta, [flat])


def encode_block(gis: list[int], values: list[Any], *, allow_pickle: bool, where: str) -> EncodedBlock:
    """Encode the values of samples ``gis`` (same order) of one field as one item."""
    if values:
        block = _tensor_block(gis, values)
        if block is not None:
            return block
    runs = encode_runs(gis)
    encoder = jsonval.Encoder(allow_pickle, where)
    # Plain strings (the common non-tensor field) are their own JSON; skip the encoder for them.
    tree = values if all(type(v) is str for v in values) else [encoder.encode(v) for v in values]
    try:
        body = jsonval.dump_tree(tree, where)
    except FormatError as exc:  # name the sample by its global index, not its place in the block
        at = jsonval.surrogate_path(tree)
        if not at:
            raise
        raise FormatError(
            f"{where}: the value of the sample with global index {gis[int(at[0])]} holds a string with a "
            "lone surrogate, which is not Unicode and cannot be stored; pass valid text (or bytes)"
        ) from exc
    meta = {"enc": "json", "gi": runs}
    if encoder.pickled:
        meta["pickle"] = True
    return EncodedBlock("blob", [memoryview(body)], None, None, meta)


def block_gis(meta: dict[str, Any], where: str = "a data item") -> list[int]:
    """The global indexes of a block's samples, refused before expansion above :data:`MAX_BLOCK_SIZE`."""
    return read_runs(meta.get("gi", []), f"{where}: meta.gi", hi=MAX_INDEXES, limit=MAX_BLOCK_SIZE)


def block_units(meta: dict[str, Any], units: int, where: str = "a data item") -> set[int]:
    """The units ``gi % units`` of a block's samples, read from its runs without expanding them.

    The residues of an arithmetic run repeat after at most ``units`` elements, so no run is
    walked further than that.
    """
    runs = meta.get("gi", [])
    count_runs(runs, f"{where}: meta.gi", hi=MAX_INDEXES)
    out: set[int] = set()
    for run in runs:
        start, count = run[0], run[1]
        step = run[2] if len(run) == 3 else 1
        out.update((start + i * step) % units for i in range(min(count, units)))
    return out


def _sample_count(meta: dict[str, Any], where: str) -> int:
    count = count_runs(meta.get("gi", []), f"{where}: meta.gi", hi=MAX_INDEXES)
    if count > MAX_BLOCK_SIZE:
        raise FormatError(f"{where}: a block declares {count} samples, more than {MAX_BLOCK_SIZE}")
    return count


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

    Every count the item declares is checked against what it really holds (its byte size,
    its shape, its list of lengths) before anything is made for it, so a hostile item gets
    a :class:`~tqsnap.errors.FormatError` naming ``where`` instead of exhausting memory.
    """
    import torch

    count = _sample_count(meta, where)
    enc = meta.get("enc")
    nbytes = memoryview(data).nbytes
    if enc == "dense":
        if type(dtype) is not str or type(shape) is not list or not shape or shape[0] != count:
            raise FormatError(f"{where}: dense block has dtype {dtype!r:.40} and shape {shape!r:.80} for {count} samples")
        t = tensor_from_bytes(data, dtype, shape)
        gis = block_gis(meta, where)
        picks = _picks(gis, wanted)
        if len(picks) != len(gis):
            t = t.index_select(0, torch.tensor(picks, dtype=torch.long)) if picks else t[:0].clone()
        return [gis[i] for i in picks], list(t.unbind(0))
    if enc == "jagged":
        # 1-d samples list their lengths (``lens``, layout 2); others their shapes.
        lens = meta.get("lens")
        shapes = (meta.get("shapes") or []) if lens is None else lens
        if type(dtype) is not str or type(shapes) is not list or len(shapes) != count:
            raise FormatError(f"{where}: jagged block lists {len(shapes) if isinstance(shapes, list) else 0} shapes for {count} samples")
        try:
            numels = list(lens) if lens is not None else [_numel(s) for s in shapes]
        except (TypeError, ValueError):
            raise FormatError(f"{where}: jagged block has a malformed shape") from None
        if not all(type(n) is int and n >= 0 for n in numels):
            raise FormatError(f"{where}: jagged block has a negative or non-integer length")
        flat = tensor_from_bytes(data, dtype, [sum(numels)])
        gis = block_gis(meta, where)
        picks = _picks(gis, wanted)
        copy = len(picks) != len(gis)
        # One native split makes every sample's view; 1-d samples need no reshape.
        parts = flat.split(numels)
        if lens is None:
            parts = [p.view(s) for p, s in zip(parts, shapes, strict=True)]
        values = [parts[i].clone() if copy else parts[i] for i in picks]
        return [gis[i] for i in picks], values
    if enc == "json":
        if 2 * count + 1 > max(nbytes, 2):  # "[]" or "[v,...]": each value takes a byte and a comma
            raise FormatError(f"{where}: JSON block of {nbytes} bytes cannot hold the {count} values it declares")
        decoded = jsonval.loads(data, allow_pickle=allow_pickle, where=where)
        if not isinstance(decoded, list) or len(decoded) != count:
            raise FormatError(f"{where}: JSON block does not hold {count} values")
        gis = block_gis(meta, where)
        picks = _picks(gis, wanted)
        return [gis[i] for i in picks], [decoded[i] for i in picks]
    raise FormatError(f"{where}: unknown block encoding {enc!r:.40}")


def _picks(gis: list[int], wanted: set[int] | None) -> list[int]:
    return list(range(len(gis))) if wanted is None else [i for i, g in enumerate(gis) if g in wanted]


def _numel(shape: list[int]) -> int:
    """Elements in ``shape``; ValueError for anything but a short list of non-negative ints."""
    if not isinstance(shape, list) or len(shape) > _MAX_DIMS:
        raise ValueError(f"shape {shape!r} is not a list")
    n = 1
    for d in shape:
        if type(d) is not int or not 0 <= d <= _MAX_DIM:
            raise ValueError(f"shape {shape!r} has a bad dimension")
        n *= d
    return n


#: Sample shapes in a jagged block: at most this many dimensions, each at most this long (the
#: block's bytes bound their product; these keep the arithmetic small).
_MAX_DIMS = 64
_MAX_DIM = 1 << 48
