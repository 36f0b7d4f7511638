"""gc's mark (docs/protocol.md, step 2): which shard keys the live manifests reference.

The live manifests are those without a tombstone and those whose tombstone is younger than
``grace``; their references are held as a :class:`~.fanout_sweep.ReferenceSet` (8 bytes
each). Manifests tombstoned longer ago (except each stream's highest) and their tombstones
are noted for finalisation (:mod:`.gc_leftovers`).
"""

from __future__ import annotations

import logging
from array import array
from dataclasses import dataclass, field

from ..errors import GcConflictError, ManifestError, ObjectNotFoundError
from ..format.keys import SNAPSHOTS_PREFIX, TOMBSTONES_PREFIX, parse_stream_key, snapshot_key, tombstone_key
from ..format.manifest import Manifest, SnapshotId
from ..format.strict import MAX_MANIFEST_BYTES
from ..store.base import ObjectInfo
from .fanout_sweep import ReferenceSet
from .gc_report import GcRun

log = logging.getLogger(__name__)

#: How often step 2 starts over when live manifests vanish under it before the run gives up.
_RELIST_ATTEMPTS = 5


@dataclass
class References:
    """Step 2's result: what the live manifests reference and what can be finalised."""

    live: list[SnapshotId] = field(default_factory=list)
    #: Supports ``key in refs.keys`` and ``len``; holds 8-byte digests, not the keys themselves.
    keys: ReferenceSet = field(default_factory=ReferenceSet)
    finalise_manifests: list[str] = field(default_factory=list)
    finalise_tombstones: list[str] = field(default_factory=list)
    finalised: list[SnapshotId] = field(default_factory=list)



class GcMark(GcRun):
    """Step 2 of a gc run."""

    def list_references(self) -> References:
        """List manifests and tombstones; read the live manifests and collect their shard keys.

        A manifest that cannot be parsed stops the run before anything is deleted: gc cannot
        know which shards it references. A live manifest that vanishes between the listing and
        the read (a concurrent gc finalised it) makes the listing start over: the manifests
        committed meanwhile may reuse its shards and must be seen (docs/protocol.md, lemma 3).
        """
        cache: dict[tuple[str, int], array[int]] = {}
        for attempt in range(1, _RELIST_ATTEMPTS + 1):
            refs, vanished = self._references_once(cache)
            if not vanished:
                return refs
            log.info(
                "gc: %d live manifests vanished while being read (a concurrent gc finalised them); "
                "listing again (attempt %d)",
                len(vanished),
                attempt,
            )
        raise GcConflictError(
            f"gc of {self.repo.url}: live manifests kept vanishing while being read "
            f"({_RELIST_ATTEMPTS} listings); another gc is finalising snapshots. Nothing was "
            "deleted; run gc again later"
        )

    def _references_once(self, cache: dict[tuple[str, int], array[int]]) -> tuple[References, list[str]]:
        manifests: dict[tuple[str, int], ObjectInfo] = {}
        for info in self._list(SNAPSHOTS_PREFIX):
            parsed = parse_stream_key(info.key, SNAPSHOTS_PREFIX)
            if parsed is not None:
                manifests[parsed] = info
        tombstones: dict[tuple[str, int], ObjectInfo] = {}
        for info in self._list(TOMBSTONES_PREFIX):
            parsed = parse_stream_key(info.key, TOMBSTONES_PREFIX)
            if parsed is not None:
                tombstones[parsed] = info
        self.report.manifests_scanned = len(manifests)
        self.report.tombstones_scanned = len(tombstones)

        highest: dict[str, int] = {}
        for stream, seq in manifests:
            highest[stream] = max(seq, highest.get(stream, 0))
        refs = References()
        live: list[tuple[str, int]] = []
        for sid in sorted(manifests):
            stone = tombstones.get(sid)
            old = stone is not None and stone.last_modified < self.cutoff
            if stone is None or (self._young_tombstones_protect and not old):
                live.append(sid)
            elif old and sid[1] != highest[sid[0]]:
                # The highest seq of a stream stays, tombstoned, so no writer ever reuses its seq.
                refs.finalise_manifests.append(snapshot_key(*sid))
                refs.finalised.append(SnapshotId(*sid))
        finalised = set(refs.finalised)
        for sid, stone in sorted(tombstones.items()):
            if stone.last_modified >= self.cutoff:
                due = stone.last_modified + self.grace
                if self.report.young_tombstones_due_at is None or due > self.report.young_tombstones_due_at:
                    self.report.young_tombstones_due_at = due
                continue
            if sid not in manifests or SnapshotId(*sid) in finalised:
                refs.finalise_tombstones.append(tombstone_key(*sid))

        def load(sid: tuple[str, int]) -> array[int] | None:
            if sid in cache:
                return cache[sid]  # manifests are immutable: one read per run is enough
            key = snapshot_key(*sid)
            if manifests[sid].size > MAX_MANIFEST_BYTES:  # refused by its listed size, never read
                raise ManifestError(
                    f"manifest {key!r} is {manifests[sid].size} bytes, more than the "
                    f"{MAX_MANIFEST_BYTES}-byte limit; gc cannot tell what it references, so "
                    "nothing was deleted"
                )
            try:
                raw = self.store.get(key)
            except ObjectNotFoundError:
                return None
            finally:
                self._count("get")
            # Only the references' digests are kept: a decoded manifest is dropped at once.
            cache[sid] = ReferenceSet.digests_of(ref.key for ref in Manifest.decode(raw, key).shards)
            return cache[sid]

        if self.threads == 1:
            loaded = [load(sid) for sid in live]
        else:
            with self._pool() as pool:
                loaded = list(pool.map(load, live))
        vanished: list[str] = []
        for sid, digests in zip(live, loaded, strict=True):
            if digests is None:
                vanished.append(snapshot_key(*sid))
                continue
            refs.live.append(SnapshotId(*sid))
        refs.keys = ReferenceSet(d for digests in loaded if digests is not None for d in digests)
        self.report.live_manifests = len(refs.live)
        self.report.referenced_shards = len(refs.keys)
        return refs, vanished

