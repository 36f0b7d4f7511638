"""What gc removes besides unreferenced shards (docs/protocol.md, steps 4 and 5, and probes).

Manifests whose tombstones are older than ``grace`` and then those tombstones (never the other
way round); incomplete uploads started before ``T - grace``; objects a store probe left.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from ..store.base import PendingUpload
from ..store.probe import PROBE_PREFIX
from .gc_mark import References
from .gc_report import GcRun

log = logging.getLogger(__name__)


class GcLeftovers(GcRun):
    """Steps 4 and 5 of a gc run, and the probe objects."""

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

