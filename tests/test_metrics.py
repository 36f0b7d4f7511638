"""Prometheus metrics: the Snapshotter scraped over HTTP, and ``--metrics-file`` of cron commands."""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

import torch
from cli_subprocess import Target, json_out, target_fixture  # noqa: F401 - the fixture
from cli_subprocess import tqsnap as run
from prometheus_client.parser import text_string_to_metric_families

import tqsnap
from tqsnap.faces.scheduler import Snapshotter
from tqsnap.store import open_store


def _samples(text: str) -> dict[tuple[str, str], float]:
    """``{(sample name, first label value): value}`` from the exposition format."""
    return {
        (s.name, next(iter(s.labels.values()), "")): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if "le" not in s.labels
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_snapshotter_metrics_are_scraped_over_http(tmp_path) -> None:
    fixed = torch.randn(100_000)
    calls = {"n": 0}

    def state() -> dict:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("the source failed once")
        return {"fixed": fixed, "step": torch.tensor([calls["n"]])}

    port = _free_port()
    snap = Snapshotter(state, str(tmp_path / "repo"), stream="train", every="1h", start=False, metrics_port=port)
    try:
        assert snap.snapshot_now() is not None and snap.snapshot_now() is not None
        assert snap.snapshot_now() is None  # the failing call
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            values = _samples(reply.read().decode())
    finally:
        snap.stop()
    assert values[("tqsnap_snapshots_taken_total", "train")] == 2
    assert values[("tqsnap_snapshots_failed_total", "train")] == 1
    assert values[("tqsnap_snapshots_skipped_total", "train")] == 0
    assert values[("tqsnap_last_success_timestamp_seconds", "train")] == snap.last_result.started_at + snap.last_result.duration_s
    results = list(snap.results)
    assert values[("tqsnap_snapshot_new_bytes_total", "train")] == sum(r.new_bytes for r in results) >= 400_000
    assert values[("tqsnap_snapshot_reused_bytes_total", "train")] == sum(r.reused_bytes for r in results)
    assert values[("tqsnap_snapshot_duration_seconds_count", "train")] == 2


def _metrics(path: Path) -> dict[tuple[str, str], float]:
    return _samples(path.read_text())


def test_cron_commands_write_a_textfile(target: Target, tmp_path) -> None:
    opts = target.storage_options()
    for i in range(3):
        tqsnap.save(target.url, {"w": torch.full((50_000,), float(i))}, stream="s", storage_options=opts)
    forget_prom, gc_prom, copy_prom = tmp_path / "forget.prom", tmp_path / "gc.prom", tmp_path / "copy.prom"
    assert run(target, "forget", "--keep-last", "1", "--metrics-file", str(forget_prom)).returncode == 0
    m = _metrics(forget_prom)
    assert m[("tqsnap_forget_snapshots_removed", "forget")] == 2 and m[("tqsnap_job_success", "forget")] == 1
    assert m[("tqsnap_job_last_success_timestamp_seconds", "forget")] > 0

    gc = json_out(run(target, "gc", "--json", "--metrics-file", str(gc_prom)))
    m = _metrics(gc_prom)
    assert m[("tqsnap_gc_young_garbage_bytes", "gc")] == gc["young_garbage_bytes"]
    assert m[("tqsnap_gc_bytes_freed", "gc")] == gc["bytes_freed"] == 0, "nothing is older than grace yet"

    copied = json_out(
        run(target, "copy", target.url, "--stream", "s", "--dst-stream", "fork", "--json", "--metrics-file", str(copy_prom))
    )
    m = _metrics(copy_prom)
    assert m[("tqsnap_copy_snapshots_copied", "copy")] == 1
    assert m[("tqsnap_copy_bytes_moved", "copy")] == copied["moved_bytes"]


def test_a_failed_run_still_writes_its_metrics(tmp_path) -> None:
    prom = tmp_path / "gc.prom"
    proc = run(Target(str(tmp_path / "nothing-here")), "gc", "--metrics-file", str(prom))
    assert proc.returncode == 3
    m = _metrics(prom)
    assert m[("tqsnap_job_success", "gc")] == 0
    assert ("tqsnap_job_last_success_timestamp_seconds", "gc") not in m


def test_gc_and_forget_say_when_space_comes_back(tmp_path) -> None:
    t = Target(str(tmp_path / "repo"))
    assert run(t, "init", "--grace", "1h", "--max-write-duration", "10m").returncode == 0
    for i in range(2):
        tqsnap.save(t.url, {"w": torch.full((50_000,), float(i))}, stream="s")
    forgot = json_out(run(t, "forget", "--keep-last", "1", "--json"))
    assert forgot["tombstones_written"] == 1
    gc = json_out(run(t, "gc", "--json"))
    stone = next(iter(open_store(t.url).list("tombstones/")))
    assert gc["young_tombstones_due_at"] == stone.last_modified + 3600
    assert abs(forgot["space_reclaimable_after"] - gc["young_tombstones_due_at"]) < 60
    text = run(t, "gc").stdout
    assert "forgotten snapshots are reclaimed by a gc run after" in text
