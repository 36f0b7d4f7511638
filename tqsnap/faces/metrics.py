"""Prometheus metrics: a textfile for cron jobs, and live metrics for the ``Snapshotter``.

Uses ``prometheus_client`` (the reference client, optional extra ``tqsnap[metrics]``), imported
only when metrics are asked for, so tqsnap without it loses nothing else. A cron job passes
``--metrics-file PATH`` (save, copy, forget, gc, check) and node_exporter's textfile collector
picks the file up; the file is replaced atomically (``write_to_textfile`` writes a temporary
file and renames it), so a scrape never sees half a file. Metric names: docs/metrics.md.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Iterator
from typing import Any

from ..errors import TqsnapError


class MetricsUnavailableError(TqsnapError):
    """Metrics were asked for but ``prometheus_client`` is not installed."""


def _client() -> Any:
    try:
        import prometheus_client
    except ImportError:  # pragma: no cover - depends on the installation
        raise MetricsUnavailableError(
            "metrics need the prometheus_client package: pip install 'tqsnap[metrics]'"
        ) from None
    return prometheus_client


def add_metrics_arg(p: argparse.ArgumentParser) -> None:
    """``--metrics-file PATH`` for a subcommand a cron job runs."""
    p.add_argument(
        "--metrics-file",
        metavar="PATH",
        default=None,
        help="write Prometheus metrics of this run to PATH (node_exporter textfile collector format)",
    )


class JobMetrics:
    """The figures of one command run; :func:`job_metrics` writes them when the run ends."""

    def __init__(self, command: str) -> None:
        self.command = command
        self.values: dict[str, tuple[float, str]] = {}

    def set(self, name: str, value: float, help_text: str) -> None:
        self.values[name] = (float(value), help_text)


def write_textfile(path: str, job: JobMetrics, *, ok: bool, started: float, duration: float) -> None:
    """Write the run's metrics to ``path`` atomically, in the text exposition format."""
    pc = _client()
    registry = pc.CollectorRegistry()
    labels = ["command"]

    def gauge(name: str, help_text: str, value: float) -> None:
        g = pc.Gauge(name, help_text, labels, registry=registry)
        g.labels(job.command).set(value)

    gauge("tqsnap_job_last_run_timestamp_seconds", "When this command last ran (end, epoch seconds).", started + duration)
    gauge("tqsnap_job_success", "1 if the last run succeeded, 0 if it failed.", 1.0 if ok else 0.0)
    gauge("tqsnap_job_duration_seconds", "How long the last run took.", duration)
    if ok:
        gauge(
            "tqsnap_job_last_success_timestamp_seconds",
            "When this command last succeeded (epoch seconds).",
            started + duration,
        )
    for name, (value, help_text) in sorted(job.values.items()):
        gauge(f"tqsnap_{job.command.replace('-', '_')}_{name}", help_text, value)
    pc.write_to_textfile(path, registry)


@contextlib.contextmanager
def job_metrics(args: argparse.Namespace, command: str) -> Iterator[JobMetrics]:
    """Collect a command's figures; write ``--metrics-file`` at the end, failures included.

    A failed run still writes the file (``tqsnap_job_success 0``), so an alert on failure or
    on a stale success timestamp fires whatever went wrong. Nothing is written without the flag.
    """
    path = getattr(args, "metrics_file", None)
    if path:
        _client()  # a missing package is reported before the command does any work
    job = JobMetrics(command)
    started, t0 = time.time(), time.monotonic()
    ok = False
    try:
        yield job
        ok = True
    finally:
        if path:
            write_textfile(path, job, ok=ok, started=started, duration=time.monotonic() - t0)


class SnapshotterMetrics:
    """Live metrics of one :class:`~tqsnap.faces.scheduler.Snapshotter`, labelled by stream.

    Each Snapshotter gets its own registry (two Snapshotters in one process never collide on
    metric names); ``port`` serves it over HTTP with ``prometheus_client.start_http_server``.
    """

    def __init__(self, stream: str, *, port: int | None = None, addr: str = "127.0.0.1") -> None:
        pc = _client()
        self.registry = pc.CollectorRegistry()
        self.stream = stream
        r, s = self.registry, ["stream"]
        self.taken = pc.Counter("tqsnap_snapshots_taken", "Snapshots committed.", s, registry=r).labels(stream)
        self.failed = pc.Counter("tqsnap_snapshots_failed", "Snapshots that failed.", s, registry=r).labels(stream)
        self.skipped = pc.Counter(
            "tqsnap_snapshots_skipped", "Scheduled snapshots skipped because one was still running.", s, registry=r
        ).labels(stream)
        self.last_success = pc.Gauge(
            "tqsnap_last_success_timestamp_seconds", "When the last snapshot committed (epoch seconds).", s, registry=r
        ).labels(stream)
        self.new_bytes = pc.Counter(
            "tqsnap_snapshot_new_bytes", "Item bytes that had to be uploaded.", s, registry=r
        ).labels(stream)
        self.reused_bytes = pc.Counter(
            "tqsnap_snapshot_reused_bytes", "Item bytes reused from the parent snapshot.", s, registry=r
        ).labels(stream)
        self.duration = pc.Histogram(
            "tqsnap_snapshot_duration_seconds",
            "Wall time of a snapshot, start to commit.",
            s,
            buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
            registry=r,
        ).labels(stream)
        self.unit_stall = pc.Gauge(
            "tqsnap_snapshot_unit_stall_seconds",
            "Longest time one TransferQueue storage unit was paused by the last snapshot.",
            s,
            registry=r,
        ).labels(stream)
        self.server: Any = None
        if port is not None:
            self.server, _thread = pc.start_http_server(port, addr=addr, registry=r)

    def observe_success(self, *, finished_at: float, duration_s: float, new_bytes: int, reused_bytes: int,
                        detail: Any = None) -> None:
        self.taken.inc()
        self.last_success.set(finished_at)
        self.new_bytes.inc(max(0, new_bytes))
        self.reused_bytes.inc(max(0, reused_bytes))
        self.duration.observe(duration_s)
        stalls = getattr(detail, "unit_stall_s", None)
        if stalls:
            self.unit_stall.set(max(stalls))

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
