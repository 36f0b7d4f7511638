"""SIGKILL at random points of save (single-part and multipart), forget, gc and copy.

A bounded version of benchmarks/stress_kill.py: a child process (tests/kill_child.py) works on
a repository made with a tiny grace period, the parent kills it after a seeded random delay
or at a named checkpoint, and after every kill checks that every visible snapshot verifies
and loads exactly what was saved, that nothing was committed twice, and finally that the next
save, forget and gc work and that gc, past the grace period, leaves no orphan shards and no
incomplete uploads (tests/killharness.py says exactly what is checked).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from killharness import KillHarness


def _run(harness: KillHarness, rounds: int, budget_s: float) -> None:
    started = time.monotonic()
    for _ in range(rounds):
        harness.round()
        if time.monotonic() - started > budget_s:
            break
    harness.finish()
    print("\n" + harness.stats.table())
    assert harness.stats.kills >= max(5, harness.stats.rounds // 3), harness.stats.table()


@pytest.mark.s3
def test_kills_on_a_real_s3_server_never_break_a_snapshot(seaweedfs_endpoint: Any, tmp_path: Path) -> None:
    url, options = seaweedfs_endpoint.make_bucket("repo")
    dst = url.rsplit("/", 1)[0] + "/copies"
    harness = KillHarness(url, dst, options, seed=12, multipart=True, max_delay_s=0.8, log_dir=tmp_path)
    _run(harness, rounds=24, budget_s=30)


def test_kills_on_a_local_directory_never_break_a_snapshot(tmp_path: Path) -> None:
    harness = KillHarness(
        str(tmp_path / "repo"), str(tmp_path / "copies"), {}, seed=7, multipart=False, log_dir=tmp_path
    )
    _run(harness, rounds=20, budget_s=18)
