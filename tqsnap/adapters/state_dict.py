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
from ..engine.job_read import open_reader
from ..errors import FormatError, PickleNotAllowedError, SnapshotNotFoundError, TqsnapError
from ..format import strict, typed_json
from ..format.keys import snapshot_key
from ..format.manifest import SnapshotId
from .tensors import dtype_name, is_tensor, tensor_bytes, tensor_from_bytes

KIND = "state_dict"
#: 3 (format 1.2) types every leaf explicitly and keeps dict order in arrays, so a reader in any
#: language decodes it exactly; 2 wrote non-finite floats, tuples and other-keyed dicts as typed
#: JSON (format/typed_json.py); 1 spelled them ``float``, ``tuple`` and ``items``. All are read.
TREE_VERSION = 3
READABLE_TREE_VERSIONS = (1, 2, 3)


def _escape(part: str) -> str:
    return part.replace("~", "~0").replace("/", "~1")


def key_segment(key: Any, index: int) -> str:
    """The item-path segment of a dict entry (docs/format/state_dict.md, "Item paths").

    A string key is itself and an int key its decimal digits (so ``optim/state/0/exp_avg``);
    any other key (tuple, float, bool, None, bytes, tensor) is ``@<index>``, its position in
    the dict: portable, where Python's ``str()`` of the key is not.
    """
    if isinstance(key, str):
        return key
    if isinstance(key, int) and not isinstance(key, bool):
        return str(int(key))
    return f"@{index}"


def key_item_segment(index: int) -> str:
    """The segment under which a key's own items live (a tensor or bytes used as a key)."""
    return f"@{index}k"


