"""The ``job`` manifest kind: several named parts committed as ONE snapshot (docs/format/job.md).

A job snapshot is an ordinary manifest of kind ``job``. Its shard table is the union of every
part's shards and each item path is prefixed with its part's name (``trainer/...``,
``queue/...``, ``loop/...``), so everything that walks manifests (gc's mark, verify, copy,
diff, ``ls``) treats the job as one unit without knowing about parts; a reader that predates
jobs still marks all of its shards. ``extra.job`` names the parts, each with the kind and
the kind-specific header (the ``extra`` a single-kind snapshot of that kind would carry) that
restore it. :func:`part_manifest` turns one part back into the manifest a single-kind reader
expects, so a part restores with the same code as a snapshot of its kind.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..errors import ManifestError
from . import strict
from .keys import validate_name
from .manifest import Extent, Item, Manifest, ShardRef

JOB_KIND = "job"
#: The layout of ``extra.job``; a reader refuses a version it does not know.
JOB_VERSION = 1
READABLE_JOB_VERSIONS = (1,)
#: Parts one job may have (a crafted manifest listing more is refused).
MAX_PARTS = 256


def validate_part_name(name: str) -> str:
    """A part name follows the stream-name rules (no ``/``), so ``<part>/<path>`` splits uniquely."""
    return validate_name(name, "part")


def part_item_path(part: str, path: str) -> str:
    """The path of a part's item inside the job manifest."""
    return f"{part}/{path}"


@dataclass(frozen=True)
class JobPart:
    """One part of a job: how to restore it and what staging it cost.

    ``header`` is the kind-specific ``extra`` (a DCP part's metadata, a queue's controller
    state, a state tree); ``staged_at`` is the server time at which its staging began, before
    its first shard was uploaded.
    """

    name: str
    kind: str
    header: dict[str, Any]
    stats: dict[str, Any] = field(default_factory=dict)
    staged_at: float = 0.0
    items: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "header": self.header,
            "stats": self.stats,
            "staged_at": self.staged_at,
            "items": self.items,
        }

    @classmethod
    def from_json(cls, name: str, doc: Any, key: str) -> JobPart:
        what = "job manifest"
        doc = strict.obj(doc, key, what, f"extra.job.parts.{name}")
        try:
            validate_part_name(name)
        except ValueError as exc:
            raise ManifestError(f"{what} {key!r}: {exc}") from None
        kind = strict.string(doc, "kind", key, what, max_len=256)
        if kind == JOB_KIND:
            raise ManifestError(f"{what} {key!r}: part {name!r} is itself a job; jobs do not nest")
        return cls(
            name=name,
            kind=kind,
            header=strict.obj(doc.get("header"), key, what, f"parts.{name}.header"),
            stats=strict.mapping(doc, "stats", key, what),
            staged_at=strict.timestamp(doc, "staged_at", key, what),
            items=strict.integer(doc, "items", key, what, hi=strict.MAX_ITEMS),
        )


@dataclass
class JobHeader:
    """``extra.job`` of a job manifest: the job's id and its parts by name."""

    job_id: str
    parts: dict[str, JobPart]
    version: int = JOB_VERSION

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "job_id": self.job_id,
            "parts": {name: self.parts[name].to_json() for name in sorted(self.parts)},
        }

    @classmethod
    def from_manifest(cls, manifest: Manifest, key: str | None = None) -> JobHeader:
        """Parse and check ``extra.job``: known version, valid parts, every item in one part."""
        key = key or str(manifest.id)
        what = "job manifest"
        if manifest.kind != JOB_KIND:
            raise ManifestError(f"snapshot {key!r} is a {manifest.kind!r} snapshot, not a job")
        doc = strict.obj(manifest.extra.get("job"), key, what, "extra.job")
        version = strict.integer(doc, "version", key, what, hi=1 << 30)
        if version not in READABLE_JOB_VERSIONS:
            raise ManifestError(
                f"{what} {key!r} has job layout version {version}; this tqsnap reads "
                f"{', '.join(map(str, READABLE_JOB_VERSIONS))}. Upgrade tqsnap to read it"
            )
        raw_parts = strict.obj(doc.get("parts"), key, what, "extra.job.parts")
        if not raw_parts or len(raw_parts) > MAX_PARTS:
            raise ManifestError(f"{what} {key!r} lists {len(raw_parts)} parts; a job has 1 to {MAX_PARTS}")
        parts = {name: JobPart.from_json(name, body, key) for name, body in raw_parts.items()}
        header = cls(strict.string(doc, "job_id", key, what, max_len=256), parts, version)
        counts = dict.fromkeys(parts, 0)
        for item in manifest.items:
            name = item.path.split("/", 1)[0]
            if name not in counts or "/" not in item.path:
                raise ManifestError(f"{what} {key!r}: item {item.path!r:.200} belongs to no part of the job")
            counts[name] += 1
        for name, count in counts.items():
            if count != parts[name].items:
                raise ManifestError(
                    f"{what} {key!r}: part {name!r} declares {parts[name].items} items but the manifest holds {count}"
                )
        return header


def part_items(items: list[Item], part: str) -> list[Item]:
    """The items of ``part``, with the ``<part>/`` prefix taken off their paths."""
    prefix = f"{part}/"
    return [dataclasses.replace(i, path=i.path[len(prefix) :]) for i in items if i.path.startswith(prefix)]


def select_part_shards(shards: list[ShardRef], items: list[Item]) -> tuple[list[ShardRef], list[Item]]:
    """The shards ``items`` use, in first-use order, and the items renumbered into that table."""
    index: dict[int, int] = {}
    table: list[ShardRef] = []
    out: list[Item] = []
    for item in items:
        extents = []
        for e in item.extents:
            if e.shard not in index:
                index[e.shard] = len(table)
                table.append(shards[e.shard])
            extents.append(Extent(index[e.shard], e.offset, e.length))
        out.append(dataclasses.replace(item, extents=extents))
    return table, out


def part_manifest(manifest: Manifest, part: str, header: JobHeader | None = None) -> Manifest:
    """The manifest a single-kind reader expects for one part of a job (items and body loaded).

    Kind and ``extra`` are the part's, the shard table holds only the part's shards, and the
    stats are the part's; stream, seq, parent, times and metadata are the job's.
    """
    header = header or JobHeader.from_manifest(manifest)
    if part not in header.parts:
        raise KeyError(part)
    info = header.parts[part]
    shards, items = select_part_shards(manifest.shards, part_items(manifest.items, part))
    view = Manifest(
        kind=info.kind,
        stream=manifest.stream,
        seq=manifest.seq,
        parent=manifest.parent,
        write_id=manifest.write_id,
        started_at=manifest.started_at,
        committed_at=manifest.committed_at,
        shards=shards,
        items=items,
        metadata=dict(manifest.metadata),
        extra=dict(info.header),
        stats=dict(info.stats),
        body_shard=None,
        format_version=manifest.format_version,
    )
    view.validate(f"{manifest.id} part {part}")
    return view
