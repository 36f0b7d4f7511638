"""gc's sweep (docs/protocol.md, steps 1 and 3): list every shard, delete the unreferenced old ones.

The listing streams each ``shards/xx/`` prefix past the references
(:mod:`.fanout_sweep`), fanned out over threads or Ray tasks (:mod:`.fanout`); deletes go
out only once every prefix was listed completely, in batches spread over the prefixes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from ..format.keys import SHARDS_PREFIX, parse_shard_key
from ..store.base import DELETE_BATCH, ObjectInfo, batched
from . import progress
from .fanout import run_pieces, split
from .fanout_sweep import SweepPart, SweepRules, classify, delete_batches, sweep_prefixes
from .gc_mark import References
from .gc_report import GcRun

log = logging.getLogger(__name__)


class GcSweep(GcRun):
    """Steps 1 and 3 of a gc run."""

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



def _spread_order(key: str) -> str:
    """Sort key that interleaves the ``shards/xx/`` prefixes: the hash after its fan-out digits."""
    return key[len(SHARDS_PREFIX) + 5 :]

