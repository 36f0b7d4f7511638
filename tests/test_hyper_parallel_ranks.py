"""tqsnap.hyper_parallel across processes: 3 gloo ranks on the real S3 server, a reshard onto 2, a SIGKILL.

One spawn of three ranks (each rank imports torch, so spawns are the cost) does, in order:

1. save version 0 of the state, each tensor split by rows over the 3 ranks, values as BYTE_IO;
   load it back on 3 ranks; save version 1, in which only the small ``ids`` changed;
2. ranks 0 and 1, on a process group of their own, load both snapshots (3 -> 2 resharding);
3. twice, rank 0 begins a job snapshot of stream ``job``, all three stage the save as its part
   ``model`` (the second time after the small change), and rank 0 adds the part and commits;
4. all three commit ``crash``@1, then start another save in which rank 2 SIGKILLs itself
   inside ``execute_write`` after uploading its shards.

The test process then checks what a user would: the values, the bytes uploaded, that the
killed save left nothing visible, and that the next save of ``crash`` commits and loads.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import traceback
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any

import hyper_parallel_planners as hp
import pytest
import torch.distributed as dist
from test_hyper_parallel import check_loaded, empty_state, full_state

import tqsnap.hyper_parallel
import tqsnap.job
from tqsnap.engine import Repository

WORLD = 3
MiB = 1 << 20

pytestmark = pytest.mark.s3


class DyingWriter(tqsnap.hyper_parallel.Writer):
    """Rank 2 uploads its shards, then its process is SIGKILLed before hyper_parallel gathers results."""

    def execute_write(self, plan: Any, planner: Any) -> Any:
        results = super().execute_write(plan, planner)
        if self.rank == 2:
            Path(os.environ["TQSNAP_TEST_OUT"], "rank2-uploaded").write_text("1")
            os.kill(os.getpid(), signal.SIGKILL)
        return results


def _job(rank: int, url: str, options: dict[str, str]) -> dict[str, Any]:
    def writer(stream: str, cls: type = tqsnap.hyper_parallel.Writer) -> Any:
        return cls(url, stream=stream, storage_options=options)

    def reader(**kwargs: Any) -> Any:
        return tqsnap.hyper_parallel.Reader(url, stream="hp", storage_options=options, **kwargs)

    pair = dist.new_group([0, 1])  # collective: every rank creates it
    try:  # one snapshot of all ranks needs their results on the coordinator
        writer("hp").configure_writer(is_coordinator=rank == 0, rank=rank, use_collectives=False)
        refused = None
    except ValueError as exc:
        refused = str(exc)
    for version in (0, 1):
        hp.save(full_state(version), writer("hp"), hp.RowSavePlanner(WORLD), rank=rank, world=WORLD)
    for version, snapshot in ((0, 1), (1, "latest")):
        state = empty_state(version, rank, WORLD)
        hp.load(state, reader(snapshot=snapshot), hp.RowLoadPlanner(WORLD), rank=rank, world=WORLD)
        check_loaded(state, version, rank, WORLD)
    if rank < 2:
        for version, snapshot in ((0, 1), (1, 2)):
            state = empty_state(version, rank, 2)
            hp.load(state, reader(snapshot=snapshot), hp.RowLoadPlanner(2), rank=rank, world=2, group=pair)
            check_loaded(state, version, rank, 2)
    job_stats = []
    for version in (0, 1):
        job = tqsnap.job.begin(url, stream="job", storage_options=options) if rank == 0 else None
        box = [job.token if job is not None else None]
        dist.broadcast_object_list(box, src=0)
        staging = tqsnap.hyper_parallel.Writer(url, stream="job", storage_options=options, stage=box[0], part="model")
        hp.save(full_state(version), staging, hp.RowSavePlanner(WORLD), rank=rank, world=WORLD)
        if job is not None:
            assert staging.staged is not None
            job.add("model", staging.staged)
            job.commit()
            job_stats.append(staging.staged.stats)
        dist.barrier()
    hp.save(full_state(0), writer("crash"), hp.RowSavePlanner(WORLD), rank=rank, world=WORLD)
    try:
        hp.save(full_state(2), writer("crash", DyingWriter), hp.RowSavePlanner(WORLD), rank=rank, world=WORLD)
    except Exception as exc:  # noqa: BLE001 - the survivors see their peer vanish
        return {"crash_save_raised": type(exc).__name__, "job_stats": job_stats, "refused": refused}
    return {"crash_save_raised": None, "job_stats": job_stats, "refused": refused}


def _entry(rank: int, port: int, url: str, options: dict[str, str], out: str) -> None:
    """Run the job as one rank; write its report (or traceback) to ``out/rank<r>.json``."""
    warnings.simplefilter("ignore")
    try:
        dist.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD, timeout=timedelta(seconds=60)
        )
        report = {"ok": True, **_job(rank, url, options)}
    except BaseException as exc:  # noqa: BLE001 - reported to the test process
        report = {"ok": False, "error": type(exc).__name__, "traceback": traceback.format_exc()}
    Path(out, f"rank{rank}.json").write_text(json.dumps(report))
    os._exit(0)  # skip process-group teardown, which can wait on the dead peer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def three_ranks(seaweedfs_endpoint: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    url, options = seaweedfs_endpoint.make_bucket("hp")
    out = tmp_path_factory.mktemp("hp-ranks")
    ctx = multiprocessing.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_entry, args=(r, port, url, options, str(out))) for r in range(WORLD)]
    child_env = {"TQSNAP_TEST_OUT": str(out), "OMP_NUM_THREADS": "1"}
    saved = {k: os.environ.get(k) for k in child_env}
    os.environ.update(child_env)
    try:
        for p in procs:
            p.start()
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    for p in procs:
        p.join(180)
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join(5)
    reports = [json.loads(path.read_text()) if (path := out / f"rank{r}.json").exists() else None for r in range(WORLD)]
    return {"url": url, "options": options, "out": out, "codes": [p.exitcode for p in procs], "reports": reports}


def test_three_ranks_save_and_load_back_exactly_and_two_ranks_reshard(three_ranks: dict[str, Any]) -> None:
    for rank in (0, 1):
        report = three_ranks["reports"][rank]
        assert report is not None and report["ok"], f"rank {rank} failed:\n{(report or {}).get('traceback')}"
    repo = Repository.open(three_ranks["url"], storage_options=three_ranks["options"])
    assert repo.visible_seqs("hp") == [1, 2]
    for rank in (0, 1):
        assert "use_collectives=True" in (three_ranks["reports"][rank]["refused"] or ""), "use_collectives=False"
    items = repo.reader("hp", 1).items
    assert {p for p in items if p.startswith("t/emb@")} == {"t/emb@0,0", "t/emb@1024,0", "t/emb@2048,0"}


def test_a_small_change_on_three_ranks_uploads_only_what_changed(three_ranks: dict[str, Any]) -> None:
    repo = Repository.open(three_ranks["url"], storage_options=three_ranks["options"])
    stats = repo.load_manifest("hp", 2).stats
    assert stats["reused_bytes"] >= 3 * MiB, stats
    assert stats["new_bytes"] < 64 * 1024, stats


def test_three_ranks_stage_a_job_part_that_dedups_and_loads_by_part(three_ranks: dict[str, Any]) -> None:
    url, options = three_ranks["url"], three_ranks["options"]
    stats = three_ranks["reports"][0]["job_stats"]
    assert stats[1]["reused_bytes"] >= 3 * MiB and stats[1]["new_bytes"] < 64 * 1024, stats
    assert Repository.open(url, storage_options=options).visible_seqs("job") == [1, 2]
    for seq, version in ((1, 0), (2, 1)):
        state = empty_state(version, 0, 1)
        reader = tqsnap.hyper_parallel.Reader(url, stream="job", snapshot=seq, part="model", storage_options=options)
        hp.load(state, reader, hp.RowLoadPlanner(1))  # 3 -> 1 ranks
        check_loaded(state, version, 0, 1)


def test_a_sigkilled_rank_leaves_no_visible_snapshot_and_the_next_save_commits(three_ranks: dict[str, Any]) -> None:
    assert three_ranks["codes"][2] == -signal.SIGKILL
    assert (three_ranks["out"] / "rank2-uploaded").exists(), "rank 2 died before uploading"
    for rank in (0, 1):
        assert three_ranks["reports"][rank]["crash_save_raised"] is not None, "a save survived its dead rank"
    url, options = three_ranks["url"], three_ranks["options"]
    repo = Repository.open(url, storage_options=options)
    assert repo.visible_seqs("crash") == [1]
    referenced = {ref.key for info in repo.snapshots() for ref in repo.load_manifest(info.stream, info.seq).shards}
    assert {o.key for o in repo.store.list("shards/")} - referenced, "the dead save uploaded nothing"
    state = empty_state(0, 0, 1)
    hp.load(state, tqsnap.hyper_parallel.Reader(url, stream="crash", storage_options=options), hp.RowLoadPlanner(1))
    check_loaded(state, 0, 0, 1)
    writer = tqsnap.hyper_parallel.Writer(url, stream="crash", storage_options=options)
    hp.save(full_state(2), writer, hp.RowSavePlanner(1))
    assert writer.last_snapshot is not None and writer.last_snapshot.seq == 2
    state = empty_state(2, 0, 1)
    hp.load(state, tqsnap.hyper_parallel.Reader(url, stream="crash", storage_options=options), hp.RowLoadPlanner(1))
    check_loaded(state, 2, 0, 1)
