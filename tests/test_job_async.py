"""Asynchronous job snapshots: the loop waits for the captures only; uploads and the one commit
run in the background, and a failure there commits nothing and says so from the future.

Real parts: DCP's own ``dcp.async_save`` (its staging copy, then the upload on its thread) with
``tqsnap.dcp.Writer(stage=...)``, local disk, and SeaweedFS behind a fault-injecting proxy.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp
from cli_subprocess import run_tqsnap

import tqsnap
import tqsnap.dcp
import tqsnap.job
from tqsnap.errors import JobDeadlineExceededError, JobError, JobPartError
from tqsnap.faces.scheduler import Snapshotter


def model_state(seed: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    return {"model": {"w": torch.randn(2048, 256, generator=g), "b": torch.randn(256, generator=g)}, "step": seed}


def loop_state(step: int) -> dict[str, Any]:
    return {"step": step, "rng": torch.Generator().manual_seed(step).get_state(), "sampler": {"index": 64 * step}}


def test_state_changed_right_after_the_capture_is_not_in_the_snapshot(tmp_path):
    url = str(tmp_path / "repo")
    state, loop = model_state(1), loop_state(1)
    expected_model = {k: v.clone() for k, v in state["model"].items()}
    expected_loop = {"step": 1, "rng": loop["rng"].clone(), "sampler": {"index": 64}}

    job = tqsnap.job.begin(url, stream="run")
    writer = tqsnap.dcp.Writer(url, stream="run", stage=job.token, part="trainer")
    saving = dcp.async_save(state, storage_writer=writer, no_dist=True)
    job.add_async("trainer", saving, writer=writer)
    job.add_async("loop", loop)
    done = job.commit_async(metadata={"step": 1})
    # The training loop goes on at once and changes everything it just snapshotted, in place.
    for t in state["model"].values():
        t.add_(1000.0)
    loop["rng"].zero_()
    loop["sampler"]["index"] = -1
    loop["step"] = 2
    info = done.result(timeout=120)

    assert info.kind == "job" and job.state == "committed" and sorted(job.parts) == ["loop", "trainer"]
    assert [s.seq for s in tqsnap.snapshots(url, "run")] == [info.seq]
    back = {"model": {k: torch.zeros_like(v) for k, v in expected_model.items()}, "step": -1}
    dcp.load(back, storage_reader=tqsnap.dcp.Reader(url, stream="run", part="trainer"), no_dist=True)
    assert all(torch.equal(back["model"][k], v) for k, v in expected_model.items()) and back["step"] == 1
    got = tqsnap.load(url, stream="run", part="loop")
    assert got["step"] == 1 and got["sampler"] == {"index": 64} and torch.equal(got["rng"], expected_loop["rng"])
    # The one-call restore runs its parts at once and returns the captured values too.
    whole = tqsnap.job.restore(url, "run", dcp_states={"trainer": back})
    assert whole["seq"] == info.seq and whole["loop"]["step"] == 1


def test_the_next_async_job_deduplicates_against_the_previous_one(tmp_path):
    url = str(tmp_path / "repo")
    state = model_state(2)
    for step in (1, 2):
        state["model"]["b"].add_(1.0)  # only the small tensor changes; "w" (2 MiB) has shards of its own
        job = tqsnap.job.begin(url, stream="run")
        writer = tqsnap.dcp.Writer(url, stream="run", stage=job.token, part="trainer")
        job.add_async("trainer", dcp.async_save(state, storage_writer=writer, no_dist=True), writer=writer)
        job.add_async("loop", loop_state(step))
        info = job.commit_async().result(timeout=120)
    trainer = job.parts["trainer"].stats
    assert info.seq == 2 and trainer["reused_bytes"] >= 2 * 2**20 and trainer["new_bytes"] < 2**20


@pytest.mark.s3
def test_a_failed_background_upload_commits_nothing_and_the_future_says_which_part(faulty_s3):
    bucket = faulty_s3()
    url, options = bucket.url, bucket.options
    tqsnap.init_repo(url, storage_options=options)
    job = tqsnap.job.begin(url, stream="run", storage_options=options)
    # From here every shard upload fails on the server side, beyond the retries.
    for klass in ("put", "conditional_put", "multipart"):
        bucket.proxy.script(klass, "500", count=1000)
    job.add_async("loop", {"step": 7, "weights": torch.randn(64, 1024)})
    done = job.commit_async(metadata={"step": 7})
    with pytest.raises(JobPartError, match="part 'loop' of job .* failed while staging.*Nothing was committed"):
        done.result(timeout=120)
    assert job.state == "failed"
    with pytest.raises(JobError, match="already failed"):
        job.commit()
    bucket.proxy.clear()
    assert tqsnap.snapshots(url, "run", storage_options=options) == []  # nothing visible
    again = tqsnap.job.begin(url, stream="run", storage_options=options)
    again.add_async("loop", {"step": 7})
    assert again.commit_async().result(timeout=120).seq == 1


def test_a_failed_dcp_part_fails_the_commit_and_a_writer_without_a_part_is_named(tmp_path):
    url = str(tmp_path / "repo")
    job = tqsnap.job.begin(url, stream="run")
    plain = tqsnap.dcp.Writer(url, stream="run")  # a plain save, not staged for the job
    job.add_async("trainer", dcp.async_save(model_state(3), storage_writer=plain, no_dist=True), writer=plain)
    job.add_async("loop", loop_state(3))
    with pytest.raises(JobPartError, match="part 'trainer'.*holds no staged part"):
        job.commit()
    # The plain save committed its own snapshot; the job committed nothing.
    assert [s.kind for s in tqsnap.snapshots(url, "run")] == ["dcp"]


def test_an_async_job_past_the_deadline_refuses_from_the_future(tmp_path):
    url = str(tmp_path / "repo")
    tqsnap.init_repo(url, grace=2.5, max_write_duration=1.0)
    job = tqsnap.job.begin(url, stream="late")
    pending = job.add_async("loop", loop_state(1))
    assert not pending.done()  # its upload starts with the commit (or wait_parts)
    job.wait_parts()  # J1: the clock runs from this stage
    time.sleep(1.3)
    with pytest.raises(JobDeadlineExceededError, match="part 'loop' was staged"):
        job.commit_async().result(timeout=60)
    assert job.state == "failed" and tqsnap.snapshots(url, "late") == []


def test_the_snapshotter_takes_periodic_job_snapshots(tmp_path):
    url = str(tmp_path / "repo")
    state = model_state(4)
    step = {"n": 0}

    def stage_trainer(job: Any) -> Any:
        writer = tqsnap.dcp.Writer(url, stream="run", stage=job.token, part="trainer")
        dcp.save(state, storage_writer=writer, no_dist=True)
        return writer.staged

    source = tqsnap.job.JobSource({"trainer": tqsnap.job.PartStage(stage_trainer), "loop": lambda: loop_state(step["n"])})
    snapshotter = Snapshotter(source, url, stream="run", every="1h", start=False)
    first = snapshotter.snapshot_now()
    step["n"] = 5
    state["model"]["b"].add_(1.0)
    second = snapshotter.snapshot_now()
    assert snapshotter.failed == 0 and first is not None and second is not None
    assert [s.kind for s in tqsnap.snapshots(url, "run")] == ["job", "job"]
    assert tqsnap.job.parts(url, "run") == {"loop": "state_dict", "trainer": "dcp"}
    assert second.detail["trainer"]["reused_bytes"] >= 2 * 2**20  # the unchanged weight is reused
    assert tqsnap.load(url, stream="run", part="loop")["step"] == 5
    with pytest.raises(TypeError, match="part 'x'"):
        tqsnap.job.JobSource({"x": 3})


def test_tqsnap_restore_writes_one_part_of_a_job_snapshot_to_files(tmp_path):
    url = str(tmp_path / "repo")
    state = model_state(5)
    job = tqsnap.job.begin(url, stream="run")
    writer = tqsnap.dcp.Writer(url, stream="run", stage=job.token, part="trainer")
    job.add_async("trainer", dcp.async_save(state, storage_writer=writer, no_dist=True), writer=writer)
    job.add_async("loop", loop_state(5))
    job.commit_async().result(timeout=120)

    refused = run_tqsnap("restore", url, "run@1", "--to", str(tmp_path / "all.pt"))
    assert refused.returncode == 2 and "parts loop (state_dict), trainer (dcp); pass --part" in refused.stderr
    assert not (tmp_path / "all.pt").exists()
    for part in ("trainer", "loop"):
        assert run_tqsnap("restore", url, "run@1", "--part", part, "--to", str(tmp_path / f"{part}.pt")).returncode == 0
    trainer = torch.load(tmp_path / "trainer.pt", weights_only=True)
    assert all(torch.equal(trainer["model"][k], v) for k, v in state["model"].items()) and trainer["step"] == 5
    loop = torch.load(tmp_path / "loop.pt", weights_only=True)
    assert loop["step"] == 5 and torch.equal(loop["rng"], loop_state(5)["rng"])
    missing = run_tqsnap("restore", url, "run@1", "--part", "queue", "--to", str(tmp_path / "q.pt"))
    assert missing.returncode == 3 and "no part 'queue'" in missing.stderr
