"""DCP's checkpoint :class:`~torch.distributed.checkpoint.metadata.Metadata` as JSON, never pickle.

DCP's own writers pickle ``Metadata`` into a ``.metadata`` file, so loading a checkpoint from a
shared bucket can run code. tqsnap stores the same information as plain JSON inside the
snapshot's manifest (``extra["dcp"]``)::

    {
      "format": 1,
      "version": "1.0.0",                       # Metadata.version
      "state_dict": {
        "<fqn>": {"tensor": {"dtype": "float32", "size": [..],
                             "properties": {"layout": "strided", "requires_grad": false,
                                            "memory_format": "contiguous_format", "pin_memory": false},
                             "chunks": [[offsets, sizes, item_path], ...]}},
        "<fqn>": {"bytes": item_path}
      },
      "planner_data": <tagged JSON value>,      # e.g. DefaultSavePlanner's fqn -> key path
      "storage_meta": {"checkpoint_id": .., "save_id": .., "load_id": .., "modules": [..]} | null
    }

Each chunk (and each bytes value) names the item that holds its bytes, which is the per-entry
``StorageInfo`` of DCP's file writers: where the bytes live. Planner data may hold any mix of
``None``, booleans, numbers, strings, lists, tuples, ``torch.Size`` and dicts; other objects
are refused with :class:`~tqsnap.errors.PickleNotAllowedError` instead of being pickled.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    StorageMeta,
    TensorProperties,
    TensorStorageMetadata,
)

from ...errors import ManifestError, PickleNotAllowedError
from ...format import typed_json
from ..tensors import dtype_from_name, dtype_name

#: Version of the layout above; a reader refuses any other.
METADATA_FORMAT = 1


# --- generic values (planner data) -----------------------------------------------------------


def encode_value(value: Any, where: str = "planner_data") -> Any:
    """Encode a plain Python value as JSON, tagging what JSON cannot say (tuples, odd keys)."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return typed_json.encode_float(value)
    if isinstance(value, torch.Size):
        return {"$size": [int(v) for v in value]}
    if isinstance(value, list):
        return [encode_value(v, where) for v in value]
    if isinstance(value, tuple):
        return typed_json.tuple_node([encode_value(v, where) for v in value])
    if isinstance(value, dict):
        if typed_json.has_plain_keys(value):
            return {k: encode_value(v, f"{where}.{k}") for k, v in value.items()}
        return typed_json.dict_node([[encode_value(k, where), encode_value(v, where)] for k, v in value.items()])
    raise PickleNotAllowedError(
        f"DCP {where} holds a {type(value).__name__}, which only pickle can store; tqsnap.dcp keeps "
        "checkpoint metadata as JSON. Use a planner whose planner_data is plain dicts, lists, "
        "tuples, strings and numbers"
    )


def decode_value(node: Any) -> Any:
    """The inverse of :func:`encode_value`."""
    if isinstance(node, list):
        return [decode_value(v) for v in node]
    if not isinstance(node, dict):
        return node
    if len(node) == 1:
        ((tag, body),) = node.items()
        typed = typed_json.value_tag(tag)
        if typed == typed_json.FLOAT:
            return typed_json.decode_float(body, "DCP planner_data")
        if tag == "$size":
            return torch.Size(int(v) for v in body)
        if typed == typed_json.TUPLE:
            return tuple(decode_value(v) for v in typed_json.sequence(body, "DCP planner_data"))
        if typed == typed_json.DICT:
            return {
                typed_json.hashable(decode_value(k), "DCP planner_data"): decode_value(v)
                for k, v in typed_json.pairs(body, "DCP planner_data")
            }
    return {k: decode_value(v) for k, v in node.items()}


# --- tensor properties -----------------------------------------------------------------------


def _torch_attr(name: str, kind: type, what: str) -> Any:
    value = getattr(torch, name, None) if isinstance(name, str) and name.isidentifier() else None
    if not isinstance(value, kind):
        raise ManifestError(f"unknown torch {what} {name!r} in DCP metadata")
    return value


def _encode_properties(props: TensorProperties) -> dict[str, Any]:
    return {
        "layout": str(props.layout).removeprefix("torch."),
        "requires_grad": bool(props.requires_grad),
        "memory_format": str(props.memory_format).removeprefix("torch."),
        "pin_memory": bool(props.pin_memory),
    }


