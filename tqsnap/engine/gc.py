"""Garbage collection: the sweep of docs/protocol.md, safe beside live writers without a lock.

One run at server time ``T`` (``store.now()`` when the run starts):

1. (the mark) list Manifests and Tombstones; the *live* manifests are those without a Tombstone
   plus those whose Tombstone is younger than ``grace`` (by its LastModified), and their shard
   keys are the references, held as a :class:`~.fanout_sweep.ReferenceSet` (8 bytes each);
2. (the sweep) list every Shard with its LastModified across the 256 ``shards/xx/`` prefixes,
   in parallel (threads, or Ray tasks: :mod:`.fanout`), streaming each listing past the
   references and keeping only the garbage;
3. delete every listed shard that no live manifest references and whose LastModified is before
   ``T - grace``, with batched deletes (at most 1000 keys per request), once every prefix has
   been listed completely;
4. delete the manifests whose Tombstones are older than ``grace``, and only then those
   Tombstones (a crash in between must never make a forgotten manifest visible again);
5. abort incomplete uploads (S3 multipart uploads, the local store's ``.tmp/`` files) started
   before ``T - grace``: left by killed or failed saves, never by a writer within its deadline.

A listing that cannot see everything (an unreadable directory, a symlink in a local tree, a
LIST that fails or is cut short) raises before anything is deleted: the store raises
:class:`~tqsnap.errors.IncompleteListingError` (or another StoreError), and gc never catches
it. A key gc did not see is a key it could wrongly judge unreferenced.

The mark comes before the sweep so that the sweep need not hold every shard key (memory grows
with references and garbage, not with the objects in the bucket). The order does not matter to
safety: the proof in docs/protocol.md uses only the start of the last manifest listing and each
deleted shard's LastModified, never the time the shard was listed; a shard uploaded after the
mark is younger than ``T - grace`` and the age rule keeps it.

Why this is safe beside writers that commit during the sweep is proved in docs/protocol.md; the
two rules the sweep itself contributes (the age check of step 3 and the young tombstones of
step 2) are class attributes here so the protocol simulation can switch each off and show that
the suite then fails. Nothing outside the tests may change them.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from array import array
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ..errors import GcConflictError, ManifestError, ObjectNotFoundError
from ..format.config import CONFIG_VERSIONS_PREFIX
from ..format.keys import (
    SHARDS_PREFIX,
    SNAPSHOTS_PREFIX,
    TOMBSTONES_PREFIX,
    parse_seq_key,
    parse_shard_key,
    parse_stream_key,
    shard_prefixes,
    snapshot_key,
    tombstone_key,
)
from ..format.manifest import Manifest, SnapshotId
from ..format.strict import MAX_MANIFEST_BYTES
from ..store.base import DELETE_BATCH, ObjectInfo, PendingUpload, batched
from ..store.probe import PROBE_PREFIX
from . import progress
from .fanout import resolve_executor, run_pieces, split
from .fanout_sweep import (
    LIST_PAGE,
    ReferenceSet,
    SweepPart,
    SweepRules,
    classify,
    delete_batches,
    sweep_prefixes,
)
from .repository import Repository

log = logging.getLogger(__name__)

#: How often step 2 starts over when live manifests vanish under it before the run gives up.
_RELIST_ATTEMPTS = 5


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


@dataclass
class References:
    """Step 2's result: what the live manifests reference and what can be finalised."""

    live: list[SnapshotId] = field(default_factory=list)
    #: Supports ``key in refs.keys`` and ``len``; holds 8-byte digests, not the keys themselves.
    keys: ReferenceSet = field(default_factory=ReferenceSet)
    finalise_manifests: list[str] = field(default_factory=list)
    finalise_tombstones: list[str] = field(default_factory=list)
    finalised: list[SnapshotId] = field(default_factory=list)


