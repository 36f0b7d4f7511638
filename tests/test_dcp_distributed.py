"""tqsnap.dcp across processes: gloo on CPU, DTensor row shards, 2 and 4 ranks, resharding, crashes.

Each spawn costs seconds (every rank imports torch), so the ranks of one spawn do several jobs
and module-scoped fixtures hand their reports to the tests:

- ``two_ranks``: 2 ranks save stream ``two`` and load it back, then ``async_save`` a second
  snapshot in which only one small tensor changed; then they commit ``crash``@1, and rank 1
  dies inside ``write_data`` of the next save, after uploading its shards;
- ``four_ranks``: 4 ranks save ``four`` and load it back, and load ``two`` (2 -> 4 resharding);
- ``after_crash``: 2 ranks load ``four`` (4 -> 2 resharding) and save ``crash`` again.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import traceback
import warnings
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import DTensor, Shard, distribute_tensor

import tqsnap.dcp
from tqsnap.engine import Repository
from tqsnap.store import LocalStore

CRASH_EXIT = 17


# --- what every rank saves and expects -----------------------------------------------------------


def full_tensors(version: int) -> dict[str, torch.Tensor]:
    """The global tensors of one version; versions 0 and 1 differ only in ``ids``."""
    g = torch.Generator().manual_seed(100 + (version if version > 1 else 0))
    return {
        "embed": torch.randn(64, 48, generator=g),
        "proj": torch.randn(10, 8, generator=g),  # 10 rows: 3/3/3/1 over 4 ranks, 5/5 over 2
        "big": torch.randn(2048, 256, generator=g),  # 2 MiB: shards of its own
        "ids": torch.arange(96, dtype=torch.int64).reshape(24, 4) + version,
    }


def sharded_state(mesh: DeviceMesh, version: int) -> dict[str, Any]:
    fulls = full_tensors(version)
    return {
        "model": {name: distribute_tensor(t, mesh, [Shard(0)]) for name, t in fulls.items()},
        "bias": torch.linspace(0, 1, 33) + version,  # replicated: DCP saves it from one rank
        "step": 1000 + version,
    }


def empty_state(mesh: DeviceMesh, version: int) -> dict[str, Any]:
    fulls = full_tensors(version)
    return {
        "model": {
            name: distribute_tensor(torch.zeros_like(t), mesh, [Shard(0)]) for name, t in fulls.items()
        },
        "bias": torch.zeros(33),
        "step": -1,
    }


def check_loaded(state: dict[str, Any], mesh: DeviceMesh, version: int) -> None:
    """Exact equality, globally and on this rank's own shard."""
    expected = sharded_state(mesh, version)
    for name, full in full_tensors(version).items():
        got = state["model"][name]
        assert isinstance(got, DTensor), name
        assert torch.equal(got.full_tensor(), full), f"{name} differs after load"
        assert torch.equal(got.to_local(), expected["model"][name].to_local()), f"local shard of {name}"
    assert torch.equal(state["bias"], expected["bias"])
    assert state["step"] == expected["step"]


# --- rank entry points ---------------------------------------------------------------------------


def _entry(job: Callable[..., dict[str, Any]], rank: int, world: int, port: int, url: str, out: str) -> None:
    """Run ``job`` as one rank; write its report (or traceback) to ``out/rank<r>.json``."""
    warnings.simplefilter("ignore")
    report: dict[str, Any]
    try:
        dist.init_process_group(
            "gloo",
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=world,
            timeout=timedelta(seconds=60),
        )
        mesh = init_device_mesh("cpu", (world,))
        report = {"ok": True, **job(rank, mesh, url)}
    except BaseException as exc:  # noqa: BLE001 - reported to the test process
        report = {"ok": False, "error": type(exc).__name__, "traceback": traceback.format_exc()}
    Path(out, f"rank{rank}.json").write_text(json.dumps(report))
    os._exit(0 if report["ok"] else 1)  # skip process-group teardown, which can wait on dead peers


