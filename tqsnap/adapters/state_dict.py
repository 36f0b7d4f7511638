"""Snapshot a nested state (dicts, lists, tensors, bytes, JSON values) as kind ``state_dict``.

The tree's structure and every JSON-able leaf go into the manifest's ``extra.tree``; tensors
and bytes become items named by their position (``model/layers/0/weight``), so an unchanged
tensor yields the same shards in the next snapshot. Other Python objects are pickled only with
``allow_pickle=True``, and loaded only with it too.

``include`` loads part of a snapshot (restic's ``restore --include``): glob patterns matched
against item paths (``model/*``, ``optim/state/*/exp_avg``), a pattern matching a path's
ancestor (``model``) taking everything below it. Only the shards the chosen items live in are
fetched, and the tree comes back with only the chosen leaves (lists keep the chosen elements,
in order; empty containers are dropped).
"""

from __future__ import annotations

import fnmatch
import math
import pickle
from collections.abc import Callable, Sequence
from typing import Any

from ..engine import PackOptions, Repository, SnapshotInfo, SnapshotWriter
from ..errors import FormatError, PickleNotAllowedError, SnapshotNotFoundError, TqsnapError
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


def path_matcher(include: Sequence[str] | None) -> Callable[[str], bool] | None:
    """A test for item paths: true when a pattern matches the path or one of its ancestors."""
    if include is None:
        return None
    patterns = [include] if isinstance(include, str) else list(include)

    def matches(path: str) -> bool:
        parts = path.split("/")
        prefixes = ["/".join(parts[:n]) for n in range(len(parts), 0, -1)]
        return any(fnmatch.fnmatchcase(p, pat) for p in prefixes for pat in patterns)

    return matches


_SKIP = object()  # a subtree with no included leaf


class _TreeDecoder:
    def __init__(
        self,
        values: dict[str, memoryview],
        kinds: dict[str, Any],
        allow_pickle: bool,
        keep: Callable[[str], bool] | None = None,
    ) -> None:
        self.values, self.kinds, self.allow_pickle, self.keep = values, kinds, allow_pickle, keep

    def decode(self, node: Any, parts: list[str] | None = None) -> Any:
        """The value of ``node``; with ``keep``, :data:`_SKIP` for a subtree with no chosen leaf."""
        if not isinstance(node, dict) or len(node) != 1:
            raise FormatError(f"malformed state tree node {str(node)[:80]!r}")
        parts = [] if parts is None else parts
        ((tag, body),) = node.items()
        typed = typed_json.tree_tag(tag)
        if tag == "v" or typed == typed_json.FLOAT:
            if self.keep is not None and not self.keep("/".join(_escape(p) for p in parts) or "~root"):
                return _SKIP
            return body if tag == "v" else typed_json.decode_float(body, "state tree")
        if tag == "dict":
            return self._kept({k: self.decode(v, [*parts, k]) for k, v in body.items()})
        if typed == typed_json.DICT:
            pairs = typed_json.pairs(body, "state tree")
            out = {}
            for k, v in pairs:
                key = self._key(k)
                out[key] = self.decode(v, [*parts, str(key)])
            return self._kept(out)
        if tag == "list":
            return self._kept([self.decode(v, [*parts, str(i)]) for i, v in enumerate(body)])
        if typed == typed_json.TUPLE:
            nodes = typed_json.sequence(body, "state tree")
            kept = self._kept([self.decode(v, [*parts, str(i)]) for i, v in enumerate(nodes)])
            return kept if kept is _SKIP else tuple(kept)
        if self.keep is not None and not self.keep(str(body)):
            return _SKIP
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
        keep, self.keep = self.keep, None  # a key is never filtered: it belongs to its value
        try:
            key = self.decode(node)
        finally:
            self.keep = keep
        return tuple(key) if isinstance(key, list) else key

    def _kept(self, decoded: Any) -> Any:
        """A container without its skipped children; itself skipped when nothing in it was chosen."""
        if self.keep is None:
            return decoded
        if isinstance(decoded, dict):
            decoded = {k: v for k, v in decoded.items() if v is not _SKIP}
        else:
            decoded = [v for v in decoded if v is not _SKIP]
        return _SKIP if not decoded else decoded


def load_state(
    repo: Repository,
    *,
    stream: str,
    snapshot: str | int = "latest",
    allow_pickle: bool = False,
    include: Sequence[str] | None = None,
) -> Any:
    """Load a ``state_dict`` snapshot; every shard is verified before anything is returned.

    ``include`` (glob patterns over item paths) loads only the matching leaves and fetches
    only the shards they need; a pattern list that matches nothing is refused.
    """
    reader = repo.reader(stream, snapshot, kind=KIND)
    keep = path_matcher(include)
    extra = reader.manifest.extra
    version = extra.get("tree_version")
    if type(version) is not int or version not in READABLE_TREE_VERSIONS or "tree" not in extra:
        raise FormatError(
            f"snapshot {reader.name} has no state tree of a version this tqsnap reads "
            f"({', '.join(map(str, READABLE_TREE_VERSIONS))}); a newer tqsnap wrote it?"
        )
    chosen = [p for p in reader.items if keep is None or keep(p)]
    if not allow_pickle:
        for item in (reader.items[p] for p in chosen):
            if item.kind == "pickle":
                raise PickleNotAllowedError(
                    f"snapshot {reader.name} holds pickled item {item.path!r}; loading it could run code. "
                    "Pass allow_pickle=True only if you trust everyone who can write this repository"
                )
    values = reader.read_items(chosen)
    try:
        state = _TreeDecoder(values, reader.items, allow_pickle, keep).decode(extra["tree"])
    except PickleNotAllowedError:
        raise
    except (TqsnapError, TypeError, ValueError, AttributeError, KeyError, OverflowError, RecursionError) as exc:
        # The tree and the items' dtype/shape come from the store: whatever they make the
        # decoder trip over is a malformed snapshot, reported as one, naming it.
        key = snapshot_key(reader.manifest.stream, reader.manifest.seq)
        raise FormatError(f"snapshot {reader.name} ({key}) has a malformed state tree or item: {exc}") from exc
    if state is _SKIP:
        raise SnapshotNotFoundError(
            f"nothing in snapshot {reader.name} matches --include {', '.join(map(repr, include or []))}; "
            f"`tqsnap ls` lists its {len(reader.items)} item paths"
        )
    return state
