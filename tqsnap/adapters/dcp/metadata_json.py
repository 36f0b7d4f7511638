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

from ...errors import FormatError, ManifestError, PickleNotAllowedError
from ...format import strict, typed_json
from ...format.manifest import MAX_DIMS
from ..tensors import dtype_from_name, dtype_name

#: Version of the layout above; a reader refuses any other.
METADATA_FORMAT = 1
#: How deeply planner data may nest (the JSON it comes from is bounded more loosely).
MAX_VALUE_DEPTH = 64


# --- generic values (planner data) -----------------------------------------------------------


def encode_value(value: Any, where: str = "planner_data") -> Any:
    """Encode a plain Python value as JSON, tagging what JSON cannot say (tuples, odd keys)."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return typed_json.encode_int(int(value))  # $int past 2**53-1, which doubles would round
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


def decode_value(node: Any, where: str = "DCP planner_data", depth: int = 0) -> Any:
    """The inverse of :func:`encode_value`; a typed error for anything it would not have written.

    Nesting is bounded (:data:`MAX_VALUE_DEPTH`) so that a crafted document gives a
    :class:`~tqsnap.errors.ManifestError` instead of a ``RecursionError`` deep inside DCP.
    """
    if depth > MAX_VALUE_DEPTH:
        raise ManifestError(f"{where} nests deeper than {MAX_VALUE_DEPTH} levels")
    if isinstance(node, list):
        return [decode_value(v, where, depth + 1) for v in node]
    if node is None or isinstance(node, bool | int | float | str):
        return node
    if not isinstance(node, dict):
        raise ManifestError(f"{where} holds a {type(node).__name__}, which JSON cannot hold")
    if len(node) == 1:
        ((tag, body),) = node.items()
        typed = typed_json.value_tag(tag)
        if typed == typed_json.FLOAT:
            return typed_json.decode_float(body, where)
        if typed == typed_json.INT:
            return typed_json.decode_int(body, where)
        if tag == "$size":
            return torch.Size(_ints(body, f"{where}: $size", hi=strict.MAX_BYTES, max_len=MAX_DIMS))
        if typed == typed_json.TUPLE:
            return tuple(decode_value(v, where, depth + 1) for v in typed_json.sequence(body, where))
        if typed == typed_json.DICT:
            return {
                typed_json.hashable(decode_value(k, where, depth + 1), where): decode_value(v, where, depth + 1)
                for k, v in typed_json.pairs(body, where)
            }
        if tag.startswith("$"):  # writers spell a dict with a $ key as $dict: this is a tag we lack
            raise ManifestError(f"{where} holds an unknown typed value {tag!r:.40}; a newer tqsnap wrote it?")
    return {k: decode_value(v, where, depth + 1) for k, v in node.items()}


def _ints(value: Any, where: str, *, hi: int, max_len: int) -> list[int]:
    """A JSON list of plain integers in ``[0, hi]``: no bools, floats, strings or negatives."""
    if type(value) is not list or len(value) > max_len:
        raise ManifestError(f"{where} must be a list of at most {max_len} integers, not {value!r:.60}")
    return [strict.check_int(v, where, hi=hi) for v in value]


# --- tensor properties -----------------------------------------------------------------------


def _torch_attr(name: Any, kind: type, what: str) -> Any:
    value = getattr(torch, name, None) if isinstance(name, str) and name.isidentifier() else None
    if not isinstance(value, kind):
        raise ManifestError(f"unknown torch {what} {name!r:.60} in DCP metadata")
    return value


def _encode_properties(props: TensorProperties) -> dict[str, Any]:
    return {
        "layout": str(props.layout).removeprefix("torch."),
        "requires_grad": bool(props.requires_grad),
        "memory_format": str(props.memory_format).removeprefix("torch."),
        "pin_memory": bool(props.pin_memory),
    }


def _decode_properties(dtype: Any, d: Any, where: str) -> TensorProperties:
    """Strict: a dtype name, a strided layout (the only one tqsnap stores), real booleans."""
    if not isinstance(dtype, str) or len(dtype) > 64:
        raise ManifestError(f"{where}: dtype must be a torch dtype name, not {dtype!r:.60}")
    if d is None:
        d = {}
    if not isinstance(d, dict):
        raise ManifestError(f"{where}: properties must be an object, not {type(d).__name__}")
    flags = {name: d.get(name, False) for name in ("requires_grad", "pin_memory")}
    for name, flag in flags.items():
        if type(flag) is not bool:
            raise ManifestError(f"{where}: properties.{name} must be true or false, not {flag!r:.40}")
    layout = _torch_attr(d.get("layout", "strided"), torch.layout, "layout")
    if layout != torch.strided:
        raise ManifestError(f"{where}: layout {layout} is not strided; tqsnap.dcp stores dense tensors only")
    try:
        torch_dtype = dtype_from_name(dtype)
    except FormatError as exc:
        raise ManifestError(f"{where}: {exc}") from None
    return TensorProperties(
        dtype=torch_dtype,
        layout=layout,
        requires_grad=flags["requires_grad"],
        memory_format=_torch_attr(
            d.get("memory_format", "contiguous_format"), torch.memory_format, "memory format"
        ),
        pin_memory=flags["pin_memory"],
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

    Strict, because the document comes from whoever can write the bucket: exact JSON types,
    non-negative bounded sizes, one ``tensor`` or ``bytes`` entry per fqn, ``offsets`` and
    ``sizes`` with as many dimensions as the tensor. Every malformed field raises
    :class:`~tqsnap.errors.ManifestError` naming ``where``; nothing else escapes, because DCP
    turns any other exception from ``read_metadata`` into a bare ``AssertionError``. Whether
    the chunks fit their tensor and agree with the manifest's items is :mod:`.checks`' job.
    """
    if not isinstance(doc, dict) or type(doc.get("format")) is not int or doc["format"] != METADATA_FORMAT:
        found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise ManifestError(
            f"{where} holds no DCP metadata of format {METADATA_FORMAT} (found {found!r:.40}); "
            "it was not written by tqsnap.dcp or by a newer version"
        )
    try:
        state, storage = _decode_entries(doc.get("state_dict"), where)
        version = doc.get("version")
        if version is not None and (not isinstance(version, str) or len(version) > 64):
            raise ManifestError(f"DCP metadata in {where}: version must be a short string, not {version!r:.40}")
        return Metadata(
            state_dict_metadata=state,
            planner_data=decode_value(doc.get("planner_data"), f"DCP planner_data in {where}"),
            storage_data=storage,
            storage_meta=_decode_storage_meta(doc.get("storage_meta"), where),
            version=version,
        )
    except ManifestError:
        raise
    except (FormatError, KeyError, TypeError, ValueError, AttributeError, OverflowError, RecursionError) as exc:
        # A safety net: the checks above are meant to leave nothing for it.
        raise ManifestError(f"DCP metadata in {where} is malformed: {type(exc).__name__}: {exc}") from exc


