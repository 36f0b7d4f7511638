"""Controller state <-> snapshot items: typed JSON blobs plus int8 status tensors. No pickle.

One JSON item per partition (so an untouched partition dedups), one int8 tensor for its
production status and one per consumer task for consumption status (zstd shrinks these to
almost nothing), and one JSON item each for the index manager and the sampler. Sets of global
indexes are written as sorted runs; ``reusable_indexes`` keeps its FIFO order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ...errors import FormatError
from ..tensors import tensor_bytes, tensor_from_bytes
from . import jsonval, layout
from .layout import decode_runs, encode_runs


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


def _partition_doc(p: dict[str, Any], enc: jsonval.Encoder) -> dict[str, Any]:
    return {
        "partition_id": p["partition_id"],
        "created_at": enc.encode(p["created_at"]),
        "global_indexes": _runs(p["global_indexes"]),
        "pre_allocated": _runs(p["pre_allocated"]),
        "field_name_mapping": [[k, v] for k, v in p["field_name_mapping"].items()],
        "field_metadata": [
            [
                name,
                {
                    "global_indexes": _runs(m["global_indexes"]),
                    "dtype": enc.encode(m["dtype"]),
                    "shape": enc.encode(m["shape"]),
                    "is_nested": enc.encode(m["is_nested"]),
                    "is_non_tensor": enc.encode(m["is_non_tensor"]),
                    "per_sample_shapes": _int_map(m["per_sample_shapes"], enc),
                },
            ]
            for name, m in p["field_metadata"].items()
        ],
        "field_custom_backend_meta": _int_map(p["field_custom_backend_meta"], enc),
        "custom_meta": _int_map(p["custom_meta"], enc),
        "keys_mapping": {
            "k": [enc.encode(k) for k in p["keys_mapping"]],
            "gi": list(p["keys_mapping"].values()),
        },
        "revert_keys_mapping": _int_map(p["revert_keys_mapping"], enc),
        "consumption_tasks": list(p["consumption"]),
    }


def _json(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode()


def encode_controller_json(state: dict[str, Any], *, allow_pickle: bool) -> dict[str, ItemSpec]:
    """The JSON items (partition docs, index manager, sampler), by path; no status tensors.

    Raises PickleNotAllowedError before any upload. Runs in the controller actor during a
    snapshot (:func:`.capture.capture_encoded`), so only bytes travel to the coordinator.
    """
    specs: dict[str, ItemSpec] = {}
    for pid in sorted(state["partitions"]):
        p = state["partitions"][pid]
        enc = jsonval.Encoder(allow_pickle, f"partition {pid!r} metadata")
        body = _json(_partition_doc(p, enc))
        meta: dict[str, Any] = {"enc": "json"}
        if enc.pickled:
            meta["pickle"] = True
        path = layout.partition_state_path(pid)
        specs[path] = ItemSpec(path, body, "blob", meta=meta)
    im = state["index_manager"]
    im_doc = {
        "partition_to_indexes": [[pid, _runs(s)] for pid, s in im["partition_to_indexes"].items()],
        "reusable_indexes": encode_runs(im["reusable_indexes"]),
        "global_index_counter": im["global_index_counter"],
        "allocated_indexes": _runs(im["allocated_indexes"]),
    }
    path = layout.index_manager_path()
    specs[path] = ItemSpec(path, _json(im_doc), "blob", meta={"enc": "json"})
    enc = jsonval.Encoder(allow_pickle, "sampler state")
    sampler = _json(enc.encode(state["sampler"]))
    path = layout.sampler_path()
    specs[path] = ItemSpec(
        path, sampler, "blob", meta={"enc": "json", **({"pickle": True} if enc.pickled else {})}
    )
    return specs


def controller_specs(partitions: dict[str, Any], json_specs: dict[str, ItemSpec]) -> list[ItemSpec]:
    """Every controller item in save order: ``json_specs`` plus the status tensors.

    ``partitions`` maps each partition to a dict holding at least its ``production`` tensor
    and its ``consumption`` tensors by task. The tensor items are views, so a change to
    those tensors before the items are packed (the reconcile) is what gets saved.
    """
    specs: list[ItemSpec] = []
    for pid in sorted(partitions):
        p = partitions[pid]
        specs.append(json_specs[layout.partition_state_path(pid)])
        specs.append(_tensor_item(layout.production_path(pid), p["production"]))
        for task, t in p["consumption"].items():
            specs.append(_tensor_item(layout.consumption_path(pid, task), t))
    specs += [json_specs[layout.index_manager_path()], json_specs[layout.sampler_path()]]
    return specs


def encode_controller(state: dict[str, Any], *, allow_pickle: bool) -> list[ItemSpec]:
    """All controller items of a snapshot; raises PickleNotAllowedError before any upload."""
    return controller_specs(state["partitions"], encode_controller_json(state, allow_pickle=allow_pickle))


def controller_paths(partitions: list[str], tasks: dict[str, list[str]] | None = None) -> list[str]:
    """The item paths :func:`decode_controller` reads (consumption paths need ``tasks``)."""
    paths = [layout.index_manager_path(), layout.sampler_path()]
    for pid in partitions:
        paths += [layout.partition_state_path(pid), layout.production_path(pid)]
        paths += [layout.consumption_path(pid, t) for t in (tasks or {}).get(pid, [])]
    return paths


def _load_json(data: Any, where: str) -> Any:
    try:
        return json.loads(bytes(data))
    except (ValueError, UnicodeDecodeError) as exc:
        raise FormatError(f"{where}: not valid JSON: {exc}") from exc


def decode_partition_doc(data: Any, pid: str, *, allow_pickle: bool) -> dict[str, Any]:
    """Parse one partition item; typed values are decoded later, by :func:`decode_controller`."""
    doc = _load_json(data, f"partition {pid!r} metadata")
    if not isinstance(doc, dict) or doc.get("partition_id") != pid:
        raise FormatError(f"partition {pid!r} metadata item is malformed")
    return doc


def _unfast(node: Any, dec: jsonval.Decoder) -> Any:
    if type(node) is list and all(type(x) is int for x in node):
        return node
    return dec.decode(node)


def _un_int_map(node: dict[str, Any], dec: jsonval.Decoder) -> dict[int, Any]:
    keys = decode_runs(node["gi"])
    if node.get("empty"):
        return {k: {} for k in keys}
    if "flat" in node:
        flat, ndim = node["flat"], int(node["ndim"])
        if len(flat) != len(keys) * ndim:
            raise FormatError(f"{dec.where}: a shape map lists {len(flat)} numbers for {len(keys)} indexes")
        return {k: flat[i * ndim : (i + 1) * ndim] for i, k in enumerate(keys)}
    values = node["v"]
    if len(keys) != len(values):
        raise FormatError(f"{dec.where}: a map lists {len(keys)} indexes for {len(values)} values")
    return {k: _unfast(v, dec) for k, v in zip(keys, values, strict=True)}


def decode_controller(
    partitions: list[str],
    docs: dict[str, dict[str, Any]],
    values: dict[str, Any],
    items: dict[str, Any],
    *,
    allow_pickle: bool,
) -> dict[str, Any]:
    """Rebuild the state dict of :func:`.capture.capture_controller` from item bytes."""
    out: dict[str, Any] = {}
    for pid in partitions:
        doc = docs[pid]
        dec = jsonval.Decoder(allow_pickle, f"partition {pid!r} metadata")
        prod_item = items[layout.production_path(pid)]
        production = tensor_from_bytes(values[prod_item.path], prod_item.dtype, prod_item.shape)
        consumption = {}
        for task in doc["consumption_tasks"]:
            it = items[layout.consumption_path(pid, task)]
            consumption[task] = tensor_from_bytes(values[it.path], it.dtype, it.shape)
        km = doc["keys_mapping"]
        out[pid] = {
            "partition_id": pid,
            "created_at": dec.decode(doc["created_at"]),
            "production": production,
            "consumption": consumption,
            "global_indexes": set(decode_runs(doc["global_indexes"])),
            "pre_allocated": set(decode_runs(doc["pre_allocated"])),
            "field_name_mapping": {k: int(v) for k, v in doc["field_name_mapping"]},
            "field_metadata": {
                name: {
                    "global_indexes": set(decode_runs(m["global_indexes"])),
                    "dtype": dec.decode(m["dtype"]),
                    "shape": dec.decode(m["shape"]),
                    "is_nested": dec.decode(m["is_nested"]),
                    "is_non_tensor": dec.decode(m["is_non_tensor"]),
                    "per_sample_shapes": _un_int_map(m["per_sample_shapes"], dec),
                }
                for name, m in doc["field_metadata"]
            },
            "field_custom_backend_meta": _un_int_map(doc["field_custom_backend_meta"], dec),
            "custom_meta": _un_int_map(doc["custom_meta"], dec),
            "keys_mapping": {dec.decode(k): int(g) for k, g in zip(km["k"], km["gi"], strict=True)},
            "revert_keys_mapping": _un_int_map(doc["revert_keys_mapping"], dec),
        }
    im_doc = _load_json(values[layout.index_manager_path()], "index manager")
    index_manager = {
        "partition_to_indexes": {pid: set(decode_runs(r)) for pid, r in im_doc["partition_to_indexes"]},
        "reusable_indexes": decode_runs(im_doc["reusable_indexes"]),
        "global_index_counter": int(im_doc["global_index_counter"]),
        "allocated_indexes": set(decode_runs(im_doc["allocated_indexes"])),
    }
    sampler = jsonval.loads(values[layout.sampler_path()], allow_pickle=allow_pickle, where="sampler state")
    return {"partitions": out, "index_manager": index_manager, "sampler": sampler}
