"""hyper_parallel's checkpoint ``Metadata`` as JSON, never pickle.

hyper_parallel's own file writer pickles ``Metadata`` into ``.metadata``, so loading a
checkpoint from a shared bucket can run code. tqsnap stores the same information as plain JSON
inside the snapshot's manifest (``extra["hyper_parallel"]``)::

    {
      "format": 1,
      "version": "2.0",                           # Metadata.version, one of KNOWN_VERSIONS
      "state_dict": {
        "<fqn>": {"tensor": {"dtype": "torch.float32", "requires_grad": false,
                             "memory_format": null, "size": [..],
                             "chunks": [[offsets, sizes, item_path], ...]}},
        "<fqn>": {"bytes": item_path}
      },
      "planner_data": <tagged JSON value>         # as in the DCP adapter
    }

``dtype`` is hyper_parallel's own dtype string (``"torch.bfloat16"`` on torch, ``"BFloat16"``
on MindSpore), kept verbatim; the manifest item beside it holds tqsnap's dtype name of the
bytes actually stored, and the reader checks that the two agree. Planner data goes through the
DCP adapter's tagged encoding (:func:`tqsnap.adapters.dcp.metadata_json.encode_value`), which
refuses anything only pickle could store.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...errors import FormatError, ManifestError, PickleNotAllowedError, UnsupportedFormatError
from ..dcp.metadata_json import decode_tensor_chunks, decode_value, encode_value, split_entry
from .types import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    TensorProperties,
    TensorStorageMetadata,
)

#: Version of the JSON layout above; a reader refuses any other.
METADATA_FORMAT = 1
#: hyper_parallel ``Metadata.version`` values whose meaning is known: 1.0 and 2.0 describe
#: the same structure (its ``versioning.py`` migrates 1.0 to 2.0 by relabelling).
KNOWN_VERSIONS = ("1.0", "2.0")


def check_version(version: Any, where: str) -> str:
    """``version`` if it is one of :data:`KNOWN_VERSIONS`, else :class:`UnsupportedFormatError`."""
    if not isinstance(version, str) or version not in KNOWN_VERSIONS:
        raise UnsupportedFormatError(
            f"{where}: hyper_parallel metadata version {version!r:.40} is not one tqsnap knows "
            f"({', '.join(KNOWN_VERSIONS)}); upgrade tqsnap to read it, or save with a hyper_parallel "
            "whose metadata version it supports"
        )
    return version


def encode_metadata(md: Metadata, paths: Mapping[MetadataIndex, str], where: str) -> dict[str, Any]:
    """Encode ``md``; ``paths`` maps each written chunk or value to the item holding its bytes."""
    version = check_version(getattr(md, "version", "1.0"), where)
    entries: dict[str, Any] = {}
    for fqn, smd in md.state_dict_metadata.items():
        if isinstance(smd, BytesStorageMetadata):
            entries[fqn] = {"bytes": _path(paths, fqn, ())}
            continue
        if not isinstance(smd, TensorStorageMetadata):
            raise PickleNotAllowedError(
                f"{where}: hyper_parallel metadata for {fqn!r} is a {type(smd).__name__}; tqsnap stores "
                "only tensor and bytes entries"
            )
        props = smd.properties
        chunks = []
        for chunk in smd.chunks:
            offsets = [int(o) for o in chunk.offsets]
            chunks.append([offsets, [int(s) for s in chunk.sizes], _path(paths, fqn, tuple(offsets))])
        memory_format = getattr(props, "memory_format", None)
        entries[fqn] = {
            "tensor": {
                "dtype": str(props.dtype),
                "requires_grad": bool(getattr(props, "requires_grad", False)),
                "memory_format": None if memory_format is None else str(memory_format),
                "size": [int(s) for s in smd.size],
                "chunks": chunks,
            }
        }
    return {
        "format": METADATA_FORMAT,
        "version": version,
        "state_dict": entries,
        "planner_data": encode_value(md.planner_data, "hyper_parallel planner_data"),
    }


def _path(paths: Mapping[MetadataIndex, str], fqn: str, offsets: tuple[int, ...]) -> str:
    try:
        return paths[MetadataIndex(fqn, offsets)]
    except KeyError:
        where = fqn if not offsets else f"{fqn} at offset {list(offsets)}"
        raise ManifestError(
            f"no rank reported writing {where}; the save plan and the write results disagree "
            "(a planner or storage writer dropped an item)"
        ) from None


def decode_metadata(doc: Any, where: str) -> tuple[Metadata, dict[MetadataIndex, str]]:
    """Rebuild ``Metadata`` and the map from each chunk or value to the item holding its bytes.

    Strict, because the document comes from whoever can write the bucket: exact JSON types,
    bounded non-negative sizes, one ``tensor`` or ``bytes`` entry per fqn. A malformed field
    raises :class:`~tqsnap.errors.ManifestError`, an unknown version
    :class:`~tqsnap.errors.UnsupportedFormatError`, both naming ``where``.
    """
    if not isinstance(doc, dict) or type(doc.get("format")) is not int or doc["format"] != METADATA_FORMAT:
        found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise UnsupportedFormatError(
            f"{where} holds no hyper_parallel metadata of format {METADATA_FORMAT} (found {found!r:.40}); "
            "it was not written by tqsnap.hyper_parallel, or by a newer version"
        )
    version = check_version(doc.get("version"), where)
    try:
        state, paths = _decode_entries(doc.get("state_dict"), where)
        planner_data = decode_value(doc.get("planner_data"), f"hyper_parallel planner_data in {where}")
    except ManifestError:
        raise
    except (FormatError, KeyError, TypeError, ValueError, AttributeError, OverflowError, RecursionError) as exc:
        raise ManifestError(f"hyper_parallel metadata in {where} is malformed: {type(exc).__name__}: {exc}") from exc
    return Metadata(state_dict_metadata=state, planner_data=planner_data, version=version), paths


def _decode_entries(entries: Any, where: str) -> tuple[dict[str, Any], dict[MetadataIndex, str]]:
    if not isinstance(entries, dict):
        raise ManifestError(f"hyper_parallel metadata in {where}: state_dict must be an object")
    state: dict[str, Any] = {}
    paths: dict[MetadataIndex, str] = {}
    for fqn, entry in entries.items():
        at = f"hyper_parallel metadata in {where}: entry {fqn!r:.200}"
        t, bytes_path = split_entry(entry, at)
        if bytes_path is not None:
            state[fqn] = BytesStorageMetadata()
            paths[MetadataIndex(fqn)] = bytes_path
            continue
        dtype, grad, memory_format = t.get("dtype"), t.get("requires_grad", False), t.get("memory_format")
        if not isinstance(dtype, str) or not dtype or len(dtype) > 64:
            raise ManifestError(f"{at}: dtype must be a short string, not {dtype!r:.60}")
        if type(grad) is not bool:
            raise ManifestError(f"{at}: requires_grad must be true or false, not {grad!r:.40}")
        if memory_format is not None and (not isinstance(memory_format, str) or len(memory_format) > 64):
            raise ManifestError(f"{at}: memory_format must be a short string or null")
        size, chunk_list = decode_tensor_chunks(t, at)
        chunks = []
        for i, (offsets, sizes, path) in enumerate(chunk_list):
            chunks.append(ChunkStorageMetadata(offsets=tuple(offsets), sizes=tuple(sizes)))
            paths[MetadataIndex(fqn, tuple(offsets), i)] = path
        props = TensorProperties(dtype=dtype, requires_grad=grad, memory_format=memory_format)
        state[fqn] = TensorStorageMetadata(properties=props, size=tuple(size), chunks=chunks)
    return state, paths
