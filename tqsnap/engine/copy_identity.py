"""Where a copied snapshot came from: the ``copied_from`` record in its manifest's metadata.

A copy is recognised by its source's identity, never by its position: the source repository's
``repo_id`` (from its ``tqsnap.json``, so the same repository reached through two URLs or two
endpoints is still one source), the stream, the seq and the source manifest's ``write_id``
(random per save, so a seq re-used after the source was recreated is not taken for the old
one). The record also keeps the moment the state was captured and committed at the origin, so
retention on the destination sees the source's history rather than the day of the copy
(docs/format.md, "copied_from").
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..format.manifest import Manifest

#: The metadata key of the record; reserved for tqsnap (a user's own value is replaced on copy).
COPIED_FROM = "copied_from"


@dataclass(frozen=True)
class SourceIdentity:
    """One source snapshot, as a destination manifest records it."""

    repo_id: str
    stream: str
    seq: int
    write_id: str
    #: When the state was captured and committed at its origin (the first repository of a chain of copies).
    source_started_at: float
    source_committed_at: float
    url: str = ""

    @classmethod
    def of(cls, repo_id: str, url: str, manifest: Manifest) -> SourceIdentity:
        """The identity of ``manifest`` in repository ``repo_id``; times follow a chain of copies to its origin."""
        earlier = cls.from_metadata(manifest.metadata)
        return cls(
            repo_id=repo_id,
            stream=manifest.stream,
            seq=manifest.seq,
            write_id=manifest.write_id,
            source_started_at=earlier.source_started_at if earlier else manifest.started_at,
            source_committed_at=earlier.source_committed_at if earlier else manifest.committed_at,
            url=url,
        )

    def same_snapshot(self, other: SourceIdentity) -> bool:
        return (self.repo_id, self.stream, self.seq, self.write_id) == (
            other.repo_id,
            other.stream,
            other.seq,
            other.write_id,
        )

    def same_stream(self, other: SourceIdentity) -> bool:
        return (self.repo_id, self.stream) == (other.repo_id, other.stream)

    def to_json(self) -> dict[str, Any]:
        return {
            "repo_id": self.repo_id,
            "url": self.url,
            "stream": self.stream,
            "seq": self.seq,
            "write_id": self.write_id,
            "source_started_at": self.source_started_at,
            "source_committed_at": self.source_committed_at,
        }

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> SourceIdentity | None:
        """The record in ``metadata``, or None when there is none or it is malformed.

        Metadata is free-form JSON, so nothing here trusts a type: a record that does not have
        exactly the expected shape is treated as absent (the snapshot then counts as native).
        """
        rec = metadata.get(COPIED_FROM) if isinstance(metadata, Mapping) else None
        if not isinstance(rec, Mapping):
            return None
        strings = [rec.get(k) for k in ("repo_id", "stream", "write_id")]
        seq = rec.get("seq")
        times = [rec.get(k) for k in ("source_started_at", "source_committed_at")]
        if not all(isinstance(s, str) and s for s in strings):
            return None
        if type(seq) is not int or seq < 0:
            return None
        if not all(_finite(t) for t in times):
            return None
        url = rec.get("url")
        return cls(
            strings[0], strings[1], seq, strings[2], float(times[0]), float(times[1]),  # type: ignore[arg-type]
            url if isinstance(url, str) else "",
        )


def _finite(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def captured_at(started_at: float, metadata: Mapping[str, Any]) -> float:
    """When the state of a snapshot was captured: at its origin for a copy, else ``started_at``.

    Retention's calendar buckets use it, so ``forget --keep-daily`` on a mirror keeps what it
    keeps on the source.
    """
    source = SourceIdentity.from_metadata(metadata)
    return source.source_started_at if source is not None else started_at
