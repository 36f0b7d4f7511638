"""Periodic snapshots in the background: the :class:`Snapshotter`.

It snapshots a source (sources.py: a running TransferQueue, whatever state a callable
returns, or any object with a ``snapshot`` method) every ``every`` seconds, on one daemon
thread. Two snapshots never run at once: a request that
arrives while one is running is skipped and logged (and counted in ``skipped``), because
queueing them would only pile up work behind a slow store. A snapshot that fails is logged
and kept in ``last_error``; the schedule goes on, since the next one may well succeed.

Importing this module pulls in neither Ray nor torch; a source loads its adapter when it
first takes a snapshot.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..engine import PackOptions, Repository, SnapshotInfo
from ..engine.packer import reuse_fraction
from ..format.config import parse_duration
from .api import RepoLike, open_repo
from .metrics import SnapshotterMetrics
from .sources import SnapshotSource, as_source

log = logging.getLogger(__name__)

#: A retention hook: called with the repository and the result after each snapshot.
RetentionHook = Callable[[Repository, "ScheduledResult"], Any]


@dataclass
class ScheduledResult:
    """One snapshot the scheduler took: what it stored and how long it took."""

    info: SnapshotInfo
    started_at: float
    duration_s: float
    new_bytes: int
    reused_bytes: int
    #: Stored (compressed) size of the shards this snapshot uploaded, as in manifest stats.
    stored_bytes: int
    detail: Any = None  # the adapter's own result (a TQSnapshotResult for TransferQueue)

    @property
    def reused_fraction(self) -> float:
        """Fraction of this snapshot's bytes that were already in the repository (0..1)."""
        return reuse_fraction(self.new_bytes, self.reused_bytes)

    def to_json(self) -> dict[str, Any]:
        return {
            "snapshot": str(self.info.id),
            "started_at": self.started_at,
            "duration_s": self.duration_s,
            "new_bytes": self.new_bytes,
            "reused_bytes": self.reused_bytes,
            "stored_bytes": self.stored_bytes,
            "reused_fraction": round(self.reused_fraction, 4),
        }