def _decode_properties(dtype: str, d: Mapping[str, Any]) -> TensorProperties:
    return TensorProperties(
        dtype=dtype_from_name(dtype),
        layout=_torch_attr(d.get("layout", "strided"), torch.layout, "layout"),
        requires_grad=bool(d.get("requires_grad", False)),
        memory_format=_torch_attr(
            d.get("memory_format", "contiguous_format"), torch.memory_format, "memory format"
        ),
        pin_memory=bool(d.get("pin_memory", False)),
    )


# --- Metadata --------------------------------------------------------------------------------


def encode_metadata(md: Metadata, paths: Mapping[MetadataIndex, str]) -> dict[str, Any]:
    """Encode ``md``; ``paths`` maps each written chunk or value to the item holding its bytes."""
    entries: dict[str, Any] = {}
    for fqn, smd in md.state_dict_metadata.items():
        if isinstance(smd, TensorStorageMetadata):
            chunks = []
            for chunk in smd.chunks:
                offsets = [int(o) for o in chunk.offsets]
                chunks.append([offsets, [int(s) for s in chunk.sizes], _path(paths, fqn, offsets)])
            entries[fqn] = {
                "tensor": {
                    "dtype": dtype_name(smd.properties.dtype),
                    "size": [int(s) for s in smd.size],
                    "properties": _encode_properties(smd.properties),
                    "chunks": chunks,
                }
            }
        elif isinstance(smd, BytesStorageMetadata):
            entries[fqn] = {"bytes": _path(paths, fqn, None)}
        else:
            raise PickleNotAllowedError(
                f"DCP metadata for {fqn!r} is a {type(smd).__name__}; tqsnap.dcp stores only tensor "
                "and bytes entries"
            )
    return {
        "format": METADATA_FORMAT,
        "version": md.version,
        "state_dict": entries,
        "planner_data": encode_value(md.planner_data),
        "storage_meta": _encode_storage_meta(md.storage_meta),
    }


def _path(paths: Mapping[MetadataIndex, str], fqn: str, offsets: list[int] | None) -> str:
    try:
        return paths[MetadataIndex(fqn, offsets)]
    except KeyError:
        where = fqn if offsets is None else f"{fqn} at offset {offsets}"
        raise ManifestError(
            f"no rank reported writing {where}; the save plan and the write results disagree "
            "(a custom planner or storage writer dropped an item)"
        ) from None


def _encode_storage_meta(sm: StorageMeta | None) -> dict[str, Any] | None:
    if sm is None:
        return None
    cid = sm.checkpoint_id
    return {
        "checkpoint_id": os.fspath(cid) if cid is not None else None,
        "save_id": sm.save_id,
        "load_id": sm.load_id,
        "modules": list(sm.modules),
    }


def decode_metadata(doc: Any, where: str) -> Metadata:
    """Rebuild ``Metadata`` whose ``storage_data`` maps each :class:`MetadataIndex` to its item path.

    Every malformed field raises :class:`~tqsnap.errors.ManifestError` naming ``where``.
    """
    if not isinstance(doc, dict) or doc.get("format") != METADATA_FORMAT:
        found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise ManifestError(
            f"{where} holds no DCP metadata of format {METADATA_FORMAT} (found {found!r}); "
            "it was not written by tqsnap.dcp or by a newer version"
        )
    try:
        state: dict[str, TensorStorageMetadata | BytesStorageMetadata] = {}
        storage: dict[MetadataIndex, str] = {}
        for fqn, entry in doc["state_dict"].items():
            if "bytes" in entry:
                state[fqn] = BytesStorageMetadata()
                storage[MetadataIndex(fqn)] = str(entry["bytes"])
                continue
            t = entry["tensor"]
            chunks = []
            for i, (offsets, sizes, path) in enumerate(t["chunks"]):
                chunks.append(ChunkStorageMetadata(torch.Size(offsets), torch.Size(sizes)))
                storage[MetadataIndex(fqn, offsets, i)] = str(path)
            state[fqn] = TensorStorageMetadata(
                _decode_properties(t["dtype"], t.get("properties") or {}), torch.Size(t["size"]), chunks
            )
        sm = doc.get("storage_meta")
        storage_meta = (
            StorageMeta(
                sm.get("checkpoint_id"), sm.get("save_id"), sm.get("load_id"), list(sm.get("modules") or [])
            )
            if sm
            else StorageMeta()
        )
        return Metadata(
            state_dict_metadata=state,
            planner_data=decode_value(doc.get("planner_data")),
            storage_data=storage,
            storage_meta=storage_meta,
            version=doc.get("version"),
        )
    except ManifestError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ManifestError(f"DCP metadata in {where} is malformed: {type(exc).__name__}: {exc}") from exc
