"""The manifest schema: versioned dataclasses <-> JSON (docs/format.md, "Manifest").

A manifest is the commit of one snapshot. It lists every shard the snapshot references and
every item (a named run of bytes: a tensor, a blob, a block of samples) as extents in those
shards. Encoding is JSON, never pickle, so reading a manifest from a shared bucket cannot run
code. A large body (the item table and the adapter's ``extra``) moves into a content-addressed
"body shard" so the manifest itself stays a single small PutObject.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..errors import ManifestError
from .version import FORMAT_VERSION, check_version

ITEM_KINDS = ("tensor", "bytes", "pickle", "blob")


@dataclass(frozen=True)
class ShardRef:
    """One immutable shard object. ``hash`` is xxh3-128 of the uncompressed bytes."""

    key: str
    hash: str
    size: int
    stored_size: int
    codec: str = "raw"

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "hash": self.hash,
            "size": self.size,
            "stored_size": self.stored_size,
            "codec": self.codec,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ShardRef:
        return cls(
            str(d["key"]), str(d["hash"]), int(d["size"]), int(d["stored_size"]), str(d.get("codec", "raw"))
        )


@dataclass(frozen=True)
class Extent:
    """``length`` bytes at ``offset`` in the uncompressed bytes of ``shards[shard]``."""

    shard: int
    offset: int
    length: int


@dataclass
class Item:
    """A named run of bytes: the concatenation of its extents, in order.

    ``kind`` says how to decode it: ``tensor`` (with ``dtype``/``shape``, C order), ``bytes``,
    ``pickle`` (only loaded with an explicit opt-in) or ``blob`` (adapter-defined, see ``meta``).
    """

    path: str
    kind: str
    size: int
    extents: list[Extent]
    dtype: str | None = None
    shape: list[int] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    hash: str | None = None  # xxh3-128 of the item's bytes; written for packed items

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "path": self.path,
            "kind": self.kind,
            "size": self.size,
            "extents": [[e.shard, e.offset, e.length] for e in self.extents],
        }
        if self.dtype is not None:
            d["dtype"] = self.dtype
        if self.shape is not None:
            d["shape"] = list(self.shape)
        if self.meta:
            d["meta"] = self.meta
        if self.hash is not None:
            d["hash"] = self.hash
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Item:
        return cls(
            path=str(d["path"]),
            kind=str(d["kind"]),
            size=int(d["size"]),
            extents=[Extent(int(s), int(o), int(n)) for s, o, n in d["extents"]],
            dtype=d.get("dtype"),
            shape=[int(x) for x in d["shape"]] if d.get("shape") is not None else None,
            meta=dict(d.get("meta") or {}),
            hash=d.get("hash"),
        )


@dataclass(frozen=True)
class SnapshotId:
    """A (stream, seq) pair: how one snapshot names another (parents, tags, tombstones)."""

    stream: str
    seq: int

    def __str__(self) -> str:
        return f"{self.stream}@{self.seq}"

    def to_json(self) -> dict[str, Any]:
        return {"stream": self.stream, "seq": self.seq}

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> SnapshotId | None:
        return None if d is None else cls(str(d["stream"]), int(d["seq"]))


@dataclass
class Manifest:
    """One committed snapshot. Written once, with put-if-absent, as the LAST object of a save."""

    kind: str
    stream: str
    seq: int
    parent: SnapshotId | None
    write_id: str
    started_at: float
    committed_at: float
    shards: list[ShardRef]
    items: list[Item]
    metadata: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    body_shard: int | None = None
    format_version: str = FORMAT_VERSION

    @property
    def id(self) -> SnapshotId:
        return SnapshotId(self.stream, self.seq)

    def to_json(self, *, include_items: bool = True) -> dict[str, Any]:
        d: dict[str, Any] = {
            "format_version": self.format_version,
            "kind": self.kind,
            "stream": self.stream,
            "seq": self.seq,
            "parent": self.parent.to_json() if self.parent else None,
            "write_id": self.write_id,
            "started_at": self.started_at,
            "committed_at": self.committed_at,
            "metadata": self.metadata,
            "stats": self.stats,
            "shards": [s.to_json() for s in self.shards],
        }
        if self.body_shard is not None:
            d["body_shard"] = self.body_shard
        else:
            d["extra"] = self.extra
            if include_items:
                d["items"] = [i.to_json() for i in self.items]
        return d

    def encode(self) -> bytes:
        return json.dumps(self.to_json(), separators=(",", ":"), allow_nan=False).encode()

    @classmethod
    def decode(cls, data: bytes, key: str) -> Manifest:
        """Parse and validate a manifest; every failure is a typed error naming ``key``."""
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ManifestError(f"manifest {key!r} is not valid JSON: {exc}") from exc
        if not isinstance(doc, dict):
            raise ManifestError(f"manifest {key!r} is not a JSON object")
        check_version(doc, key)
        try:
            manifest = cls(
                kind=str(doc["kind"]),
                stream=str(doc["stream"]),
                seq=int(doc["seq"]),
                parent=SnapshotId.from_json(doc.get("parent")),
                write_id=str(doc["write_id"]),
                started_at=float(doc["started_at"]),
                committed_at=float(doc["committed_at"]),
                shards=[ShardRef.from_json(s) for s in doc["shards"]],
                items=[Item.from_json(i) for i in doc.get("items", [])],
                metadata=dict(doc.get("metadata") or {}),
                extra=dict(doc.get("extra") or {}),
                stats=dict(doc.get("stats") or {}),
                body_shard=int(doc["body_shard"]) if doc.get("body_shard") is not None else None,
                format_version=str(doc["format_version"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"manifest {key!r} is malformed: {type(exc).__name__}: {exc}") from exc
        manifest.validate(key)
        return manifest

    def validate(self, key: str) -> None:
        """Check internal references so a reader never indexes out of range."""
        n = len(self.shards)
        if self.body_shard is not None and not 0 <= self.body_shard < n:
            raise ManifestError(f"manifest {key!r}: body_shard {self.body_shard} out of range")
        for item in self.items:
            if sum(e.length for e in item.extents) != item.size:
                raise ManifestError(f"manifest {key!r}: item {item.path!r} extents do not add up to its size")
            for e in item.extents:
                if (
                    not 0 <= e.shard < n
                    or e.offset < 0
                    or e.length < 0
                    or e.offset + e.length > self.shards[e.shard].size
                ):
                    raise ManifestError(
                        f"manifest {key!r}: item {item.path!r} has an extent outside its shard"
                    )


def encode_body(items: list[Item], extra: dict[str, Any]) -> bytes:
    """The payload of a body shard: ``{"items": [...], "extra": {...}}`` as JSON."""
    body = {"items": [i.to_json() for i in items], "extra": extra}
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()


def decode_body(data: bytes, key: str) -> tuple[list[Item], dict[str, Any]]:
    try:
        doc = json.loads(data)
        return [Item.from_json(i) for i in doc["items"]], dict(doc["extra"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ManifestError(f"body shard {key!r} is malformed: {exc}") from exc


@dataclass(frozen=True)
class Tombstone:
    """Written by ``forget``: the snapshot is logically deleted; gc removes it after ``grace``."""

    stream: str
    seq: int
    created_at: float
    reason: str = ""
    format_version: str = FORMAT_VERSION

    def encode(self) -> bytes:
        return json.dumps(
            {
                "format_version": self.format_version,
                "stream": self.stream,
                "seq": self.seq,
                "created_at": self.created_at,
                "reason": self.reason,
            }
        ).encode()

    @classmethod
    def decode(cls, data: bytes, key: str) -> Tombstone:
        try:
            doc = json.loads(data)
            check_version(doc, key)
            return cls(
                str(doc["stream"]),
                int(doc["seq"]),
                float(doc["created_at"]),
                str(doc.get("reason", "")),
                str(doc["format_version"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ManifestError(f"tombstone {key!r} is malformed: {exc}") from exc


@dataclass(frozen=True)
class Tag:
    """An immutable name for one snapshot, created with put-if-absent."""

    name: str
    target: SnapshotId
    created_at: float
    format_version: str = FORMAT_VERSION

    def encode(self) -> bytes:
        return json.dumps(
            {
                "format_version": self.format_version,
                "name": self.name,
                "target": self.target.to_json(),
                "created_at": self.created_at,
            }
        ).encode()

    @classmethod
    def decode(cls, data: bytes, key: str) -> Tag:
        try:
            doc = json.loads(data)
            check_version(doc, key)
            target = SnapshotId.from_json(doc["target"])
            assert target is not None
            return cls(str(doc["name"]), target, float(doc["created_at"]), str(doc["format_version"]))
        except (ValueError, KeyError, TypeError, AssertionError) as exc:
            raise ManifestError(f"tag {key!r} is malformed: {exc}") from exc
