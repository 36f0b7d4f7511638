"""Controller state -> snapshot items: typed JSON blobs plus int8 status tensors. No pickle.

One JSON item per partition (so an untouched partition dedups), one int8 tensor for its
production status and one per consumer task for consumption status (zstd shrinks these to
almost nothing), and one JSON item each for the index manager and the sampler. Sets of global
indexes are written as sorted runs; ``reusable_indexes`` keeps its FIFO order.

:func:`encode` makes the JSON items of a :class:`.ControllerState`; :func:`controller_items`
adds the status tensors, in save order. Reading them back, within bounds a hostile bucket
cannot stretch, is :mod:`.controller_decode`'s job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...errors import FormatError
from ..tensors import tensor_bytes
from . import jsonval, layout
from .controller_state import ControllerState, FieldState, PartitionState, PartitionStatus
from .layout import MAX_INDEXES, encode_runs


@dataclass
class ItemSpec:
    """One item to add to a packer."""

    path: str
    data: Any  # a buffer
    kind: str
    dtype: str | None = None
    shape: list[int] | None = None
    meta: dict[str, Any] | None = None
    owner: Any = None  # keeps a tensor alive while its view is packed


# --- encode ------------------------------------------------------------------------------------


def _runs(s: set[int]) -> list[list[int]]:
    if len(s) < 64:
        return encode_runs(sorted(s))
    import numpy as np

    return encode_runs(np.sort(np.fromiter(s, dtype=np.int64, count=len(s))))


def _tensor_item(path: str, t: Any) -> ItemSpec:
    view, owner = tensor_bytes(t)
    return ItemSpec(path, view, "tensor", str(t.dtype).removeprefix("torch."), list(t.shape), owner=owner)


def _fast(v: Any, enc: jsonval.Encoder) -> Any:
    """Encode one value, skipping the encoder for the common shapes (int lists, empty dicts)."""
    t = type(v)
    if t is list and all(type(x) is int for x in v):
        return v
    if t is dict and not v:
        return {}
    return enc.encode(v)


def _int_map(d: dict[int, Any], enc: jsonval.Encoder) -> dict[str, Any]:
    """``{gi: value}`` as columns: key runs (insertion order) and values. Compact for many gis.

    Two shapes that dominate large partitions get denser columns: per-sample shapes that are
    int lists of one length (``flat`` + ``ndim``), and tags that are all empty (``empty``).
    """
    out: dict[str, Any] = {"gi": encode_runs(d.keys())}
    values = list(d.values())
    if values and all(type(v) is dict and not v for v in values):
        out["empty"] = True
        return out
    if values and all(type(v) is list for v in values):
        ndim = len(values[0])
        if all(len(v) == ndim for v in values):
            flat = [x for v in values for x in v]
            if all(type(x) is int for x in flat):
                out["flat"], out["ndim"] = flat, ndim
                return out
    out["v"] = [_fast(v, enc) for v in values]
    return out


def _field_doc(m: FieldState, enc: jsonval.Encoder) -> dict[str, Any]:
    return {
        "global_indexes": _runs(m.global_indexes),
        "dtype": enc.encode(m.dtype),
        "shape": enc.encode(m.shape),
        "is_nested": enc.encode(m.is_nested),
        "is_non_tensor": enc.encode(m.is_non_tensor),
        "per_sample_shapes": _int_map(m.per_sample_shapes, enc),
    }


def _partition_doc(p: PartitionState, enc: jsonval.Encoder) -> dict[str, Any]:
    return {
        "partition_id": p.partition_id,
        "created_at": enc.encode(p.created_at),
        "global_indexes": _runs(p.global_indexes),
        "pre_allocated": _runs(p.pre_allocated),
        "field_name_mapping": [[k, v] for k, v in p.status.field_name_mapping.items()],
        "field_metadata": [[name, _field_doc(m, enc)] for name, m in p.field_metadata.items()],
        "field_custom_backend_meta": _int_map(p.field_custom_backend_meta, enc),
        "custom_meta": _int_map(p.custom_meta, enc),
        "keys_mapping": {
            "k": [enc.encode(k) for k in p.keys_mapping],
            "gi": list(p.keys_mapping.values()),
        },
        "revert_keys_mapping": _int_map(p.revert_keys_mapping, enc),
        "consumption_tasks": list(p.status.consumption),
    }


def _json(doc: Any, where: str) -> bytes:
    """Compact UTF-8 JSON; a lone surrogate is a FormatError naming ``where`` and the place."""
    return jsonval.dump_tree(doc, where)


def _blob(path: str, body: bytes, pickled: bool) -> ItemSpec:
    return ItemSpec(path, body, "blob", meta={"enc": "json", **({"pickle": True} if pickled else {})})


def encode(state: ControllerState, *, allow_pickle: bool) -> dict[str, ItemSpec]:
    """The JSON items of ``state`` (partition documents, index manager, sampler), by path.

    Raises PickleNotAllowedError before any upload, and FormatError for a controller with
    more global indexes than a restore accepts (:data:`.layout.MAX_INDEXES`). Runs in the
    controller actor during a snapshot (:func:`.controller_capture.capture_encoded`), so only
    bytes travel to the coordinator.
    """
    im = state.index_manager
    if not 0 <= im.global_index_counter <= MAX_INDEXES:
        raise FormatError(
            f"the TransferQueue has allocated {im.global_index_counter} global indexes; a snapshot holds "
            f"at most {MAX_INDEXES}"
        )
    items: dict[str, ItemSpec] = {}
    for pid in sorted(state.partitions):
        enc = jsonval.Encoder(allow_pickle, f"partition {pid!r} metadata")
        body = _json(_partition_doc(state.partitions[pid], enc), f"the controller's metadata of partition {pid!r}")
        path = layout.partition_state_path(pid)
        items[path] = _blob(path, body, enc.pickled)
    im_doc = {
        "partition_to_indexes": [[pid, _runs(s)] for pid, s in im.partition_to_indexes.items()],
        "reusable_indexes": encode_runs(im.reusable_indexes),
        "global_index_counter": im.global_index_counter,
        "allocated_indexes": _runs(im.allocated_indexes),
    }
    path = layout.index_manager_path()
    items[path] = _blob(path, _json(im_doc, "the controller's index manager"), False)
    enc = jsonval.Encoder(allow_pickle, "sampler state")
    sampler_doc = enc.encode({"class": state.sampler.class_name, "state": state.sampler.state})
    sampler = _json(sampler_doc, "the controller's sampler state")
    path = layout.sampler_path()
    items[path] = _blob(path, sampler, enc.pickled)
    return items


def controller_items(json_items: dict[str, ItemSpec], statuses: dict[str, PartitionStatus]) -> list[ItemSpec]:
    """Every controller item in save order: ``json_items`` plus the status tensors of ``statuses``.

    The tensor items are views of the tensors in ``statuses``: make them from the final
    statuses (after the reconcile), and pack them before changing those tensors again.
    """
    specs: list[ItemSpec] = []
    for pid in sorted(statuses):
        status = statuses[pid]
        specs.append(json_items[layout.partition_state_path(pid)])
        specs.append(_tensor_item(layout.production_path(pid), status.production))
        for task, t in status.consumption.items():
            specs.append(_tensor_item(layout.consumption_path(pid, task), t))
    specs += [json_items[layout.index_manager_path()], json_items[layout.sampler_path()]]
    return specs
