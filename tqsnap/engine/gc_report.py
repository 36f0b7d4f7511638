"""What a gc run reports, and the state its steps share (:mod:`.gc`).

:class:`GcRun` holds what every step of one run reads (the store, the cutoff ``T - grace``,
the executor) and counts requests into the report; the steps themselves live in
:mod:`.gc_mark` (which shards live manifests reference), :mod:`.gc_sweep` (list the shards,
delete the garbage) and :mod:`.gc_leftovers` (finalise forgotten manifests, abort stale
uploads, remove probe objects), and :class:`~.gc.GarbageCollector` runs them in order.
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ..store.base import ObjectInfo, ObjectStore
from .fanout_sweep import LIST_PAGE
from .repository import Repository


@dataclass
class GcReport:
    """What one gc run saw and did (or, on a dry run, would have done)."""

    url: str
    server_time: float
    grace: float
    max_write_duration: float
    dry_run: bool
    shards_scanned: int = 0
    shard_bytes_scanned: int = 0
    manifests_scanned: int = 0
    tombstones_scanned: int = 0
    live_manifests: int = 0
    referenced_shards: int = 0
    shards_deleted: int = 0
    bytes_freed: int = 0
    young_garbage: int = 0
    young_garbage_bytes: int = 0
    #: Server time after which the youngest garbage kept this run is old enough to delete.
    young_garbage_deletable_at: float | None = None
    #: Server time after which the youngest tombstone seen is old enough for its snapshot's
    #: manifest and shards to be reclaimed by a gc run.
    young_tombstones_due_at: float | None = None
    manifests_finalised: list[str] = field(default_factory=list)
    tombstones_deleted: int = 0
    foreign_keys: int = 0
    uploads_aborted: list[str] = field(default_factory=list)
    young_uploads: int = 0
    #: Objects a store probe left under ``tqsnap-probe/`` (``init`` leaves its own for gc).
    probe_objects_deleted: int = 0
    requests: Counter[str] = field(default_factory=Counter)
    duration_s: float = 0.0
    deleted_shard_keys: list[str] = field(default_factory=list, repr=False)

    @property
    def objects_scanned(self) -> int:
        return self.shards_scanned + self.manifests_scanned + self.tombstones_scanned

    @property
    def total_requests(self) -> int:
        return sum(self.requests.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "dry_run": self.dry_run,
            "server_time": self.server_time,
            "grace_seconds": self.grace,
            "max_write_duration_seconds": self.max_write_duration,
            "objects_scanned": self.objects_scanned,
            "shards_scanned": self.shards_scanned,
            "shard_bytes_scanned": self.shard_bytes_scanned,
            "manifests_scanned": self.manifests_scanned,
            "tombstones_scanned": self.tombstones_scanned,
            "live_manifests": self.live_manifests,
            "referenced_shards": self.referenced_shards,
            "shards_deleted": self.shards_deleted,
            "bytes_freed": self.bytes_freed,
            "young_garbage": self.young_garbage,
            "young_garbage_bytes": self.young_garbage_bytes,
            "young_garbage_deletable_at": self.young_garbage_deletable_at,
            "young_tombstones_due_at": self.young_tombstones_due_at,
            "manifests_finalised": self.manifests_finalised,
            "tombstones_deleted": self.tombstones_deleted,
            "foreign_keys": self.foreign_keys,
            "uploads_aborted": self.uploads_aborted,
            "young_uploads": self.young_uploads,
            "probe_objects_deleted": self.probe_objects_deleted,
            "requests": dict(self.requests) | {"total": self.total_requests},
            "duration_s": round(self.duration_s, 6),
        }



class GcRun:
    """The state one gc run's steps share; :class:`~.gc.GarbageCollector` sets it up."""

    #: Step 3: only shards older than ``T - grace`` may be deleted (see GarbageCollector).
    _require_age: bool
    #: Step 2: a manifest tombstoned less than ``grace`` ago still protects its shards.
    _young_tombstones_protect: bool

    repo: Repository
    store: ObjectStore
    dry_run: bool
    threads: int
    executor: str
    workers: int
    prefixes: list[str]
    grace: float
    server_time: float
    cutoff: float
    report: GcReport
    _lock: threading.Lock

    def _count(self, verb: str, n: int = 1) -> None:
        with self._lock:
            self.report.requests[verb] += n

    def _list(self, prefix: str) -> list[ObjectInfo]:
        infos = list(self.store.list(prefix))
        self._count("list", max(1, math.ceil(len(infos) / LIST_PAGE)))
        return infos

    def _pool(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(self.threads, thread_name_prefix="tqsnap-gc")

