"""Job snapshots: DCP ranks (gloo, separate processes), the loop state and the driver commit
their parts as ONE snapshot, on local disk and on a real S3 server.

The 2-rank spawn (``two_ranks``, module scoped: every rank imports torch) takes three jobs:

1. rank 0 is also the driver (the torchrun pattern): it begins the job and broadcasts the
   token; every rank stages part ``trainer``; rank 0 adds ``loop`` and commits;
2. the same, with only one small tensor changed: the trainer part reuses its parent's shards;
3. the test process is the driver (the Ray single-controller pattern): it passes the token
   to the ranks, which only stage; rank 0 hands back the pickled StagedPart, and the test
   process adds the loop state and commits.

Then 3 ranks load the 2-rank trainer part (resharding to more ranks) and this process loads it
on one (fewer ranks), and gc runs with every part's shards aged past the grace period.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import pickle
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from cli_subprocess import run_tqsnap
from test_dcp_distributed import (
    assert_all_ok,
    check_loaded,
    empty_state,
    full_tensors,
    run_ranks,
    sharded_state,
)
from torch.distributed.device_mesh import DeviceMesh

import tqsnap
import tqsnap.dcp
import tqsnap.job
from tqsnap.engine import Repository
from tqsnap.engine.gc import collect_garbage
from tqsnap.errors import (
    JobDeadlineExceededError,
    JobError,
    KindMismatchError,
    ManifestError,
    SnapshotNotFoundError,
)
from tqsnap.format.job import JobHeader
from tqsnap.store import LocalStore


def loop_state(version: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(version)
    return {"step": 1000 + version, "rng": g.get_state(), "sampler": {"epoch": 0, "index": 64 * version}}


def _stage_trainer(url: str, token: str, mesh: DeviceMesh, version: int) -> Any:
    writer = tqsnap.dcp.Writer(url, stream="run", stage=token, part="trainer")
    dcp.save(sharded_state(mesh, version), storage_writer=writer)
    return writer.staged


def _driver_on_rank0(rank: int, mesh: DeviceMesh, url: str, version: int) -> dict[str, Any]:
    """Rank 0 drives: begin, broadcast the token, stage on every rank, add the loop, commit."""
    job = tqsnap.job.begin(url, stream="run") if rank == 0 else None
    box = [job.token if job else None]
    dist.broadcast_object_list(box, src=0)
    staged = _stage_trainer(url, box[0], mesh, version)
    if rank != 0:
        assert staged is None  # only the coordinator rank describes the part
        return {}
    assert job is not None and staged is not None
    job.add("trainer", staged)
    job.add("loop", loop_state(version))
    info = job.commit(metadata={"step": 1000 + version})
    return {"seq": info.seq, "trainer": staged.stats, "described": len(pickle.dumps(staged))}


def _two_ranks_job(rank: int, mesh: DeviceMesh, url: str) -> dict[str, Any]:
    first = _driver_on_rank0(rank, mesh, url, 0)
    second = _driver_on_rank0(rank, mesh, url, 1)
    staged = _stage_trainer(url, os.environ["TQSNAP_JOB_TOKEN"], mesh, 2)
    if staged is not None:
        Path(os.environ["TQSNAP_TEST_OUT"], "staged.pkl").write_bytes(pickle.dumps(staged))
    return {"first": first, "second": second}


def _three_ranks_job(rank: int, mesh: DeviceMesh, url: str) -> dict[str, Any]:
    """More ranks than saved: every snapshot's trainer part reshards 2 -> 3."""
    for seq, version in ((1, 0), (3, 2)):
        loaded = empty_state(mesh, version)
        dcp.load(loaded, storage_reader=tqsnap.dcp.Reader(url, stream="run", snapshot=seq, part="trainer"))
        check_loaded(loaded, mesh, version)
    return {}


@pytest.fixture(scope="module")
def repo_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("job") / "repo")


