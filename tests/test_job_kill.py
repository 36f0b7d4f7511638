"""Job snapshots survive SIGKILL at every stage, and a lost commit reply still commits once.

Each kill leaves staged shards and no snapshot: nothing becomes visible, the next job
snapshot of the stream commits and restores, and once the staged shards are past the grace
period gc removes every one of them while every visible part still verifies.

- a DCP rank (gloo, its own process) is SIGKILLed while staging the trainer part;
- the driver (its own process, tests/job_kill_child.py) is SIGKILLed between two stages;
- the driver is SIGKILLed after staging every part, before the commit;
- the reply to the job's commit is lost (the fault proxy in front of SeaweedFS): exactly one
  snapshot, carrying the job's id as its write_id.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from test_dcp_distributed import run_ranks, sharded_state, unreferenced_shards
from torch.distributed.device_mesh import DeviceMesh

import tqsnap
import tqsnap.dcp
import tqsnap.job
from tqsnap.engine import Repository
from tqsnap.engine.gc import collect_garbage
from tqsnap.store import LocalStore

CHILD = Path(__file__).with_name("job_kill_child.py")
ROOT = Path(__file__).resolve().parent.parent


def _age_all_shards(url: str, by: float) -> None:
    """Make every shard object look ``by`` seconds old (LastModified is the file's mtime)."""
    old = time.time() - by
    for info in LocalStore(url).list("shards/"):
        os.utime(Path(url) / info.key, (old, old))


def _after_the_kill(url: str, stream: str, seqs_before: list[int]) -> None:
    """Nothing visible; the next job works; gc after the grace period leaves no leftover."""
    assert [s.seq for s in tqsnap.snapshots(url, stream)] == seqs_before, "a killed job became visible"
    leftovers = unreferenced_shards(url)
    assert leftovers, "the job was killed after it uploaded shards"
    job = tqsnap.job.begin(url, stream=stream)
    job.add("loop", {"step": 99, "w": torch.arange(1000.0)})
    info = job.commit()
    assert info.seq == (seqs_before[-1] + 1 if seqs_before else 1)
    assert tqsnap.load(url, stream=stream, part="loop")["step"] == 99
    repo = Repository.open(url)
    _age_all_shards(url, 3 * repo.config.grace)
    report = collect_garbage(repo, executor="threads")
    assert report.shards_deleted >= len(leftovers)
    assert unreferenced_shards(url) == set()
    for s in tqsnap.snapshots(url, stream):
        assert tqsnap.verify(url, stream=stream, snapshot=s.seq).ok


def _kill_driver_at(url: str, stream: str, stop: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen(
        [sys.executable, str(CHILD), url, stream, stop], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()  # the child sleeps 120 s after this line: bounded
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait(30)
    assert child.returncode == -signal.SIGKILL
    return line.strip()


@pytest.mark.parametrize("stop", ["between", "before_commit", "async"])
def test_a_driver_killed_between_stages_or_before_the_commit_leaves_nothing_visible(tmp_path, stop):
    url = str(tmp_path / "repo")
    first = tqsnap.job.begin(url, stream="run")
    first.add("loop", {"step": 1})
    first.commit()

    said = _kill_driver_at(url, "run", stop)

    assert said == {"between": "STAGED loop", "before_commit": "STAGED loop,opt", "async": "STAGED loop,opt"}[stop]
    _after_the_kill(url, "run", [1])


class _DyingStage(tqsnap.dcp.Writer):
    """Rank 1 uploads its shards of the trainer part, then is SIGKILLed before DCP hears back."""

    def write_data(self, plan: Any, planner: Any) -> Any:
        result = super().write_data(plan, planner)
        if self.rank == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        return result


def _rank_dies_job(rank: int, mesh: DeviceMesh, url: str) -> dict[str, Any]:
    job = tqsnap.job.begin(url, stream="ranks") if rank == 0 else None
    box = [job.token if job else None]
    dist.broadcast_object_list(box, src=0)
    try:
        dcp.save(sharded_state(mesh, 0), storage_writer=_DyingStage(url, stream="ranks", stage=box[0], part="trainer"))
    except BaseException as exc:  # noqa: BLE001 - rank 0 sees its peer vanish
        return {"raised": type(exc).__name__}
    return {"raised": None}


def test_a_rank_killed_while_staging_leaves_nothing_visible(tmp_path):
    url = str(tmp_path / "repo")
    tqsnap.init_repo(url)
    results = run_ranks(_rank_dies_job, 2, url, tmp_path / "out")
    (code0, report0), (code1, report1) = results
    assert code1 == -signal.SIGKILL and report1 is None
    assert report0 is not None and report0["ok"] and report0["raised"] is not None, report0
    _after_the_kill(url, "ranks", [])


@pytest.mark.s3
def test_a_lost_commit_reply_commits_the_job_exactly_once(faulty_s3):
    bucket = faulty_s3()
    Repository.init(bucket.url, storage_options=bucket.server.options(), grace=60, max_write_duration=20)
    repo = Repository.open(bucket.url, storage_options=bucket.options)
    job = tqsnap.job.begin(repo, stream="s")
    job.add("loop", {"step": 5, "w": torch.arange(5000.0)})
    job.add("opt", {"m": torch.ones(100)})
    bucket.proxy.script("conditional_put", "apply_then_drop", 1)
    bucket.proxy.script("get", "503", 10)  # and the read-back fails past the store's retries

    info = job.commit()

    bucket.proxy.clear()
    direct = Repository.open(bucket.url, storage_options=bucket.server.options())
    assert [(s.seq, s.write_id) for s in direct.snapshots("s")] == [(1, job.job_id)]
    assert info.seq == 1 and info.write_id == job.job_id
    assert tqsnap.load(direct, stream="s", part="loop")["step"] == 5
    nxt = tqsnap.job.begin(repo, stream="s")
    nxt.add("loop", {"step": 6})
    assert nxt.commit().seq == 2
