"""Compare two snapshots item by item, by content, without reading any shard."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..format.manifest import Item, Manifest


@dataclass
class SnapshotDiff:
    """Which item paths were added, removed, changed or left the same between A and B."""

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unchanged: int = 0
    shared_shard_bytes: int = 0
    new_shard_bytes: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "added": self.added,
            "removed": self.removed,
            "changed": self.changed,
            "unchanged": self.unchanged,
            "shared_shard_bytes": self.shared_shard_bytes,
            "new_shard_bytes": self.new_shard_bytes,
        }


def _fingerprint(manifest: Manifest, item: Item) -> tuple[Any, ...]:
    """An item's identity by content: dtype, shape, and its own hash (packed items) or the
    hashes and ranges of its extents (items with shards of their own)."""
    content = item.hash or tuple((manifest.shards[e.shard].hash, e.offset, e.length) for e in item.extents)
    return (item.kind, item.dtype, tuple(item.shape or ()), content)


def diff_manifests(a: Manifest, b: Manifest) -> SnapshotDiff:
    """Items are compared by content fingerprint; shards by hash (bytes B shares with A)."""
    out = SnapshotDiff()
    items_a = {i.path: i for i in a.items}
    items_b = {i.path: i for i in b.items}
    for path in sorted(items_b.keys() - items_a.keys()):
        out.added.append(path)
    for path in sorted(items_a.keys() - items_b.keys()):
        out.removed.append(path)
    for path in sorted(items_a.keys() & items_b.keys()):
        if _fingerprint(a, items_a[path]) == _fingerprint(b, items_b[path]):
            out.unchanged += 1
        else:
            out.changed.append(path)
    hashes_a = {s.hash for s in a.shards}
    for s in b.shards:
        if s.hash in hashes_a:
            out.shared_shard_bytes += s.size
        else:
            out.new_shard_bytes += s.size
    return out