class GarbageCollector:
    """One gc run over a repository. :meth:`run` does it all; the steps are public for tests.

    Parameters:
        repo: the repository; its config supplies ``grace`` (and is checked to be safe).
        dry_run: compute and report everything, delete nothing.
        threads: concurrent list, manifest-read and delete requests (within each Ray task, when
            the sweep runs on Ray).
        prefixes: the shard prefixes to list; the default is the 256 ``shards/xx/`` fan-out,
            which lets S3 serve the listing in parallel.
        workers: how many sweep pieces run at once: threads of this process (default
            ``threads``), or Ray tasks (default: the cluster's CPUs, at most 64).
        executor: ``"threads"``, ``"ray"``, or ``"auto"`` (Ray when this process is connected
            to a Ray cluster and the store can be reopened there; threads otherwise).
    """

    #: Step 3: only shards older than ``T - grace`` may be deleted. Protects uploads of writers
    #: that have not committed yet.
    _require_age: bool = True
    #: Step 2: a manifest tombstoned less than ``grace`` ago still protects its shards. Protects
    #: writers that picked it as their parent before it was forgotten.
    _young_tombstones_protect: bool = True

    def __init__(
        self,
        repo: Repository,
        *,
        dry_run: bool = False,
        threads: int = 16,
        prefixes: Sequence[str] | None = None,
        workers: int | None = None,
        executor: str = "auto",
    ) -> None:
        repo.config.check_safe()
        self.repo = repo
        self.store = repo.store
        self.dry_run = dry_run
        self.threads = max(1, threads)
        self.executor = resolve_executor(executor, self.store)
        self.workers = max(1, workers) if workers is not None else self._default_workers()
        self.prefixes = list(prefixes) if prefixes is not None else shard_prefixes()
        self.grace = repo.config.grace
        self._lock = threading.Lock()
        self._t0 = time.monotonic()
        self.server_time = self.store.now()
        self.cutoff = self.server_time - self.grace
        self.report = GcReport(
            repo.url, self.server_time, self.grace, repo.config.max_write_duration, dry_run
        )

    # --- helpers -----------------------------------------------------------------------------

    def _default_workers(self) -> int:
        if self.executor != "ray":
            return self.threads
        import ray

        cpus = int(ray.cluster_resources().get("CPU", 1)) if ray.is_initialized() else 4
        return max(1, min(64, cpus))

    def _count(self, verb: str, n: int = 1) -> None:
        with self._lock:
            self.report.requests[verb] += n

    def _list(self, prefix: str) -> list[ObjectInfo]:
        infos = list(self.store.list(prefix))
        self._count("list", max(1, math.ceil(len(infos) / LIST_PAGE)))
        return infos

    def _pool(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(self.threads, thread_name_prefix="tqsnap-gc")

    # --- step 1 ------------------------------------------------------------------------------

    def list_shards(self) -> list[ObjectInfo]:
        """Every shard object with its size and LastModified, listed prefix by prefix in parallel.

        Holds every key: :meth:`run` uses :meth:`sweep` instead. This step-by-step form (with
        :meth:`garbage`) lets tests and the protocol simulation interleave other actors.
        """
        if self.threads == 1 or len(self.prefixes) == 1:
            pages = [self._list(p) for p in self.prefixes]
        else:
            with self._pool() as pool:
                pages = list(pool.map(self._list, self.prefixes))
        shards: list[ObjectInfo] = []
        for page in pages:
            for info in page:
                if parse_shard_key(info.key) is None:
                    self.report.foreign_keys += 1  # not ours to judge: never deleted
                    continue
                shards.append(info)
        self.report.shards_scanned = len(shards)
        self.report.shard_bytes_scanned = sum(i.size for i in shards)
        self._warn_foreign()
        return shards

    def _warn_foreign(self) -> None:
        if self.report.foreign_keys:
            log.warning(
                "gc: %d keys under shards/ are not shard names and were left alone", self.report.foreign_keys
            )

    def sweep(self, refs: References) -> list[ObjectInfo]:
        """Steps 2 and 3's listing: every prefix streamed past ``refs``; returns the garbage.

        The prefixes are dealt into pieces that run on :attr:`executor` (``workers`` at a
        time; on Ray each piece lists its prefixes ``threads`` at a time). The first listing
        error of any piece is raised here, before anything is deleted.
        """
        rules = SweepRules(self.cutoff, self.grace, self._require_age, 1)
        if self.executor == "ray":
            rules = SweepRules(self.cutoff, self.grace, self._require_age, self.threads)
            pieces = split(self.prefixes, self.workers * 4)  # a few per worker: balances uneven prefixes
        else:
            pieces = [[p] for p in self.prefixes]
        parts = run_pieces(
            sweep_prefixes, pieces, workers=self.workers, executor=self.executor, shared=(self.store, refs.keys, rules)
        )
        total = SweepPart()
        for part in parts:
            total.merge(part)
        r = self.report
        r.shards_scanned, r.shard_bytes_scanned = total.shards_scanned, total.shard_bytes_scanned
        r.foreign_keys = total.foreign_keys
        r.young_garbage, r.young_garbage_bytes = total.young_garbage, total.young_garbage_bytes
        r.young_garbage_deletable_at = total.young_garbage_deletable_at
        self._count("list", total.list_requests)
        self._warn_foreign()
        return sorted(total.garbage, key=lambda i: i.key)

    # --- step 2 ------------------------------------------------------------------------------

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

    # --- step 3 ------------------------------------------------------------------------------

    def garbage(self, shards: Sequence[ObjectInfo], refs: References) -> list[ObjectInfo]:
        """The shards step 3 deletes: unreferenced and older than ``T - grace``.

        The same decision :meth:`sweep` makes while it lists (:func:`~.fanout_sweep.classify`).
        """
        part = SweepPart()
        classify(shards, refs.keys, SweepRules(self.cutoff, self.grace, self._require_age), part)
        r = self.report
        r.young_garbage, r.young_garbage_bytes = part.young_garbage, part.young_garbage_bytes
        r.young_garbage_deletable_at = part.young_garbage_deletable_at
        return part.garbage

    def delete_shards(self, garbage: Sequence[ObjectInfo]) -> None:
        """Step 3's deletes: full batches of ``DELETE_BATCH`` keys, several batches at a time.

        Each batch is one DeleteObjects request; sending batches concurrently hides the
        per-request latency the way the parallel listing does.
        """
        self.report.shards_deleted = len(garbage)
        self.report.bytes_freed = sum(i.size for i in garbage)
        self.report.deleted_shard_keys = keys = [i.key for i in garbage]
        if not keys or self.dry_run:
            return
        # Batches are cut in the order of the hash past its first two digits, so that each one
        # spans all 256 prefixes (about 4 keys each) instead of 1000 keys of one: S3 counts every
        # key of a DeleteObjects against its prefix's 3,500 writes per second (docs/scale.md).
        chunks = list(batched(sorted(keys, key=_spread_order), DELETE_BATCH))
        sizes = {i.key: i.size for i in garbage}
        if self.executor == "ray":
            pieces = split(chunks, self.workers * 4)
            threads = self.threads
        else:
            pieces, threads = [[c] for c in chunks], 1
        sink = progress.sink()
        freed = iter(sum(sizes[k] for chunk in piece for k in chunk) for piece in pieces)
        requests = run_pieces(
            delete_batches,
            pieces,
            workers=self.workers if self.executor == "ray" else self.threads,
            executor=self.executor,
            shared=(self.store, threads),
            on_result=lambda _n: sink.advance(next(freed, 0)),
        )
        self._count("delete", sum(requests))

    # --- step 4 ------------------------------------------------------------------------------

    def finalise(self, refs: References) -> None:
        """Delete old-tombstoned manifests, then their tombstones (never the other way round)."""
        self.report.manifests_finalised = [str(s) for s in refs.finalised]
        self.report.tombstones_deleted = len(refs.finalise_tombstones)
        if self.dry_run:
            return
        if refs.finalise_manifests:
            self._count("delete", self.store.delete_many(refs.finalise_manifests))
        if refs.finalise_tombstones:
            self._count("delete", self.store.delete_many(refs.finalise_tombstones))

    # --- step 5 ------------------------------------------------------------------------------

    def stale_uploads(self) -> list[PendingUpload]:
        """Incomplete uploads started before ``T - grace``; younger ones may belong to a live writer."""
        stale: list[PendingUpload] = []
        self._count("list_uploads")
        for upload in self.store.list_uploads(""):
            if upload.initiated < self.cutoff:
                stale.append(upload)
            else:
                self.report.young_uploads += 1
        return stale

    def abort_uploads(self, uploads: Sequence[PendingUpload]) -> None:
        """Step 5: free the parts (or temp files) of uploads no writer can still complete."""
        self.report.uploads_aborted = [u.key for u in uploads]
        if self.dry_run:
            return
        for upload in uploads:
            self.store.abort_upload(upload)
            self._count("abort_upload")
        if uploads:
            log.info("gc: aborted %d incomplete uploads older than the grace period", len(uploads))

    def delete_probe_leftovers(self) -> None:
        """Step 6: objects a store probe wrote under ``tqsnap-probe/`` and left, once older than grace.

        ``init`` probes the store with the writer's credentials, which may not delete, so it
        leaves its few probe objects to the role that may. Nothing references them; the age
        rule only keeps a probe that is still running from losing its objects mid-check.
        """
        self._count("list")
        old = [i.key for i in self.store.list(PROBE_PREFIX) if i.last_modified < self.cutoff]
        self.report.probe_objects_deleted = len(old)
        if old and not self.dry_run:
            self._count("delete", self.store.delete_many(old))

    # --- all of it ---------------------------------------------------------------------------

    def check_config_unchanged(self) -> None:
        """Stop before deleting if a newer config version appeared since this run read its own.

        ``tqsnap config`` may raise ``max_write_duration`` once grace allows it; a gc run still
        holding the older, smaller grace must not delete with it (docs/protocol.md, "Changing
        the config"). One listing of ``config/``, not counted in the report.
        """
        listed = (parse_seq_key(i.key, CONFIG_VERSIONS_PREFIX) for i in self.store.list(CONFIG_VERSIONS_PREFIX))
        newest = max((v for v in listed if v is not None), default=1)
        if newest > self.repo.config.version:
            raise GcConflictError(
                f"the config of {self.repo.url} changed to version {newest} while gc ran with version "
                f"{self.repo.config.version}; nothing was deleted, run gc again"
            )

    def run(self) -> GcReport:
        refs = self.list_references()
        self.check_config_unchanged()
        self.delete_shards(self.sweep(refs))
        self.finalise(refs)
        self.abort_uploads(self.stale_uploads())
        self.delete_probe_leftovers()
        return self.finish()

    def finish(self) -> GcReport:
        self.report.duration_s = time.monotonic() - self._t0
        r = self.report
        log.info(
            "gc%s of %s: scanned %d objects, %s %d shards (%d bytes) and %d manifests in %d requests",
            " (dry run)" if r.dry_run else "",
            r.url,
            r.objects_scanned,
            "would delete" if r.dry_run else "deleted",
            r.shards_deleted,
            r.bytes_freed,
            len(r.manifests_finalised),
            r.total_requests,
        )
        return r


def _spread_order(key: str) -> str:
    """Sort key that interleaves the ``shards/xx/`` prefixes: the hash after its fan-out digits."""
    return key[len(SHARDS_PREFIX) + 5 :]


def collect_garbage(
    repo: Repository,
    *,
    dry_run: bool = False,
    threads: int = 16,
    workers: int | None = None,
    executor: str = "auto",
) -> GcReport:
    """Run one gc sweep over ``repo`` (see the module doc); returns what it did."""
    return GarbageCollector(repo, dry_run=dry_run, threads=threads, workers=workers, executor=executor).run()


__all__ = ["GarbageCollector", "GcReport", "References", "collect_garbage"]
