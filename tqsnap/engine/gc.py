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

The steps live in modules of their own: :mod:`.gc_mark` (step 2), :mod:`.gc_sweep` (steps 1
and 3), :mod:`.gc_leftovers` (steps 4 and 5, and probe objects), over the shared state and
report of :mod:`.gc_report`; :class:`GarbageCollector` sets a run up and runs them in order.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from ..errors import GcConflictError
from ..format.config import CONFIG_VERSIONS_PREFIX
from ..format.keys import parse_seq_key, shard_prefixes
from .fanout import resolve_executor
from .gc_leftovers import GcLeftovers
from .gc_mark import GcMark, References
from .gc_report import GcReport
from .gc_sweep import GcSweep
from .repository import Repository

log = logging.getLogger(__name__)


class GarbageCollector(GcMark, GcSweep, GcLeftovers):
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

    def _default_workers(self) -> int:
        if self.executor != "ray":
            return self.threads
        import ray

        cpus = int(ray.cluster_resources().get("CPU", 1)) if ray.is_initialized() else 4
        return max(1, min(64, cpus))

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