def _decode_entries(
    entries: Any, where: str
) -> tuple[dict[str, TensorStorageMetadata | BytesStorageMetadata], dict[MetadataIndex, str]]:
    if not isinstance(entries, dict):
        raise ManifestError(f"DCP metadata in {where}: state_dict must be an object")
    state: dict[str, TensorStorageMetadata | BytesStorageMetadata] = {}
    storage: dict[MetadataIndex, str] = {}
    for fqn, entry in entries.items():
        at = f"DCP metadata in {where}: entry {fqn!r:.200}"
        tensor, bytes_path = split_entry(entry, at)
        if bytes_path is not None:
            state[fqn] = BytesStorageMetadata()
            storage[MetadataIndex(fqn)] = bytes_path
            continue
        size, chunk_list = decode_tensor_chunks(tensor, at)
        chunks = []
        for i, (offsets, sizes, path) in enumerate(chunk_list):
            chunks.append(ChunkStorageMetadata(torch.Size(offsets), torch.Size(sizes)))
            storage[MetadataIndex(fqn, offsets, i)] = path
        state[fqn] = TensorStorageMetadata(
            _decode_properties(tensor.get("dtype"), tensor.get("properties"), at), torch.Size(size), chunks
        )
    return state, storage


def split_entry(entry: Any, at: str) -> tuple[dict[str, Any], str | None]:
    """One state-dict entry, ``{"tensor": {...}}`` or ``{"bytes": item path}``: (tensor, None) or ({}, path).

    Shared with the hyper_parallel adapter, whose metadata stores entries the same way.
    """
    if not isinstance(entry, dict) or len(entry) != 1 or not {"bytes", "tensor"} & entry.keys():
        raise ManifestError(f"{at} must be one object: {{'tensor': ...}} or {{'bytes': item path}}")
    if "bytes" in entry:
        return {}, item_path(entry["bytes"], at)
    tensor = entry["tensor"]
    if not isinstance(tensor, dict):
        raise ManifestError(f"{at}: tensor must be an object")
    return tensor, None


