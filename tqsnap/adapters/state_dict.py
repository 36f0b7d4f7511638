"""Snapshot a nested state (dicts, lists, tensors, bytes, JSON values) as kind ``state_dict``.

The tree's structure and every JSON-able leaf go into the manifest's ``extra.tree``; tensors
and bytes become items named by their position (``model/layers/0/weight``), so an unchanged
tensor yields the same shards in the next snapshot. Other Python objects are pickled only with
``allow_pickle=True``, and loaded only with it too.
"""

from __future__ import annotations

import math
import pickle
from typing import Any

from ..engine import PackOptions, Repository, SnapshotInfo, SnapshotWriter
from ..errors import FormatError, PickleNotAllowedError, TqsnapError
from ..format import typed_json
from ..format.keys import snapshot_key
from ..format.manifest import SnapshotId
from .tensors import dtype_name, is_tensor, tensor_bytes, tensor_from_bytes

KIND = "state_dict"
#: 2 writes non-finite floats, tuples and other-keyed dicts as typed JSON (format/typed_json.py);
#: 1 spelled them ``float``, ``tuple`` and ``items``. Both are read.
TREE_VERSION = 2
READABLE_TREE_VERSIONS = (1, 2)


def _escape(part: str) -> str:
    return part.replace("~", "~0").replace("/", "~1")


class _TreeEncoder:
    """Walks a state, emitting JSON nodes and collecting (path, buffer, spec) items."""

    def __init__(self, allow_pickle: bool) -> None:
        self.allow_pickle = allow_pickle
        self.items: list[tuple[str, Any, dict[str, Any]]] = []
        self.keepalive: list[Any] = []
        self._paths: set[str] = set()

    def _path(self, parts: list[str]) -> str:
        base = "/".join(_escape(p) for p in parts) or "~root"
        path, n = base, 1
        while path in self._paths:
            path, n = f"{base}#{n}", n + 1
        self._paths.add(path)
        return path

    def encode(self, value: Any, parts: list[str]) -> Any:
        if value is None or isinstance(value, bool | str):
            return {"v": value}
        if isinstance(value, int):
            return {"v": value}
        if isinstance(value, float):
            return {"v": value} if math.isfinite(value) else typed_json.encode_float(value)
        if is_tensor(value):
            view, owner = tensor_bytes(value)
            self.keepalive.append(owner)
            path = self._path(parts)
            spec = {"kind": "tensor", "dtype": dtype_name(value.dtype), "shape": list(value.shape)}
            if value.requires_grad:
                spec["meta"] = {"requires_grad": True}
            self.items.append((path, view, spec))
            return {"tensor": path}
        if isinstance(value, bytes | bytearray | memoryview):
            path = self._path(parts)
            self.items.append((path, memoryview(value).cast("B"), {"kind": "bytes"}))
            return {"bytearray" if isinstance(value, bytearray) else "bytes": path}
        if isinstance(value, dict):
            if all(isinstance(k, str) for k in value):
                return {"dict": {k: self.encode(v, [*parts, k]) for k, v in value.items()}}
            return typed_json.dict_node(
                [
                    [self.encode(k, [*parts, f"k{i}"]), self.encode(v, [*parts, str(k)])]
                    for i, (k, v) in enumerate(value.items())
                ]
            )
        if isinstance(value, list | tuple) and type(value) in (list, tuple):
            nodes = [self.encode(v, [*parts, str(i)]) for i, v in enumerate(value)]
            return {"list": nodes} if isinstance(value, list) else typed_json.tuple_node(nodes)
        if not self.allow_pickle:
            raise PickleNotAllowedError(
                f"value at {'/'.join(parts) or '<root>'} is a {type(value).__name__}, which only pickle can store; "
                "pass allow_pickle=True to save it (and to load it later)"
            )
        path = self._path(parts)
        self.items.append((path, pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL), {"kind": "pickle"}))
        return {"pickle": path}


