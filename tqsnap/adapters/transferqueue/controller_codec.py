"""Controller state <-> snapshot items: typed JSON blobs plus int8 status tensors. No pickle.

One JSON item per partition (so an untouched partition dedups), one int8 tensor for its
production status and one per consumer task for consumption status (zstd shrinks these to
almost nothing), and one JSON item each for the index manager and the sampler. Sets of global
indexes are written as sorted runs; ``reusable_indexes`` keeps its FIFO order.
"""

from __future__ import annotations

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
    return encode_runs(sorted(s))


def _tensor_item(path: str, t: Any) -> ItemSpec:
    view, owner = tensor_bytes(t)
    return ItemSpec(path, view, "tensor", str(t.dtype).removeprefix("torch."), list(t.shape), owner=owner)


def encode_controller(state: dict[str, Any], *, allow_pickle: bool) -> list[ItemSpec]:
    """All controller items of a snapshot; raises PickleNotAllowedError before any upload."""
    specs: list[ItemSpec] = []
    for pid in sorted(state["partitions"]):
        p = state["partitions"][pid]
        doc = {
            "partition_id": p["partition_id"],
            "created_at": p["created_at"],
            "global_indexes": _runs(p["global_indexes"]),
            "pre_allocated": _runs(p["pre_allocated"]),
            "field_name_mapping": [[k, v] for k, v in p["field_name_mapping"].items()],
            "field_metadata": [
                [
                    name,
                    {
                        "global_indexes": _runs(m["global_indexes"]),
                        "dtype": m["dtype"],
                        "shape": m["shape"],
                        "is_nested": m["is_nested"],
                        "is_non_tensor": m["is_non_tensor"],
                        "per_sample_shapes": m["per_sample_shapes"],
                    },
                ]
                for name, m in p["field_metadata"].items()
            ],
            "field_custom_backend_meta": p["field_custom_backend_meta"],
            "custom_meta": p["custom_meta"],
            "keys_mapping": [[k, v] for k, v in p["keys_mapping"].items()],
            "revert_keys_mapping": [[k, v] for k, v in p["revert_keys_mapping"].items()],
            "consumption_tasks": list(p["consumption"]),
        }
        body = jsonval.dumps(doc, allow_pickle=allow_pickle, where=f"partition {pid!r} metadata")
        specs.append(ItemSpec(layout.partition_state_path(pid), body, "blob", meta={"enc": "json"}))
        specs.append(_tensor_item(layout.production_path(pid), p["production"]))
        for task, t in p["consumption"].items():
            specs.append(_tensor_item(layout.consumption_path(pid, task), t))
    im = state["index_manager"]
    im_doc = {
        "partition_to_indexes": [[pid, _runs(s)] for pid, s in im["partition_to_indexes"].items()],
        "reusable_indexes": encode_runs(im["reusable_indexes"]),
        "global_index_counter": im["global_index_counter"],
        "allocated_indexes": _runs(im["allocated_indexes"]),
    }
    specs.append(
        ItemSpec(
            layout.index_manager_path(),
            jsonval.dumps(im_doc, where="index manager"),
            "blob",
            meta={"enc": "json"},
        )
    )
    sampler = jsonval.dumps(state["sampler"], allow_pickle=allow_pickle, where="sampler state")
    specs.append(ItemSpec(layout.sampler_path(), sampler, "blob", meta={"enc": "json"}))
    return specs


def controller_paths(partitions: list[str], tasks: dict[str, list[str]] | None = None) -> list[str]:
    """The item paths :func:`decode_controller` reads (consumption paths need ``tasks``)."""
    paths = [layout.index_manager_path(), layout.sampler_path()]
    for pid in partitions:
        paths += [layout.partition_state_path(pid), layout.production_path(pid)]
        paths += [layout.consumption_path(pid, t) for t in (tasks or {}).get(pid, [])]
    return paths


def decode_partition_doc(data: Any, pid: str, *, allow_pickle: bool) -> dict[str, Any]:
    doc = jsonval.loads(data, allow_pickle=allow_pickle, where=f"partition {pid!r} metadata")
    if not isinstance(doc, dict) or doc.get("partition_id") != pid:
        raise FormatError(f"partition {pid!r} metadata item is malformed")
    return doc


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
        prod_item = items[layout.production_path(pid)]
        production = tensor_from_bytes(values[prod_item.path], prod_item.dtype, prod_item.shape)
        consumption = {}
        for task in doc["consumption_tasks"]:
            it = items[layout.consumption_path(pid, task)]
            consumption[task] = tensor_from_bytes(values[it.path], it.dtype, it.shape)
        out[pid] = {
            "partition_id": pid,
            "created_at": doc["created_at"],
            "production": production,
            "consumption": consumption,
            "global_indexes": set(decode_runs(doc["global_indexes"])),
            "pre_allocated": set(decode_runs(doc["pre_allocated"])),
            "field_name_mapping": {k: int(v) for k, v in doc["field_name_mapping"]},
            "field_metadata": {
                name: {
                    "global_indexes": set(decode_runs(m["global_indexes"])),
                    "dtype": m["dtype"],
                    "shape": m["shape"],
                    "is_nested": m["is_nested"],
                    "is_non_tensor": m["is_non_tensor"],
                    "per_sample_shapes": m["per_sample_shapes"],
                }
                for name, m in doc["field_metadata"]
            },
            "field_custom_backend_meta": doc["field_custom_backend_meta"],
            "custom_meta": doc["custom_meta"],
            "keys_mapping": dict(doc["keys_mapping"]),
            "revert_keys_mapping": {int(k): v for k, v in doc["revert_keys_mapping"]},
        }
    im_doc = jsonval.loads(values[layout.index_manager_path()], where="index manager")
    index_manager = {
        "partition_to_indexes": {pid: set(decode_runs(r)) for pid, r in im_doc["partition_to_indexes"]},
        "reusable_indexes": decode_runs(im_doc["reusable_indexes"]),
        "global_index_counter": int(im_doc["global_index_counter"]),
        "allocated_indexes": set(decode_runs(im_doc["allocated_indexes"])),
    }
    sampler = jsonval.loads(values[layout.sampler_path()], allow_pickle=allow_pickle, where="sampler state")
    return {"partitions": out, "index_manager": index_manager, "sampler": sampler}