def decode_tensor_chunks(tensor: dict[str, Any], at: str) -> tuple[list[int], list[tuple[list[int], list[int], str]]]:
    """A tensor entry's global size and its chunks as (offsets, sizes, item path), every one checked.

    Offsets and sizes are plain integers within the byte limit, one per dimension of the size.
    """
    size = _ints(tensor.get("size"), f"{at}: size", hi=strict.MAX_BYTES, max_len=MAX_DIMS)
    chunk_list = tensor.get("chunks")
    if type(chunk_list) is not list:
        raise ManifestError(f"{at}: chunks must be a list")
    chunks = []
    for i, chunk in enumerate(chunk_list):
        if type(chunk) is not list or len(chunk) != 3:
            raise ManifestError(f"{at}: chunk {i} must be [offsets, sizes, item path]")
        offsets = _ints(chunk[0], f"{at}: chunk {i} offsets", hi=strict.MAX_BYTES, max_len=MAX_DIMS)
        sizes = _ints(chunk[1], f"{at}: chunk {i} sizes", hi=strict.MAX_BYTES, max_len=MAX_DIMS)
        if len(offsets) != len(size) or len(sizes) != len(size):
            raise ManifestError(
                f"{at}: chunk {i} has {len(offsets)} offsets and {len(sizes)} sizes for a "
                f"{len(size)}-dimensional tensor"
            )
        chunks.append((offsets, sizes, item_path(chunk[2], f"{at}: chunk {i}")))
    return size, chunks


def item_path(path: Any, where: str) -> str:
    """An item path as metadata names it: a non-empty string of at most 4096 characters."""
    if not isinstance(path, str) or not path or len(path) > 4096:
        raise ManifestError(f"{where}: an item path must be a non-empty string, not {path!r:.60}")
    return path


def _decode_storage_meta(sm: Any, where: str) -> StorageMeta:
    if sm is None:
        return StorageMeta()
    if not isinstance(sm, dict):
        raise ManifestError(f"DCP metadata in {where}: storage_meta must be an object or null")
    fields = {}
    for name in ("checkpoint_id", "save_id", "load_id"):
        value = sm.get(name)
        if value is not None and (not isinstance(value, str) or len(value) > 4096):
            raise ManifestError(f"DCP metadata in {where}: storage_meta.{name} must be a string or null")
        fields[name] = value
    modules = sm.get("modules") or []
    if type(modules) is not list or not all(isinstance(m, str) for m in modules):
        raise ManifestError(f"DCP metadata in {where}: storage_meta.modules must be a list of strings")
    return StorageMeta(fields["checkpoint_id"], fields["save_id"], fields["load_id"], list(modules))
