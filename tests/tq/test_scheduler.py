"""The Snapshotter: periodic, never two at once, reports its results, stops gracefully."""

from __future__ import annotations

import threading
import time

import torch
from helpers import put

from tqsnap import Repository
from tqsnap.faces.scheduler import Snapshotter


def _wait_for(cond, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)


def test_snapshotter_snapshots_a_state_callable_periodically_and_reports_bytes(tmp_path):
    step = {"n": 0}
    weights = torch.randn(256, 256)

    def state():
        step["n"] += 1
        return {"weights": weights, "step": step["n"]}

    with Snapshotter(
        state, str(tmp_path / "r"), stream="sd", every=0.1, metadata=lambda: {"n": step["n"]}
    ) as s:
        _wait_for(lambda: s.taken >= 3)
    first, last = s.results[0], s.last_result
    assert first.new_bytes >= weights.numel() * 4
    assert last.reused_bytes >= weights.numel() * 4 and last.new_bytes < first.new_bytes
    assert last.duration_s > 0 and last.info.metadata["n"] == last.info.seq - 1  # taken before state()
    assert [i.seq for i in Repository.open(str(tmp_path / "r")).snapshots("sd")][:3] == [1, 2, 3]


def test_snapshotter_never_runs_two_snapshots_at_once(tmp_path):
    gate = threading.Event()
    running = {"now": 0, "max": 0}

    def slow_state():
        running["now"] += 1
        running["max"] = max(running["max"], running["now"])
        gate.wait(5)
        running["now"] -= 1
        return {"x": 1}

    s = Snapshotter(slow_state, str(tmp_path / "r"), every=0.05, run_immediately=True)
    _wait_for(lambda: running["now"] == 1)
    assert s.snapshot_now() is None  # refused while the scheduled one runs
    time.sleep(0.3)  # the schedule ticks several times meanwhile
    gate.set()
    _wait_for(lambda: s.taken >= 2)
    s.stop()
    assert running["max"] == 1 and s.skipped >= 2


def test_stop_lets_the_running_snapshot_finish(tmp_path):
    started = threading.Event()

    def state():
        started.set()
        time.sleep(0.5)
        return {"x": torch.zeros(4)}

    s = Snapshotter(state, str(tmp_path / "r"), every=0.01)
    started.wait(10)
    s.stop()
    assert s.taken == 1 and not s.running and s.last_error is None


def test_failed_snapshots_are_reported_and_the_schedule_goes_on(tmp_path):
    calls = {"n": 0}

    def flaky():
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("source not ready")
        return {"ok": True}

    with Snapshotter(flaky, str(tmp_path / "r"), every=0.05) as s:
        _wait_for(lambda: s.taken >= 1)
    assert s.failed >= 1 and s.last_result is not None


def test_retention_hook_runs_after_each_snapshot(tmp_path):
    seen = []
    with Snapshotter(
        lambda: {"v": 1}, str(tmp_path / "r"), every=0.05, retention=lambda repo, r: seen.append(r.info.seq)
    ) as s:
        _wait_for(lambda: len(seen) >= 2)
    assert seen[:2] == [1, 2] and s.taken >= 2


def test_snapshotter_of_a_transferqueue_reports_new_and_reused_bytes(tq_main, repo_url):
    import transfer_queue as tq

    put(tq_main.client, "train", list(range(50)))
    with Snapshotter(tq, repo_url, stream="tq", every=0.2) as s:
        _wait_for(lambda: s.taken >= 2, timeout=60)
    first, second = s.results[0], s.results[1]
    assert first.new_bytes > 0 and first.detail.samples == 50
    assert second.reused_bytes > 0 and second.detail.info.parent == first.info.id