@pytest.fixture(scope="module")
def two_ranks(repo_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tqsnap.init_repo(repo_url)
    out = tmp_path_factory.mktemp("two")
    third = tqsnap.job.begin(repo_url, stream="run")  # the test process drives the third job
    os.environ["TQSNAP_JOB_TOKEN"] = third.token
    try:
        reports = assert_all_ok(run_ranks(_two_ranks_job, 2, repo_url, out))
    finally:
        os.environ.pop("TQSNAP_JOB_TOKEN")
    staged = pickle.loads((out / "staged.pkl").read_bytes())
    third.add("trainer", staged)
    third.add("loop", loop_state(2))
    info = third.commit(metadata={"step": 1002})
    return {"reports": reports, "third": info, "staged": staged}


def test_ranks_and_driver_commit_one_snapshot_per_job_with_only_descriptions_travelling(two_ranks, repo_url):
    rank0 = two_ranks["reports"][0]
    assert [rank0["first"]["seq"], rank0["second"]["seq"], two_ranks["third"].seq] == [1, 2, 3]
    infos = tqsnap.snapshots(repo_url, "run")
    assert [(s.seq, s.kind, s.metadata["step"]) for s in infos] == [(1, "job", 1000), (2, "job", 1001), (3, "job", 1002)]
    assert tqsnap.job.parts(repo_url, "run", 3) == {"loop": "state_dict", "trainer": "dcp"}
    tensor_bytes = sum(t.numel() * t.element_size() for t in full_tensors(0).values())
    assert rank0["first"]["described"] < tensor_bytes / 50  # references, never tensor bytes
    # Version 1 changed only ``ids`` and ``bias``: the trainer part reuses the big tensors.
    second = rank0["second"]["trainer"]
    assert second["reused_bytes"] >= 2 * 2**20 and second["new_bytes"] < second["reused_bytes"] / 10
    for seq in (1, 2, 3):
        assert tqsnap.verify(repo_url, stream="run", snapshot=seq).ok


def test_each_part_restores_alone_on_more_and_fewer_ranks(two_ranks, repo_url, tmp_path):
    assert_all_ok(run_ranks(_three_ranks_job, 3, repo_url, tmp_path / "three"))
    for seq, version in ((1, 0), (3, 2)):  # one process, no process group: fewer ranks than saved
        whole = {"model": {n: torch.zeros_like(t) for n, t in full_tensors(version).items()}, "bias": torch.zeros(33)}
        whole["step"] = -1
        dcp.load(whole, storage_reader=tqsnap.dcp.Reader(repo_url, stream="run", snapshot=seq, part="trainer"))
        for name, full in full_tensors(version).items():
            assert torch.equal(whole["model"][name], full), name
        assert whole["step"] == 1000 + version
        loop = tqsnap.load(repo_url, stream="run", snapshot=seq, part="loop")
        assert loop["step"] == 1000 + version and torch.equal(loop["rng"], loop_state(version)["rng"])


def test_one_call_restores_every_part_of_one_pinned_job(two_ranks, repo_url):
    state = {"model": {n: torch.zeros_like(t) for n, t in full_tensors(1).items()}, "bias": torch.zeros(33), "step": -1}
    out = tqsnap.job.restore(repo_url, "run", "2", dcp_states={"trainer": state})
    assert out["seq"] == 2 and out["loop"]["step"] == 1001
    assert all(torch.equal(state["model"][n], t) for n, t in full_tensors(1).items()) and state["step"] == 1001


def test_parts_are_read_only_with_their_own_kind(two_ranks, repo_url):
    with pytest.raises(KindMismatchError, match="'dcp' part, not 'state_dict'"):
        tqsnap.load(repo_url, stream="run", part="trainer")
    with pytest.raises(SnapshotNotFoundError, match="no part 'queue'"):
        tqsnap.load(repo_url, stream="run", part="queue")
    # Without part=, the only part of the asked kind is the one loaded.
    assert tqsnap.load(repo_url, stream="run", snapshot=2)["step"] == 1001


def test_gc_keeps_every_part_of_a_job_and_collects_an_uncommitted_one(two_ranks, repo_url):
    repo = Repository.open(repo_url)
    abandoned = tqsnap.job.begin(repo_url, stream="run")
    leftover = abandoned.add("loop", {"junk": torch.randn(300_000)})  # 1.2 MB nobody commits
    abandoned.abort()
    leftover_keys = {ref.key for ref in leftover.pack.shards}
    store = LocalStore(repo_url)
    old = time.time() - 3 * repo.config.grace
    for info in store.list("shards/"):  # every shard, referenced or not, is past the grace period
        os.utime(Path(repo_url) / info.key, (old, old))

    report = collect_garbage(repo, executor="threads")

    assert report.shards_deleted >= len(leftover_keys)
    remaining = {info.key for info in store.list("shards/")}
    assert not leftover_keys & remaining
    # Had gc marked only some parts, one of these would now miss a shard.
    for seq in (1, 2, 3):
        assert tqsnap.verify(repo_url, stream="run", snapshot=seq).ok
    whole = {"model": {n: torch.zeros_like(t) for n, t in full_tensors(2).items()}, "bias": torch.zeros(33), "step": -1}
    dcp.load(whole, storage_reader=tqsnap.dcp.Reader(repo_url, stream="run", part="trainer"))
    assert torch.equal(whole["model"]["big"], full_tensors(2)["big"])
    assert tqsnap.load(repo_url, stream="run", part="loop")["step"] == 1002


def test_the_cli_lists_a_job_as_one_snapshot_and_shows_its_parts(two_ranks, repo_url):
    listing = run_tqsnap("snapshots", repo_url).stdout
    assert "job(loop,trainer)" in listing
    shown = json.loads(run_tqsnap("show", repo_url, "run@3", "--json").stdout)
    assert {n: p["kind"] for n, p in shown["parts"].items()} == {"loop": "state_dict", "trainer": "dcp"}
    assert shown["parts"]["trainer"]["items"] > 0
    text = run_tqsnap("show", repo_url, "run@3").stdout
    assert "part.trainer" in text and "part.loop" in text
    listed = run_tqsnap("ls", repo_url, "run@3", "--json").stdout.splitlines()
    paths = [json.loads(line)["path"] for line in listed if line.strip()]
    assert "loop/step" not in paths and any(p.startswith("trainer/") for p in paths)


def test_retention_and_tags_keep_or_drop_a_job_whole(tmp_path):
    url = str(tmp_path / "repo")
    for step in range(3):
        job = tqsnap.job.begin(url, stream="run")
        job.add("loop", {"step": step, "w": torch.full((70_000,), float(step))})
        job.add("opt", {"m": torch.full((70_000,), -float(step))})
        job.commit()
    tqsnap.tag(url, "best", stream="run", snapshot=1)
    tqsnap.forget(url, keep_last=1, keep_tags=["best"])
    assert [s.seq for s in tqsnap.snapshots(url, "run")] == [1, 3]
    repo = Repository.open(url)
    _age(url, 3 * repo.config.grace)
    collect_garbage(repo, executor="threads")
    for seq in (1, 3):
        assert tqsnap.verify(url, stream="run", snapshot=seq).ok
        assert tqsnap.load(url, stream="run", snapshot=seq, part="opt")["m"][0] == -float(seq - 1)
    assert tqsnap.load(url, stream="run", snapshot="tag:best", part="loop")["step"] == 0


def _age(url: str, by: float) -> None:
    old = time.time() - by
    for info in LocalStore(url).list(""):
        os.utime(Path(url) / info.key, (old, old))


def test_a_damaged_or_crafted_job_header_is_refused_naming_the_snapshot(tmp_path):
    url = str(tmp_path / "repo")
    job = tqsnap.job.begin(url, stream="run")
    job.add("loop", {"w": torch.arange(10.0)})
    job.commit()
    repo = Repository.open(url)
    good = repo.load_manifest("run", 1)
    assert JobHeader.from_manifest(good).parts["loop"].items == 1
    crafted = {
        "unknown layout version": lambda m: m.extra["job"].update(version=2),
        "an item in no part": lambda m: m.items.append(dataclasses.replace(m.items[0], path="ghost/w")),
        "a wrong item count": lambda m: m.extra["job"]["parts"]["loop"].update(items=5),
        "a nested job": lambda m: m.extra["job"]["parts"]["loop"].update(kind="job"),
        "no parts": lambda m: m.extra["job"].update(parts={}),
    }
    for damage in crafted.values():
        m = copy.deepcopy(good)
        damage(m)
        with pytest.raises(ManifestError, match="run@1"):
            JobHeader.from_manifest(m)


def test_a_job_past_the_writer_deadline_refuses_to_commit(tmp_path):
    url = str(tmp_path / "repo")
    tqsnap.init_repo(url, grace=2.5, max_write_duration=1.0)
    job = tqsnap.job.begin(url, stream="late")
    job.add("loop", {"step": 1})
    time.sleep(1.3)
    with pytest.raises(JobDeadlineExceededError, match="part 'loop' was staged"):
        job.commit()
    assert tqsnap.snapshots(url, "late") == []
    again = tqsnap.job.begin(url, stream="late")
    again.add("loop", {"step": 1})
    assert again.commit().seq == 1


def test_wrong_use_is_refused_before_anything_is_committed(tmp_path):
    url = str(tmp_path / "repo")
    job = tqsnap.job.begin(url, stream="run")
    other = tqsnap.job.begin(url, stream="run")
    foreign = other.add("loop", {"step": 1})
    with pytest.raises(JobError, match="staged for job"):
        job.add("loop", foreign)
    with pytest.raises(JobError, match="no parts"):
        job.commit()
    job.add("loop", {"step": 2})
    with pytest.raises(JobError, match="already has a part 'loop'"):
        job.add("loop", {"step": 3})
    with pytest.raises(JobError, match="not a job token"):
        tqsnap.dcp.Writer(url, stream="run", stage="step-1000", part="trainer")
    with pytest.raises(JobError, match="job on stream .run."):
        tqsnap.dcp.Writer(url, stream="other", stage=job.token, part="trainer")
    with pytest.raises(JobError, match="needs stage"):
        tqsnap.dcp.Writer(url, stream="run", part="trainer")
    assert tqsnap.snapshots(url, "run") == []
    job.commit()
    with pytest.raises(JobError, match="already committed"):
        job.commit()


@pytest.mark.s3
def test_a_job_on_a_real_s3_server_restores_each_part(seaweedfs_endpoint, make_bucket):
    url, options = make_bucket(seaweedfs_endpoint)
    for version in (0, 1):
        job = tqsnap.job.begin(url, stream="s3run", storage_options=options)
        writer = tqsnap.dcp.Writer(url, stream="s3run", storage_options=options, stage=job.token, part="trainer")
        state = {"model": full_tensors(version), "step": version}
        dcp.save(state, storage_writer=writer, no_dist=True)
        job.add("trainer", writer.staged)
        job.add("loop", loop_state(version))
        info = job.commit(metadata={"step": version})
    assert info.seq == 2 and writer.staged.stats["reused_bytes"] >= 2 * 2**20
    whole = {"model": {n: torch.zeros_like(t) for n, t in full_tensors(1).items()}, "step": -1}
    reader = tqsnap.dcp.Reader(url, stream="s3run", part="trainer", storage_options=options)
    dcp.load(whole, storage_reader=reader, no_dist=True)
    assert all(torch.equal(whole["model"][n], t) for n, t in full_tensors(1).items())
    assert tqsnap.load(url, stream="s3run", part="loop", storage_options=options)["step"] == 1001
    assert tqsnap.verify(url, stream="s3run", storage_options=options).ok