def _two_ranks_job(rank: int, mesh: DeviceMesh, url: str) -> dict[str, Any]:
    writer = tqsnap.dcp.Writer(url, stream="two")
    first = dcp.save(sharded_state(mesh, 0), storage_writer=writer)
    loaded = empty_state(mesh, 0)
    dcp.load(loaded, storage_reader=tqsnap.dcp.Reader(url, stream="two"))
    check_loaded(loaded, mesh, 0)
    response = dcp.async_save(sharded_state(mesh, 1), storage_writer=writer)
    second = getattr(response, "upload_completion", response).result(timeout=120)
    report = {
        "first": first.storage_meta.checkpoint_id,
        "second": second.storage_meta.checkpoint_id,
        "stats": writer.last_snapshot.stats if writer.last_snapshot else None,
    }
    Path(os.environ["TQSNAP_TEST_OUT"], f"rank{rank}-two.json").write_text(json.dumps(report))
    return _crash(rank, mesh, url)


def _four_ranks_job(rank: int, mesh: DeviceMesh, url: str) -> dict[str, Any]:
    dcp.save(sharded_state(mesh, 2), storage_writer=tqsnap.dcp.Writer(url, stream="four"))
    loaded = empty_state(mesh, 2)
    dcp.load(loaded, storage_reader=tqsnap.dcp.Reader(url, stream="four"))
    check_loaded(loaded, mesh, 2)
    resharded = empty_state(mesh, 1)
    dcp.load(resharded, storage_reader=tqsnap.dcp.Reader(url, stream="two", snapshot=2))
    check_loaded(resharded, mesh, 1)
    return {}


class DyingWriter(tqsnap.dcp.Writer):
    """Rank 1 uploads its shards, then its process dies before DCP can report back."""

    def write_data(self, plan: Any, planner: Any) -> Any:
        result = super().write_data(plan, planner)
        if self.rank == 1:
            Path(os.environ["TQSNAP_TEST_OUT"], "rank1-uploaded").write_text("1")
            os._exit(CRASH_EXIT)
        return result


def _crash(rank: int, mesh: DeviceMesh, url: str) -> dict[str, Any]:
    """Commit ``crash``@1, then start a save in which rank 1 dies after uploading."""
    dcp.save(sharded_state(mesh, 0), storage_writer=tqsnap.dcp.Writer(url, stream="crash"))
    try:
        dcp.save(sharded_state(mesh, 3), storage_writer=DyingWriter(url, stream="crash"))
    except BaseException as exc:  # noqa: BLE001 - the coordinator sees its peer vanish
        return {"save_raised": type(exc).__name__}
    return {"save_raised": None}


def _after_crash_job(rank: int, mesh: DeviceMesh, url: str) -> dict[str, Any]:
    resharded = empty_state(mesh, 2)
    dcp.load(resharded, storage_reader=tqsnap.dcp.Reader(url, stream="four"))
    check_loaded(resharded, mesh, 2)
    writer = tqsnap.dcp.Writer(url, stream="crash")
    saved = dcp.save(sharded_state(mesh, 3), storage_writer=writer)
    loaded = empty_state(mesh, 3)
    dcp.load(loaded, storage_reader=tqsnap.dcp.Reader(url, stream="crash"))
    check_loaded(loaded, mesh, 3)
    return {"saved": saved.storage_meta.checkpoint_id}


# --- launching -----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(
    job: Callable[..., dict[str, Any]], world: int, url: str, out: Path, timeout: float = 150
) -> list[Any]:
    """Start ``world`` spawned ranks running ``job``; return (exit code, report) per rank."""
    out.mkdir(parents=True, exist_ok=True)
    ctx = multiprocessing.get_context("spawn")
    port = _free_port()
    procs = [
        ctx.Process(target=_entry, args=(job, rank, world, port, url, str(out))) for rank in range(world)
    ]
    # Several ranks share few cores: one intra-op thread each, or they starve one another.
    child_env = {"TQSNAP_TEST_OUT": str(out), "OMP_NUM_THREADS": "1"}
    saved = {k: os.environ.get(k) for k in child_env}
    os.environ.update(child_env)
    try:
        for p in procs:
            p.start()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    for p in procs:
        p.join(timeout)
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join(5)
    results = []
    for rank, p in enumerate(procs):
        path = out / f"rank{rank}.json"
        results.append((p.exitcode, json.loads(path.read_text()) if path.exists() else None))
    return results


def assert_all_ok(results: list[Any]) -> list[dict[str, Any]]:
    for rank, (code, report) in enumerate(results):
        assert report is not None and report["ok"], (
            f"rank {rank} (exit {code}) failed:\n{(report or {}).get('traceback')}"
        )
        assert code == 0
    return [report for _, report in results]