def _legacy_key_segment(key: Any, index: int) -> str:
    """Tree versions 1 and 2 named entries by Python's ``str()`` of the key."""
    return key if isinstance(key, str) else str(key)


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

    def _text(self, value: str, parts: list[str]) -> str:
        return typed_json.check_text(str.__str__(value), f"the string at {'/'.join(parts) or '<root>'}")

    def encode(self, value: Any, parts: list[str]) -> Any:
        if value is None or isinstance(value, bool):
            return {"v": None if value is None else bool(value)}
        if isinstance(value, str):
            return {"v": self._text(value, parts)}
        if isinstance(value, int):
            value = int(value)
            return {"int": value} if -typed_json.SAFE_INT <= value <= typed_json.SAFE_INT else typed_json.encode_int(value)
        if isinstance(value, float):
            value = float(value)
            return {typed_json.FLOAT: value} if math.isfinite(value) else typed_json.encode_float(value)
        if is_tensor(value):
            where = f"the tensor at {'/'.join(parts) or '<root>'}"
            view, owner = tensor_bytes(value, where)
            self.keepalive.append(owner)
            path = self._path(parts)
            spec = {"kind": "tensor", "dtype": dtype_name(value.dtype, where), "shape": list(value.shape)}
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
                return {
                    "dict": [[self._text(k, parts), self.encode(v, [*parts, k])] for k, v in value.items()]
                }
            return typed_json.dict_node(
                [
                    [
                        self.encode(k, [*parts, key_item_segment(i)]),
                        self.encode(v, [*parts, key_segment(k, i)]),
                    ]
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
    typed_json.check_plain_json(metadata or {}, "metadata")  # so does metadata JSON would garble
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
#: The item kind each reference node must name (docs/format/state_dict.md).
_NODE_ITEM_KIND = {"tensor": "tensor", "bytes": "bytes", "bytearray": "bytes", "pickle": "pickle"}


class _TreeDecoder:
    def __init__(
        self,
        values: dict[str, memoryview],
        kinds: dict[str, Any],
        allow_pickle: bool,
        keep: Callable[[str], bool] | None = None,
        version: int = TREE_VERSION,
    ) -> None:
        self.values, self.kinds, self.allow_pickle, self.keep = values, kinds, allow_pickle, keep
        self.version = version
        self._segment = key_segment if version >= 3 else _legacy_key_segment

    def _leaf(self, tag: str, body: Any) -> Any:
        """A JSON leaf's value. Tree version 3 types each one; 1 and 2 took any scalar in ``v``."""
        if tag == typed_json.FLOAT:
            return typed_json.decode_float(body, "state tree")
        if tag == "$int":
            return typed_json.decode_int(body, "state tree")
        if tag == "int":
            return strict.check_int(body, "state tree: int node", lo=-typed_json.SAFE_INT, hi=typed_json.SAFE_INT)
        if self.version >= 3 and not (body is None or type(body) in (bool, str)):
            raise FormatError(f"state tree: a 'v' node holds null, a boolean or a string, not {body!r:.40}")
        return body

    def decode(self, node: Any, parts: list[str] | None = None) -> Any:
        """The value of ``node``; with ``keep``, :data:`_SKIP` for a subtree with no chosen leaf."""
        if not isinstance(node, dict) or len(node) != 1:
            raise FormatError(f"malformed state tree node {str(node)[:80]!r}")
        parts = [] if parts is None else parts
        ((tag, body),) = node.items()
        typed = typed_json.tree_tag(tag) if self.version < 3 else (tag if tag.startswith("$") else None)
        leaf_tags = ("v", "int", "$int", typed_json.FLOAT) if self.version >= 3 else ("v",)
        if tag in leaf_tags or typed == typed_json.FLOAT:
            if self.keep is not None and not self.keep("/".join(_escape(p) for p in parts) or "~root"):
                return _SKIP
            return self._leaf(typed or tag, body)
        if tag == "dict":
            return self._kept(self._dict(body, parts))
        if typed == typed_json.DICT:
            out: dict[Any, Any] = {}
            for i, (k, v) in enumerate(typed_json.pairs(body, "state tree")):
                key = self._key(k)
                if key in out:
                    raise FormatError(f"state tree: a $dict at {'/'.join(parts) or '<root>'} has key {key!r:.60} twice")
                out[key] = self.decode(v, [*parts, self._segment(key, i)])
            return self._kept(out)
        if tag == "list":
            return self._kept([self.decode(v, [*parts, str(i)]) for i, v in enumerate(body)])
        if typed == typed_json.TUPLE:
            nodes = typed_json.sequence(body, "state tree")
            kept = self._kept([self.decode(v, [*parts, str(i)]) for i, v in enumerate(nodes)])
            return kept if kept is _SKIP else tuple(kept)
        return self._item(tag, body)

    def _dict(self, body: Any, parts: list[str]) -> dict[str, Any]:
        """A string-keyed dict: a JSON object up to tree version 2, ``[[key, node], ...]`` from 3."""
        if self.version < 3:
            return {k: self.decode(v, [*parts, k]) for k, v in body.items()}
        out: dict[str, Any] = {}
        for k, v in typed_json.pairs(body, "state tree"):
            if type(k) is not str:
                raise FormatError(f"state tree: a dict key must be a string, not {k!r:.40}")
            if k in out:
                raise FormatError(f"state tree: a dict at {'/'.join(parts) or '<root>'} has key {k!r:.60} twice")
            out[k] = self.decode(v, [*parts, k])
        return out

    def _item(self, tag: str, body: Any) -> Any:
        if tag not in ("tensor", "bytes", "bytearray", "pickle"):
            raise FormatError(f"unknown state tree node type {tag!r}")
        if self.keep is not None and not self.keep(str(body)):
            return _SKIP
        item = self.kinds.get(body) if type(body) is str else None
        if item is None:
            raise FormatError(f"state tree names item {body!r:.80}, which the manifest lacks")
        if item.kind != _NODE_ITEM_KIND[tag]:
            raise FormatError(f"state tree node {tag!r} names item {body!r:.80} of kind {item.kind!r:.40}")
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
        if not self.allow_pickle:
            raise PickleNotAllowedError(
                f"item {body!r} is a pickled Python object; loading it could run code. "
                "Pass allow_pickle=True only if you trust everyone who can write this repository"
            )
        return pickle.loads(data)  # noqa: S301 - explicit opt-in above

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
    part: str | None = None,
) -> Any:
    """Load a ``state_dict`` snapshot (or ``part`` of a job snapshot); every shard is verified first.

    ``include`` (glob patterns over item paths) loads only the matching leaves and fetches
    only the shards they need; a pattern list that matches nothing is refused.
    """
    reader = open_reader(repo, stream, snapshot, kind=KIND, part=part)
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
        state = _TreeDecoder(values, reader.items, allow_pickle, keep, version).decode(extra["tree"])
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