def save_state(
    repo: Repository,
    state: Any,
    *,
    stream: str,
    metadata: dict[str, Any] | None = None,
    allow_pickle: bool = False,
    options: PackOptions | None = None,
    parent: SnapshotId | str | None = "latest",
) -> SnapshotInfo:
    """Save ``state`` as the next snapshot of ``stream``; only changed shards are uploaded."""
    encoder = _TreeEncoder(allow_pickle)
    tree = encoder.encode(state, [])  # raises before anything is uploaded
    writer = SnapshotWriter.begin(repo, stream, KIND, parent=parent, options=options)
    packer = writer.packer()
    try:
        for path, data, spec in sorted(encoder.items, key=lambda it: it[0]):
            packer.add(
                path,
                data,
                kind=spec["kind"],
                dtype=spec.get("dtype"),
                shape=spec.get("shape"),
                meta=spec.get("meta"),
            )
        writer.add_result(packer.finish())
    except BaseException:
        packer.abort()
        raise
    return writer.commit(extra={"tree_version": TREE_VERSION, "tree": tree}, metadata=metadata)


class _TreeDecoder:
    def __init__(self, values: dict[str, memoryview], kinds: dict[str, Any], allow_pickle: bool) -> None:
        self.values, self.kinds, self.allow_pickle = values, kinds, allow_pickle

    def decode(self, node: Any) -> Any:
        if not isinstance(node, dict) or len(node) != 1:
            raise FormatError(f"malformed state tree node {str(node)[:80]!r}")
        ((tag, body),) = node.items()
        if tag == "v":
            return body
        typed = typed_json.tree_tag(tag)
        if typed == typed_json.FLOAT:
            return typed_json.decode_float(body, "state tree")
        if tag == "dict":
            return {k: self.decode(v) for k, v in body.items()}
        if typed == typed_json.DICT:
            return {self._key(k): self.decode(v) for k, v in typed_json.pairs(body, "state tree")}
        if tag == "list":
            return [self.decode(v) for v in body]
        if typed == typed_json.TUPLE:
            return tuple(self.decode(v) for v in typed_json.sequence(body, "state tree"))
        item = self.kinds.get(body)
        if item is None:
            raise FormatError(f"state tree names item {body!r}, which the manifest lacks")
        data = self.values[body]
        if tag == "tensor":
            t = tensor_from_bytes(data, item.dtype, item.shape)
            if item.meta.get("requires_grad"):
                t.requires_grad_(True)
            return t
        if tag == "bytes":
            return bytes(data)
        if tag == "bytearray":
            return bytearray(data)
        if tag == "pickle":
            if not self.allow_pickle:
                raise PickleNotAllowedError(
                    f"item {body!r} is a pickled Python object; loading it could run code. "
                    "Pass allow_pickle=True only if you trust everyone who can write this repository"
                )
            return pickle.loads(data)  # noqa: S301 - explicit opt-in above
        raise FormatError(f"unknown state tree node type {tag!r}")

    def _key(self, node: Any) -> Any:
        key = self.decode(node)
        return tuple(key) if isinstance(key, list) else key


def load_state(
    repo: Repository, *, stream: str, snapshot: str | int = "latest", allow_pickle: bool = False
) -> Any:
    """Load a ``state_dict`` snapshot; every shard is verified before anything is returned."""
    reader = repo.reader(stream, snapshot, kind=KIND)
    extra = reader.manifest.extra
    version = extra.get("tree_version")
    if type(version) is not int or version not in READABLE_TREE_VERSIONS or "tree" not in extra:
        raise FormatError(
            f"snapshot {reader.name} has no state tree of a version this tqsnap reads "
            f"({', '.join(map(str, READABLE_TREE_VERSIONS))}); a newer tqsnap wrote it?"
        )
    if not allow_pickle:
        for item in reader.items.values():
            if item.kind == "pickle":
                raise PickleNotAllowedError(
                    f"snapshot {reader.name} holds pickled item {item.path!r}; loading it could run code. "
                    "Pass allow_pickle=True only if you trust everyone who can write this repository"
                )
    values = reader.read_items()
    try:
        return _TreeDecoder(values, reader.items, allow_pickle).decode(extra["tree"])
    except PickleNotAllowedError:
        raise
    except (TqsnapError, TypeError, ValueError, AttributeError, KeyError, OverflowError, RecursionError) as exc:
        # The tree and the items' dtype/shape come from the store: whatever they make the
        # decoder trip over is a malformed snapshot, reported as one, naming it.
        key = snapshot_key(reader.manifest.stream, reader.manifest.seq)
        raise FormatError(f"snapshot {reader.name} ({key}) has a malformed state tree or item: {exc}") from exc
