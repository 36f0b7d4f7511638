"""What one stream costs: its logical bytes, the stored bytes of the shards it references, and
how much of that it shares with other streams (so forgetting the stream would not free it).

One name, one meaning (the same names as ``tqsnap stats`` for the whole repository):

- ``logical_bytes``: the bytes of the items of the stream's visible snapshots, summed per
  snapshot (an unchanged tensor in ten snapshots counts ten times): what a restore of every
  snapshot would write.
- ``stored_bytes``: the bytes the store holds for the distinct shards those snapshots
  reference (after compression, each shard once).
- ``shared_stored_bytes``: the part of ``stored_bytes`` that visible snapshots of other
  streams reference too; ``unique_stored_bytes`` is the rest, what gc could reclaim if the
  whole stream were forgotten.
- ``logical_to_stored_ratio``: ``logical_bytes / stored_bytes``, what dedup and compression
  save together (``reused_fraction`` is a different figure: the share of one save's bytes that
  was already stored).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import SnapshotNotFoundError
from ..format.keys import validate_name
from .repository import Repository


@dataclass
class StreamUsage:
    stream: str
    snapshots: int
    logical_bytes: int
    shards: int
    stored_bytes: int
    shared_stored_bytes: int

    @property
    def unique_stored_bytes(self) -> int:
        return self.stored_bytes - self.shared_stored_bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "stream": self.stream,
            "snapshots": self.snapshots,
            "logical_bytes": self.logical_bytes,
            "shards": self.shards,
            "stored_bytes": self.stored_bytes,
            "shared_stored_bytes": self.shared_stored_bytes,
            "unique_stored_bytes": self.unique_stored_bytes,
            "logical_to_stored_ratio": round(self.logical_bytes / self.stored_bytes, 3) if self.stored_bytes else None,
        }


def stream_usage(repo: Repository, stream: str) -> StreamUsage:
    """Figures for ``stream`` from the manifests of every visible snapshot of the repository.

    Other streams' manifests are read too: "shared" needs to know who else uses each shard.
    Item bytes come from each item table (not a manifest's self-reported statistics).
    """
    from .reader import load_body

    validate_name(stream)
    if stream not in repo.streams():
        raise SnapshotNotFoundError(f"stream {stream!r} has no snapshots in {repo.url}")
    mine: dict[str, int] = {}
    others: set[str] = set()
    logical = snapshots = 0
    for name in repo.streams():
        for seq in repo.visible_seqs(name):
            m = repo.load_manifest(name, seq)
            if name == stream:
                m = load_body(repo.store, m)
                snapshots += 1
                logical += sum(item.size for item in m.items)
                for ref in m.shards:
                    mine[ref.key] = ref.stored_size
            else:
                others.update(ref.key for ref in m.shards)
    stored = sum(mine.values())
    shared = sum(size for key, size in mine.items() if key in others)
    return StreamUsage(stream, snapshots, logical, len(mine), stored, shared)
