"""The manifest schema: versioned dataclasses <-> JSON (docs/format.md, "Manifest").

A manifest is the commit of one snapshot. It lists every shard the snapshot references and
every item (a named run of bytes: a tensor, a blob, a block of samples) as extents in those
shards. Encoding is JSON, never pickle, so reading a manifest from a shared bucket cannot run
code. A large body (the item table and the adapter's ``extra``) moves into a content-addressed
"body shard" so the manifest itself stays a single small PutObject.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import FormatError, ManifestError, UnsupportedFormatError
from . import strict, typed_json
from .body_columnar import MAX_COLUMNAR_BODY_BYTES
from .keys import parse_shard_key, validate_name
from .shard import CODECS
from .strict import MAX_BYTES, MAX_EXTENTS, MAX_ITEMS, MAX_SEQ, MAX_SHARDS
from .version import FORMAT_VERSION, MANIFEST_MAJORS, check_version

#: ``body_format`` values a format 2 manifest may name (closed: another is refused as newer).
COLUMNAR_BODY = "columnar/1"

ITEM_KINDS = ("tensor", "bytes", "pickle", "blob")

_HASH_RE = re.compile(r"[0-9a-f]{32}", re.ASCII)
#: Tensor dimensions a reader accepts (a dimension past this is a crafted value).
MAX_DIMS = 64


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
    def from_json(cls, d: Any, key: str = "?", what: str = "manifest") -> ShardRef:
        """Strict: the key must be a shard key of this hash and codec, sizes exact integers."""
        d = strict.obj(d, key, what, "shards[]")
        ref = cls(
            strict.string(d, "key", key, what, max_len=256),
            strict.string(d, "hash", key, what, max_len=32),
            strict.integer(d, "size", key, what, hi=MAX_BYTES),
            strict.integer(d, "stored_size", key, what, hi=MAX_BYTES),
            strict.string(d, "codec", key, what, default="raw", max_len=16),
        )
        parsed = parse_shard_key(ref.key)
        if parsed is None:
            raise ManifestError(
                f"{what} {key!r} references {ref.key!r:.120} as a shard, but it is not a shard key "
                "(shards/<h2>/<hash>.<upload-id>[.<codec>])"
            )
        if not _HASH_RE.fullmatch(ref.hash) or parsed[0] != ref.hash or parsed[2] != ref.codec:
            raise ManifestError(
                f"{what} {key!r}: shard {ref.key!r} does not match its hash {ref.hash!r:.40} "
                f"and codec {ref.codec!r}"
            )
        if ref.codec not in CODECS:
            raise ManifestError(f"{what} {key!r}: shard {ref.key!r} has unknown codec {ref.codec!r}")
        if ref.codec == "raw" and ref.size != ref.stored_size:
            raise ManifestError(
                f"{what} {key!r}: raw shard {ref.key!r} stores {ref.stored_size} bytes but holds {ref.size}"
            )
        return ref


#: A shard key as tqsnap writes it (raw or zstd), for :func:`shard_refs`' fast path.
_WRITTEN_SHARD_KEY = re.compile(r"shards/([0-9a-f]{2})/([0-9a-f]{32})\.[0-9a-z]{1,64}(\.zstd)?", re.ASCII)


def shard_refs(raw: list[Any], key: str, what: str = "manifest") -> list[ShardRef]:
    """``ShardRef.from_json`` of each entry, with the same rules, in a third of the time.

    A manifest of a million-item snapshot lists a few hundred thousand shards; checked field by
    field they took seconds to read. A ref that passes the one-expression test below passes every
    check of ``from_json``; any other goes through ``from_json``, which raises its exact error.
    """
    out = []
    match = _WRITTEN_SHARD_KEY.fullmatch
    for d in raw:
        if type(d) is dict:
            k, h, size, stored, codec = d.get("key"), d.get("hash"), d.get("size"), d.get("stored_size"), d.get("codec")
            if (
                type(k) is str
                and type(size) is int
                and type(stored) is int
                and 0 <= size <= MAX_BYTES
                and 0 <= stored <= MAX_BYTES
                and (m := match(k)) is not None
                and h == m.group(2)
                and k[7:9] == k[10:12]
                and ((codec == "raw" and m.group(3) is None and size == stored) or (codec == "zstd" and m.group(3)))
            ):
                out.append(ShardRef(k, h, size, stored, codec))
                continue
        out.append(ShardRef.from_json(d, key, what))
    return out


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
    def from_json(cls, d: Any, key: str = "?", what: str = "manifest") -> Item:
        """Strict: exact JSON types, extents as ``[shard, offset, length]`` integer triples."""
        d = strict.obj(d, key, what, "items[]")
        path = strict.string(d, "path", key, what, max_len=4096)
        where = f"{what} {key!r}: item {path!r:.200}"
        extents = []
        for e in strict.array(d, "extents", key, what, max_len=MAX_EXTENTS):
            if type(e) is not list or len(e) != 3:
                raise ManifestError(f"{where}: an extent must be [shard, offset, length], not {e!r:.60}")
            extents.append(
                Extent(
                    strict.check_int(e[0], f"{where}: extent shard", hi=MAX_SHARDS),
                    strict.check_int(e[1], f"{where}: extent offset"),
                    strict.check_int(e[2], f"{where}: extent length"),
                )
            )
        shape = None
        if d.get("shape") is not None:
            dims = strict.array(d, "shape", key, what, max_len=MAX_DIMS)
            shape = [strict.check_int(x, f"{where}: shape dimension") for x in dims]
        item_hash = strict.optional_string(d, "hash", key, what)
        if item_hash is not None and not _HASH_RE.fullmatch(item_hash):
            raise ManifestError(f"{where}: hash {item_hash!r:.40} is not 32 lowercase hex digits")
        return cls(
            path=path,
            kind=strict.string(d, "kind", key, what, max_len=256),
            size=strict.integer(d, "size", key, what, hi=MAX_BYTES),
            extents=extents,
            dtype=strict.optional_string(d, "dtype", key, what),
            shape=shape,
            meta=strict.mapping(d, "meta", key, what),
            hash=item_hash,
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
    def from_json(cls, d: Any, key: str = "?", what: str = "manifest") -> SnapshotId | None:
        if d is None:
            return None
        d = strict.obj(d, key, what, "stream/seq")
        stream = strict.string(d, "stream", key, what, max_len=256)
        try:
            validate_name(stream)
        except ValueError as exc:
            raise ManifestError(f"{what} {key!r}: {exc}") from None
        return cls(stream, strict.integer(d, "seq", key, what, hi=MAX_SEQ))


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
    #: None: a JSON body (inline or in the body shard); ``columnar/1``: a columnar body shard
    #: (format 2.0, docs/format.md section 6.1).
    body_format: str | None = None

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
            if self.body_format is not None:
                d["body_format"] = self.body_format
        else:
            d["extra"] = self.extra
            if include_items:
                d["items"] = [i.to_json() for i in self.items]
        return d

    def encode(self) -> bytes:
        """Compact UTF-8 JSON; refuses what a parser in another language would misread (typed_json),
        and a manifest longer than readers accept (``FormatError``): committed, it could never be read."""
        typed_json.check_plain_json(self.metadata, f"the metadata of snapshot {self.stream}@{self.seq}")
        data = typed_json.portable_dumps(self.to_json(), f"snapshot {self.stream}@{self.seq}")
        if len(data) > strict.MAX_MANIFEST_BYTES:
            raise FormatError(
                f"snapshot {self.stream}@{self.seq}: its manifest would be {len(data)} bytes ({len(self.shards)} "
                f"shards), more than the {strict.MAX_MANIFEST_BYTES}-byte limit readers accept; nothing was "
                "committed. Save with larger chunks (PackOptions.chunk_size) so that fewer shards are needed"
            )
        return data

    @classmethod
    def decode(cls, data: bytes, key: str) -> Manifest:
        """Parse and validate a manifest; every failure is a typed error naming ``key``.

        Strict (format/strict.py): no NaN, no duplicate keys, exact JSON types, bounded
        sizes, counts and nesting, shard keys that are shard keys, unique item paths.
        """
        what = "manifest"
        doc = strict.obj(strict.load_json(data, key, what, max_bytes=strict.MAX_MANIFEST_BYTES), key, what)
        major = check_version(doc, key, MANIFEST_MAJORS)
        stream = strict.string(doc, "stream", key, what, max_len=256)
        try:
            validate_name(stream)
        except ValueError as exc:
            raise ManifestError(f"manifest {key!r}: {exc}") from None
        body_shard = None
        if doc.get("body_shard") is not None:
            body_shard = strict.integer(doc, "body_shard", key, what, hi=MAX_SHARDS)
        body_format = None
        if major == 2:  # 1.x manifests have no body_format: an unknown member there is ignored
            body_format = strict.string(doc, "body_format", key, what, max_len=64)
            if body_format != COLUMNAR_BODY:
                raise UnsupportedFormatError(
                    f"manifest {key!r} has a body of format {body_format!r}, which this tqsnap does not "
                    f"know (it reads {COLUMNAR_BODY!r}); upgrade tqsnap to read it"
                )
            if body_shard is None:
                raise ManifestError(f"manifest {key!r}: a {body_format} body must be in a body shard")
        manifest = cls(
            kind=strict.string(doc, "kind", key, what, max_len=256),
            stream=stream,
            seq=strict.integer(doc, "seq", key, what, hi=MAX_SEQ),
            parent=SnapshotId.from_json(doc.get("parent"), key, what),
            write_id=strict.string(doc, "write_id", key, what, max_len=256),
            started_at=strict.timestamp(doc, "started_at", key, what),
            committed_at=strict.timestamp(doc, "committed_at", key, what),
            shards=shard_refs(strict.array(doc, "shards", key, what, max_len=MAX_SHARDS), key),
            items=[
                Item.from_json(i, key)
                for i in strict.array(doc, "items", key, what, max_len=MAX_ITEMS, default=[])
            ],
            metadata=strict.mapping(doc, "metadata", key, what),
            extra=strict.mapping(doc, "extra", key, what),
            stats=strict.mapping(doc, "stats", key, what),
            body_shard=body_shard,
            format_version=strict.string(doc, "format_version", key, what, max_len=32),
            body_format=body_format,
        )
        manifest.validate(key)
        return manifest

    def validate(self, key: str) -> None:
        """Check internal references so a reader never indexes out of range."""
        n = len(self.shards)
        if self.body_shard is not None and not 0 <= self.body_shard < n:
            raise ManifestError(f"manifest {key!r}: body_shard {self.body_shard} out of range")
        limit = strict.MAX_BODY_BYTES if self.body_format is None else MAX_COLUMNAR_BODY_BYTES
        if self.body_shard is not None and self.shards[self.body_shard].size > limit:
            raise ManifestError(
                f"manifest {key!r}: its body shard declares {self.shards[self.body_shard].size} bytes, "
                f"more than the {limit}-byte limit for a body"
            )
        check_shards = getattr(self.items, "check_shards", None)
        if check_shards is not None:  # a columnar body (body_columnar_read): the rest held at decoding
            check_shards([ref.size for ref in self.shards], key)
            return
        if len(self.items) > MAX_ITEMS:
            raise ManifestError(f"manifest {key!r} lists {len(self.items)} items, more than {MAX_ITEMS}")
        paths: set[str] = set()
        for item in self.items:
            if item.path in paths:
                raise ManifestError(f"manifest {key!r} lists item {item.path!r:.200} twice")
            paths.add(item.path)
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
    return typed_json.portable_dumps(body, "a snapshot body")


def decode_body(data: bytes, key: str) -> tuple[list[Item], dict[str, Any]]:
    """Parse a JSON body shard strictly (the same rules and limits as a manifest's inline body).

    A columnar body is :func:`.body_columnar_read.decode_any_body`'s.
    """
    what = "body shard"
    doc = strict.obj(strict.load_json(data, key, what, max_bytes=strict.MAX_BODY_BYTES), key, what)
    items = [Item.from_json(i, key, what) for i in strict.array(doc, "items", key, what, max_len=MAX_ITEMS)]
    extra = doc.get("extra")
    return items, strict.obj(extra, key, what, "extra")


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
        what = "tombstone"
        doc = strict.obj(strict.load_json(data, key, what, max_bytes=strict.MAX_SMALL_DOC_BYTES), key, what)
        check_version(doc, key)
        target = SnapshotId.from_json(doc, key, what)
        assert target is not None
        return cls(
            target.stream,
            target.seq,
            strict.timestamp(doc, "created_at", key, what),
            strict.string(doc, "reason", key, what, default=""),
            strict.string(doc, "format_version", key, what, max_len=32),
        )


@dataclass(frozen=True)
class Tag:
    """A name for one snapshot (docs/format.md section 9).

    ``version`` 0 is the original write-once object ``tags/<name>.json``; a move or a deletion
    adds ``tags/<name>/<version:020d>.json`` with put-if-absent, and the highest version wins.
    ``target`` is None in a version that deletes the tag.
    """

    name: str
    target: SnapshotId | None
    created_at: float
    format_version: str = FORMAT_VERSION
    version: int = 0

    @property
    def deleted(self) -> bool:
        return self.target is None

    def encode(self) -> bytes:
        doc: dict[str, Any] = {
            "format_version": self.format_version,
            "name": self.name,
            "target": self.target.to_json() if self.target else None,
            "created_at": self.created_at,
        }
        if self.version:  # version 0 stays byte-compatible with format 1.0
            doc["version"] = self.version
        return json.dumps(doc).encode()

    @classmethod
    def decode(cls, data: bytes, key: str) -> Tag:
        what = "tag"
        doc = strict.obj(strict.load_json(data, key, what, max_bytes=strict.MAX_SMALL_DOC_BYTES), key, what)
        check_version(doc, key)
        name = strict.string(doc, "name", key, what, max_len=256)
        try:
            validate_name(name, "tag")
        except ValueError as exc:
            raise ManifestError(f"tag {key!r}: {exc}") from None
        version = strict.integer(doc, "version", key, what, hi=MAX_SEQ) if "version" in doc else 0
        if key.startswith("tags/"):
            expected = f"tags/{name}.json" if version == 0 else f"tags/{name}/{version:020d}.json"
            if key != expected:
                raise ManifestError(f"tag {key!r} claims to be tag {name!r} version {version}")
        raw_target = doc.get("target")
        if raw_target is None and version == 0:
            raise ManifestError(f"tag {key!r}: the first version of a tag must name a snapshot")
        target = None
        if raw_target is not None:
            target = SnapshotId.from_json(strict.obj(raw_target, key, what, "target"), key, what)
        return cls(
            name,
            target,
            strict.timestamp(doc, "created_at", key, what),
            strict.string(doc, "format_version", key, what, max_len=32),
            version,
        )