class Snapshotter:
    """Take a snapshot of ``source`` into ``url`` every ``every`` seconds, in the background.

    ``source`` is a TransferQueue (the ``transfer_queue`` module, ``"transferqueue"``, or a
    :class:`~tqsnap.adapters.transferqueue.TransferQueueSystem`), a callable returning a state
    dict (tensors, bytes, JSON values), or a :class:`~tqsnap.faces.sources.SnapshotSource`. ``metadata`` may be a dict or a callable returning one,
    evaluated per snapshot. ``retention`` runs after each successful snapshot.

    ``metrics=True`` keeps Prometheus metrics in ``self.metrics`` (docs/metrics.md);
    ``metrics_port`` also serves them over HTTP on ``metrics_addr`` (127.0.0.1 unless told).
    """

    def __init__(
        self,
        source: Any,
        url: RepoLike,
        *,
        stream: str = "default",
        every: float | str = "10m",
        metadata: dict[str, Any] | Callable[[], dict[str, Any]] | None = None,
        storage_options: dict[str, Any] | None = None,
        retention: RetentionHook | None = None,
        allow_pickle: bool = False,
        options: PackOptions | None = None,
        history: int = 100,
        start: bool = True,
        run_immediately: bool = False,
        metrics: bool = False,
        metrics_port: int | None = None,
        metrics_addr: str = "127.0.0.1",
    ) -> None:
        self.source: SnapshotSource = as_source(source)
        self.stream = stream
        self.every = parse_duration(every)
        if self.every <= 0:
            raise ValueError("every must be a positive duration")
        self.metadata = metadata
        self.retention = retention
        self.allow_pickle = allow_pickle
        self.options = options
        self.repo = open_repo(url, create=True, storage_options=storage_options)
        self.results: deque[ScheduledResult] = deque(maxlen=history)
        self.last_error: BaseException | None = None
        self.taken = 0
        self.failed = 0
        self.skipped = 0
        self._busy = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._run_immediately = run_immediately
        self.metrics: SnapshotterMetrics | None = None
        if metrics or metrics_port is not None:
            self.metrics = SnapshotterMetrics(stream, port=metrics_port, addr=metrics_addr)
        if start:
            self.start()

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Snapshotter:
        """Start the background thread (idempotent)."""
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._loop, name=f"tqsnap-snapshotter-{self.stream}", daemon=True
            )
            self._thread.start()
        return self

    def stop(self, *, final_snapshot: bool = False, timeout: float | None = None) -> None:
        """Stop the schedule; a snapshot in progress finishes first (it is never cut off).

        With ``final_snapshot`` one more snapshot is taken after the running one ends.
        """
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if final_snapshot:
            with self._busy:
                self._take()
        if self.metrics is not None:
            self.metrics.close()

    def __enter__(self) -> Snapshotter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stop.is_set()

    @property
    def last_result(self) -> ScheduledResult | None:
        return self.results[-1] if self.results else None

    # --- snapshots ---------------------------------------------------------------------------

    def snapshot_now(self) -> ScheduledResult | None:
        """Take a snapshot now, in this thread; None (and logged) if one is already running."""
        if not self._busy.acquire(blocking=False):
            self.skipped += 1
            if self.metrics is not None:
                self.metrics.skipped.inc()
            log.warning("snapshot of %s skipped: the previous one is still running", self.stream)
            return None
        try:
            return self._take()
        finally:
            self._busy.release()

    def _loop(self) -> None:
        next_at = time.monotonic() + (0.0 if self._run_immediately else self.every)
        while not self._stop.wait(max(0.0, next_at - time.monotonic())):
            self.snapshot_now()
            now = time.monotonic()
            next_at += self.every
            if next_at <= now:  # the snapshot overran its slot(s): skip them rather than pile up
                missed = int((now - next_at) // self.every) + 1
                self.skipped += missed
                if self.metrics is not None:
                    self.metrics.skipped.inc(missed)
                log.warning(
                    "snapshot of %s took longer than its %.1fs interval; skipping %d scheduled run(s)",
                    self.stream,
                    self.every,
                    missed,
                )
                next_at += missed * self.every

    def _take(self) -> ScheduledResult | None:
        started = time.time()
        t0 = time.monotonic()
        try:
            meta = self.metadata() if callable(self.metadata) else self.metadata
            result = self._snapshot(meta)
        except Exception as exc:  # noqa: BLE001 - logged and kept; the schedule goes on
            self.failed += 1
            self.last_error = exc
            if self.metrics is not None:
                self.metrics.failed.inc()
            log.error("snapshot of %s failed: %s", self.stream, exc, exc_info=log.isEnabledFor(logging.DEBUG))
            return None
        result.started_at = started
        result.duration_s = time.monotonic() - t0
        self.results.append(result)
        self.taken += 1
        self.last_error = None
        if self.metrics is not None:
            self.metrics.observe_success(
                finished_at=started + result.duration_s,
                duration_s=result.duration_s,
                new_bytes=result.new_bytes,
                reused_bytes=result.reused_bytes,
                detail=result.detail,
            )
        if self.retention is not None:
            try:
                self.retention(self.repo, result)
            except Exception as exc:  # noqa: BLE001 - retention must never stop snapshots
                log.error("retention hook after %s failed: %s", result.info.id, exc)
        return result

    def _snapshot(self, metadata: dict[str, Any] | None) -> ScheduledResult:
        r = self.source.snapshot(
            self.repo, self.stream, metadata=metadata, allow_pickle=self.allow_pickle, options=self.options
        )
        return ScheduledResult(r.info, 0.0, 0.0, r.new_bytes, r.reused_bytes, r.stored_bytes, r.detail)