def unreferenced_shards(url: str) -> set[str]:
    """Shard objects no visible snapshot references: what a dead save leaves for gc."""
    repo = Repository.open(url)
    referenced: set[str] = set()
    for info in repo.snapshots():
        referenced |= {ref.key for ref in repo.load_manifest(info.stream, info.seq).shards}
    return {info.key for info in LocalStore(url).list("shards/")} - referenced


@pytest.fixture(scope="module")
def after_crash(
    two_ranks_run: Any, four_ranks: list[Any], repo_url: str, tmp_path_factory: pytest.TempPathFactory
) -> list[Any]:
    return run_ranks(_after_crash_job, 2, repo_url, tmp_path_factory.mktemp("after"))


@pytest.fixture(scope="module")
def repo_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("dcp-dist") / "repo")


@pytest.fixture(scope="module")
def two_ranks_run(repo_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Runs the 2-rank job, then records what the store holds right after the crash."""
    out = tmp_path_factory.mktemp("two")
    results = run_ranks(_two_ranks_job, 2, repo_url, out)
    return {
        "out": out,
        "results": results,
        "rank1_uploaded": (out / "rank1-uploaded").exists(),
        "seqs": [s.seq for s in Repository.open(repo_url).snapshots("crash")],
        "garbage": unreferenced_shards(repo_url),
    }


@pytest.fixture(scope="module")
def two_ranks(two_ranks_run: dict[str, Any]) -> list[dict[str, Any]]:
    """The reports the two ranks wrote before the crash scenario."""
    reports = []
    for rank in range(2):
        path = two_ranks_run["out"] / f"rank{rank}-two.json"
        if not path.exists():
            code, report = two_ranks_run["results"][rank]
            pytest.fail(f"rank {rank} (exit {code}) failed:\n{(report or {}).get('traceback')}")
        reports.append(json.loads(path.read_text()))
    return reports


@pytest.fixture(scope="module")
def four_ranks(two_ranks: list[Any], repo_url: str, tmp_path_factory: pytest.TempPathFactory) -> list[Any]:
    return run_ranks(_four_ranks_job, 4, repo_url, tmp_path_factory.mktemp("four"))


# --- tests ---------------------------------------------------------------------------------------


def test_two_ranks_save_one_snapshot_and_load_it_back_exactly(two_ranks: list[Any], repo_url: str) -> None:
    reports = two_ranks
    assert reports[0]["first"] == reports[1]["first"] and reports[0]["first"].endswith("#two@1")
    (first, _) = Repository.open(repo_url).snapshots("two")
    assert first.kind == "dcp"


def test_async_save_across_ranks_uploads_only_what_changed(two_ranks: list[Any]) -> None:
    reports = two_ranks
    assert reports[0]["second"].endswith("#two@2")
    stats = reports[0]["stats"]
    assert stats["reused_shards"] > 0
    assert stats["stored_bytes"] < 0.05 * stats["item_bytes"], stats


def test_four_ranks_save_and_load_back_exactly(four_ranks: list[Any]) -> None:
    assert_all_ok(four_ranks)  # the ranks compared every tensor, globally and shard by shard


def test_a_two_rank_snapshot_loads_into_four_ranks(four_ranks: list[Any]) -> None:
    assert_all_ok(four_ranks)


def test_a_four_rank_snapshot_loads_into_two_ranks(after_crash: list[Any]) -> None:
    assert_all_ok(after_crash)


def test_a_rank_killed_mid_save_leaves_no_visible_snapshot(two_ranks_run: dict[str, Any]) -> None:
    (code0, report0), (code1, report1) = two_ranks_run["results"]
    assert code1 == CRASH_EXIT and report1 is None, "rank 1 should have died inside write_data"
    assert two_ranks_run["rank1_uploaded"], "rank 1 should have uploaded its shards first"
    assert report0 is not None and report0["ok"] and report0["save_raised"], "the coordinator must not commit"
    assert two_ranks_run["seqs"] == [1]
    assert two_ranks_run["garbage"], "the dead save's uploads stay behind, unreferenced, for gc"


def test_the_save_after_a_crash_commits_and_loads(after_crash: list[Any], repo_url: str) -> None:
    reports = assert_all_ok(after_crash)
    assert reports[0]["saved"].endswith("#crash@2")
    assert [s.seq for s in Repository.open(repo_url).snapshots("crash")] == [1, 2]
