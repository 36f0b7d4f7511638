"""A whole-job snapshot (trainer + TransferQueue + loop state) against saving the parts separately.

    python benchmarks/bench_job.py [--base-mib 64] [--head 1024] [--steps 5] [--repeat 3]
                                   [--out benchmarks/results/job.md]

One process is the trainer (a frozen embedding "base" and a trainable MLP head with Adam, as in
LoRA-style RL fine-tuning; DCP on a 1-rank gloo group); a TransferQueue with 3 storage units on
a local Ray cluster holds prompts and rollouts. On local disk and on SeaweedFS (S3 on loopback),
interleaved round by round, it measures:

- the training stall (how long the loop is blocked) of one job snapshot: the trainer staged with
  ``tqsnap.dcp.Writer(stage=...)`` while the queue stages with ``tqsnap.tq.stage`` on a thread,
  then the loop state and the one commit; against a plain ``dcp.save`` and ``dcp.async_save`` of
  the same trainer state to the same store (``FileSystemWriter`` on disk, ``tqsnap.dcp.Writer``
  on S3) and ``tqsnap.dcp.Writer`` on disk;
- the stall of an asynchronous job snapshot: the loop waits for ``tqsnap.job.begin``, the
  queue's capture (``tqsnap.tq.capture(wait=False)``, overlapped with the trainer's staging copy),
  ``dcp.async_save``'s staging copy, the loop state's copy and ``commit_async``; the uploads
  and the commit run in the background (also timed, until the commit lands). The loop keeps its
  repository and TransferQueue handles open across snapshots, as a training job does;
- the TransferQueue's unit stall within the job snapshot;
- bytes uploaded per part by the incremental job snapshot taken after ``--steps`` training steps
  and as many new rollout steps;
- the end-to-end resume (queue into the running TransferQueue with ``force=True``, trainer with
  ``dcp.load``, loop state) from one job snapshot, against restoring the same three parts from
  three separate snapshots.

Goal: the job snapshot adds at most 10% to the stall of the fastest separate save; resuming
from it is no slower than restoring the parts separately. Medians over ``--repeat`` rounds.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemWriter
from torch.distributed.checkpoint._fsspec_filesystem import FsspecWriter
from torch.distributed.checkpoint.state_dict import get_state_dict

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from s3servers import start_seaweedfs  # noqa: E402

import tqsnap  # noqa: E402
import tqsnap.dcp  # noqa: E402
import tqsnap.job  # noqa: E402
import tqsnap.tq  # noqa: E402
from tqsnap.faces.demo_cluster import free_port, init_transferqueue, start_ray  # noqa: E402
from tqsnap.faces.demo_workload import RolloutRequest, load_prompts, rollout  # noqa: E402

MiB = 1 << 20


class Trainer:
    """The trainer's state: a frozen base embedding and a trainable head, Adam, a training step."""

    def __init__(self, base_mib: int, head: int) -> None:
        torch.manual_seed(0)
        dim = 256
        base = torch.nn.Embedding(base_mib * MiB // (4 * dim), dim)
        base.weight.requires_grad_(False)
        mlp = torch.nn.Sequential(torch.nn.Linear(dim, head), torch.nn.ReLU(), torch.nn.Linear(head, head))
        self.model = torch.nn.ModuleDict({"base": base, "head": mlp})
        self.optim = torch.optim.Adam(mlp.parameters(), lr=1e-3)
        self.step()

    def step(self) -> None:
        base = self.model["base"]
        x = base(torch.randint(0, base.num_embeddings, (64,)))
        loss = self.model["head"](x).square().mean()
        self.optim.zero_grad()
        loss.backward()
        self.optim.step()

    def state(self) -> dict[str, Any]:
        """Model and optimizer as DCP wants them (FQN keys), the same for every writer."""
        model, optim = get_state_dict(self.model, self.optim)
        return {"model": model, "optim": optim}

    def nbytes(self) -> int:
        return sum(v.numel() * v.element_size() for v in _tensors(self.state()))


def _tensors(tree: Any) -> list[torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, dict):
        return [t for v in tree.values() for t in _tensors(v)]
    if isinstance(tree, list | tuple):
        return [t for v in tree for t in _tensors(v)]
    return []


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


class Store:
    """One place to save to: a tqsnap repository URL, and DCP writers to the same store as baselines."""

    def __init__(
        self, name: str, url: str, options: dict[str, Any], baselines: dict[str, Callable[[], Any]]
    ) -> None:
        self.name, self.url, self.options, self.baselines = name, url, options, baselines
        #: The open repository and TransferQueue handles the asynchronous job snapshot keeps.
        self.repo: Any = None
        self.system: Any = None


def job_snapshot(store: Store, stream: str, trainer: Trainer, loop: dict[str, Any]) -> dict[str, Any]:
    """One job snapshot; returns the training stall, per-part stats and the queue's unit stall."""
    t0 = time.perf_counter()
    job = tqsnap.job.begin(store.url, stream=stream, storage_options=store.options)
    queue: dict[str, Any] = {}

    def stage_queue() -> None:
        queue["staged"] = tqsnap.tq.stage(job, part="queue")

    thread = threading.Thread(target=stage_queue)
    thread.start()
    writer = tqsnap.dcp.Writer(
        store.url, stream=stream, storage_options=store.options, stage=job.token, part="trainer"
    )
    dcp.save(trainer.state(), storage_writer=writer)
    thread.join()
    job.add("trainer", writer.staged)
    job.add("queue", queue["staged"])
    job.add("loop", loop)
    info = job.commit(metadata={"step": loop["step"]})
    stall = time.perf_counter() - t0
    parts = {name: p.stats for name, p in job.parts.items()}
    return {"stall": stall, "parts": parts, "seq": info.seq}


def job_snapshot_async(
    store: Store, stream: str, trainer: Trainer, loop: dict[str, Any], *, begin_ahead: bool = False
) -> dict[str, Any]:
    """One asynchronous job snapshot: the stall (until the loop may go on) and the time to commit.

    With ``begin_ahead`` the job is begun (its parent resolved) and the trainer's writer made
    before the step boundary, as a loop does while its step computes; the stall is then the
    captures and the commit's start only.
    """
    if begin_ahead:
        job = tqsnap.job.begin(store.repo, stream=stream)
        writer = tqsnap.dcp.Writer(store.repo, stream=stream, stage=job.token, part="trainer")
    t0 = time.perf_counter()
    if not begin_ahead:
        job = tqsnap.job.begin(store.repo, stream=stream)
    queue = tqsnap.tq.capture(job, part="queue", system=store.system, wait=False)  # sent, not waited for
    if not begin_ahead:
        writer = tqsnap.dcp.Writer(store.repo, stream=stream, stage=job.token, part="trainer")
    saving = dcp.async_save(trainer.state(), storage_writer=writer)
    queue.wait()  # the queue's capture ran in its actors beside the trainer's staging copy
    job.add_async("trainer", saving, writer=writer)
    job.add_async("queue", queue)
    job.add_async("loop", loop)
    done = job.commit_async(metadata={"step": loop["step"]})
    stall = time.perf_counter() - t0
    info = done.result()
    committed = time.perf_counter() - t0
    parts = {name: p.stats for name, p in job.parts.items()}
    return {"stall": stall, "committed": committed, "parts": parts, "seq": info.seq}


def separate_saves(store: Store, stream: str, trainer: Trainer, loop: dict[str, Any]) -> dict[str, float]:
    """The same three parts as three snapshots (trainer, queue, loop), each committed alone.

    ``trainer``, ``queue`` and ``loop`` are each save's own time; ``beside`` is the stall when the
    queue snapshot runs on a thread beside the trainer's save, as the job snapshot does.
    """
    out: dict[str, float] = {}
    writer = tqsnap.dcp.Writer(store.url, stream=f"{stream}-trainer", storage_options=store.options)

    def queue() -> None:
        tqsnap.tq.snapshot(store.url, stream=f"{stream}-queue", storage_options=store.options)

    def loop_save() -> None:
        tqsnap.save(store.url, loop, stream=f"{stream}-loop", storage_options=store.options)

    out["trainer"], _ = timed(lambda: dcp.save(trainer.state(), storage_writer=writer))
    out["queue"], _ = timed(queue)
    out["loop"], _ = timed(loop_save)

    def beside() -> None:
        thread = threading.Thread(target=queue)
        thread.start()
        dcp.save(trainer.state(), storage_writer=writer)
        thread.join()
        loop_save()

    out["beside"], _ = timed(beside)
    return out


def baselines(store: Store, trainer: Trainer) -> dict[str, float]:
    """Stall of a plain dcp.save and of dcp.async_save (until it returns) to the same store."""
    out: dict[str, float] = {}
    for name, make in store.baselines.items():
        out[f"dcp.save, {name}"], _ = timed(
            lambda make=make: dcp.save(trainer.state(), storage_writer=make())
        )
        stall, fut = timed(lambda make=make: dcp.async_save(trainer.state(), storage_writer=make()))
        fut.result()
        out[f"dcp.async_save, {name} (until it returns)"] = stall
    return out


def resume_job(store: Store, stream: str, seq: int, trainer: Trainer) -> float:
    def run() -> None:
        tqsnap.tq.restore(
            store.url, stream=stream, snapshot=seq, part="queue", force=True, storage_options=store.options
        )
        dcp.load(
            trainer.state(),
            storage_reader=tqsnap.dcp.Reader(
                store.url, stream=stream, snapshot=seq, part="trainer", storage_options=store.options
            ),
        )
        tqsnap.load(store.url, stream=stream, snapshot=seq, part="loop", storage_options=store.options)

    return timed(run)[0]


def resume_job_one_call(store: Store, stream: str, seq: int, trainer: Trainer) -> float:
    """``tqsnap.job.restore``: the three parts of one job at once, in one call."""

    def run() -> None:
        tqsnap.job.restore(
            store.url,
            stream,
            seq,
            dcp_states={"trainer": trainer.state()},
            force=True,
            storage_options=store.options,
        )

    return timed(run)[0]


def resume_separate(store: Store, stream: str, trainer: Trainer) -> float:
    def run() -> None:
        tqsnap.tq.restore(store.url, stream=f"{stream}-queue", force=True, storage_options=store.options)
        dcp.load(
            trainer.state(),
            storage_reader=tqsnap.dcp.Reader(
                store.url, stream=f"{stream}-trainer", storage_options=store.options
            ),
        )
        tqsnap.load(store.url, stream=f"{stream}-loop", storage_options=store.options)

    return timed(run)[0]


JOB = "job snapshot (trainer, queue beside it, loop, one commit)"
JOB_ASYNC = "job snapshot, asynchronous (captures only; uploads and commit in the background)"
JOB_ASYNC_AHEAD = "job snapshot, asynchronous, begun while the step computes (captures only)"
JOB_ASYNC_COMMITTED = "(not a stall) asynchronous job snapshot: until its commit lands"
BESIDE = "separate snapshots, queue beside the trainer"
RESUME_JOB = "resume: one job snapshot, part by part"
RESUME_JOB_CALL = "resume: one job snapshot, tqsnap.job.restore (parts at once)"
RESUME_SEPARATE = "resume: three separate snapshots"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--base-mib", type=int, default=64, help="frozen base embedding MiB (default %(default)s)"
    )
    ap.add_argument("--head", type=int, default=1024, help="trainable head width (default %(default)s)")
    ap.add_argument("--steps", type=int, default=5, help="training steps between saves (default %(default)s)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="bench-job-"))
    server = start_seaweedfs(tmp / "seaweedfs")
    ray = start_ray()
    tq = init_transferqueue(3)
    load_prompts(tq)
    rollout_step = 0

    def more_rollouts(n: int) -> None:
        nonlocal rollout_step
        for _ in range(n):
            rollout_step += 1
            prompts = tuple(range(rollout_step * 4 % 1000, rollout_step * 4 % 1000 + 4))
            rollout(tq, RolloutRequest(rollout_step, prompts, rollout_step))

    more_rollouts(8)
    trainer = Trainer(args.base_mib, args.head)
    stores = make_stores(server, tmp / "disk")
    rows: dict[str, dict[str, list[float]]] = {s.name: {} for s in stores}
    incremental: dict[str, dict[str, Any]] = {}
    unit_stall: dict[str, list[float]] = {s.name: [] for s in stores}
    unit_stall_async: dict[str, list[float]] = {s.name: [] for s in stores}
    system = tqsnap.tq.TransferQueueSystem.attached()
    for s in stores:
        s.repo, s.system = tqsnap.open_repo(s.url, create=True, storage_options=s.options), system
    step = 0
    loads = [os.getloadavg()[0]]  # other work on the machine, for the record
    for round_ in range(args.repeat):
        for store in stores:
            r = rows[store.name]
            stream = f"r{round_}"
            loop = {"step": step, "rng": torch.get_rng_state()}
            # the first saves of a round are full; the ones after --steps steps are the timed ones
            job_snapshot(store, stream, trainer, loop)
            separate_saves(store, stream, trainer, loop)
            for _ in range(args.steps):
                trainer.step()
                step += 1
            more_rollouts(args.steps)
            loop = {"step": step, "rng": torch.get_rng_state()}
            job = job_snapshot(store, stream, trainer, loop)
            sep = separate_saves(store, stream, trainer, loop)
            r.setdefault(JOB, []).append(job["stall"])
            # The asynchronous job snapshot of the same state, on its own stream with the same
            # history (a full one first), so its upload deduplicates exactly as the job's did.
            job_snapshot_async(store, f"{stream}-async-full", trainer, loop)
            async_job = job_snapshot_async(store, f"{stream}-async-full", trainer, loop)
            r.setdefault(JOB_ASYNC, []).append(async_job["stall"])
            r.setdefault(JOB_ASYNC_COMMITTED, []).append(async_job["committed"])
            ahead = job_snapshot_async(store, f"{stream}-async-full", trainer, loop, begin_ahead=True)
            r.setdefault(JOB_ASYNC_AHEAD, []).append(ahead["stall"])
            r.setdefault(BESIDE, []).append(sep["beside"])
            r.setdefault("separate snapshots, one after another", []).append(
                sep["trainer"] + sep["queue"] + sep["loop"]
            )
            r.setdefault("dcp.save, tqsnap.dcp.Writer (trainer only, incremental)", []).append(sep["trainer"])
            for name, stall in baselines(store, trainer).items():
                r.setdefault(f"{name} (trainer only)", []).append(stall)
            unit_stall[store.name].append(max(job["parts"]["queue"].get("tq_unit_stall_s") or [0.0]))
            unit_stall_async[store.name].append(max(async_job["parts"]["queue"].get("tq_unit_stall_s") or [0.0]))
            incremental[store.name] = job["parts"]
            resumes = [
                (
                    RESUME_JOB,
                    lambda store=store, stream=stream, seq=job["seq"]: resume_job(
                        store, stream, seq, trainer
                    ),
                ),
                (
                    RESUME_JOB_CALL,
                    lambda store=store, stream=stream, seq=job["seq"]: resume_job_one_call(
                        store, stream, seq, trainer
                    ),
                ),
                (RESUME_SEPARATE, lambda store=store, stream=stream: resume_separate(store, stream, trainer)),
            ]
            for name, fn in resumes if round_ % 2 == 0 else resumes[::-1]:  # alternate who goes first
                r.setdefault(name, []).append(fn())
            print(f"round {round_ + 1}/{args.repeat} on {store.name} done", flush=True)
    loads.append(os.getloadavg()[0])
    text = render(args, trainer, rows, incremental, unit_stall, unit_stall_async)
    text += f"\n\n1-minute load average of the machine: {loads[0]:.1f} when the rounds began, {loads[1]:.1f} at the end."
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    tq.close()
    ray.shutdown()
    server.stop()
    return 0


def make_stores(server: Any, disk: Path) -> list[Store]:
    """Local disk and SeaweedFS, each with the plain DCP writers the job snapshot is compared with."""
    s3_url, s3_options = server.make_bucket("job")
    s3_root, _ = server.make_bucket("")
    fs_kwargs = {
        "key": server.access_key,
        "secret": server.secret_key,
        "client_kwargs": {"endpoint_url": server.endpoint_url, "region_name": "us-east-1"},
    }
    return [
        Store(
            "local disk",
            str(disk / "repo"),
            {},
            {
                "FileSystemWriter": lambda: FileSystemWriter(disk / "dcp" / uuid.uuid4().hex),
                "tqsnap.dcp.Writer (full)": lambda: tqsnap.dcp.Writer(
                    str(disk / "plain"), stream="dcp", parent=None
                ),
            },
        ),
        Store(
            "S3 (SeaweedFS)",
            s3_url,
            s3_options,
            {
                "FsspecWriter": lambda: FsspecWriter(
                    f"{s3_root}/{uuid.uuid4().hex}", sync_files=False, thread_count=8, **fs_kwargs
                ),
                "tqsnap.dcp.Writer (full)": lambda: tqsnap.dcp.Writer(
                    s3_url, stream="plain-dcp", storage_options=s3_options, parent=None
                ),
            },
        ),
    ]


def render(
    args: Any,
    trainer: Trainer,
    rows: dict[str, dict[str, list[float]]],
    incremental: dict[str, Any],
    unit_stall: dict[str, list[float]],
    unit_stall_async: dict[str, list[float]],
) -> str:
    lines = [
        f"trainer state {trainer.nbytes() / MiB:.1f} MiB (frozen base {args.base_mib} MiB), TransferQueue "
        f"with 3 units; {args.repeat} rounds, medians; {platform.machine()}, {os.cpu_count()} CPUs shared "
        "with other work running at the same time",
        "",
        "| store | training stall of | seconds (median) | every round |",
        "|---|---|---:|---|",
    ]
    for store, r in rows.items():
        for what, vals in r.items():
            every = ", ".join(f"{v:.3f}" for v in vals)
            lines.append(f"| {store} | {what} | {statistics.median(vals):.3f} | {every} |")
    lines.append("")
    for store, r in rows.items():
        med = {k: statistics.median(v) for k, v in r.items()}
        job, job_async = med[JOB], med[JOB_ASYNC]
        saves = {k: v for k, v in med.items() if not k.startswith(("job", "resume", "("))}
        fastest_name = min(saves, key=saves.__getitem__)
        fastest = saves[fastest_name]
        resume = med[RESUME_JOB_CALL]
        lines.append(
            f"- {store}: the asynchronous job snapshot stalls training {job_async:.3f}s: "
            f"{job_async / fastest:.2f}x the fastest separate save ({fastest_name}, {fastest:.3f}s; goal <= 1.10x: "
            f"{'met' if job_async <= 1.1 * fastest else 'NOT met'}); its commit lands {med[JOB_ASYNC_COMMITTED]:.3f}s "
            f"after the snapshot began. Begun while the step computes, it stalls {med[JOB_ASYNC_AHEAD]:.3f}s "
            f"({med[JOB_ASYNC_AHEAD] / fastest:.2f}x; goal: {'met' if med[JOB_ASYNC_AHEAD] <= 1.1 * fastest else 'NOT met'}). "
            f"The blocking job snapshot stalls {job:.3f}s ({job / fastest:.2f}x), "
            f"{job / med[BESIDE]:.2f}x the three separate snapshots taken the same way ({med[BESIDE]:.3f}s). "
            f"Resume {med[RESUME_JOB_CALL]:.3f}s from the job snapshot with tqsnap.job.restore "
            f"({med[RESUME_JOB]:.3f}s part by part) vs {med[RESUME_SEPARATE]:.3f}s from separate ones "
            f"(goal no slower: {'met' if resume <= med[RESUME_SEPARATE] else 'NOT met'}). "
            f"Queue unit stall (slowest unit, median): {statistics.median(unit_stall[store]) * 1e3:.1f}ms in the "
            f"job snapshot, {statistics.median(unit_stall_async[store]) * 1e3:.1f}ms in the asynchronous one."
        )
    lines += [
        "",
        f"Bytes per part of the last incremental job snapshot, after {args.steps} training steps and "
        f"{args.steps} new rollout steps:",
        "",
        "| store | part | new bytes | stored (uploaded) | reused bytes |",
        "|---|---|---:|---:|---:|",
    ]
    for store, parts in incremental.items():
        for name, st in parts.items():
            lines.append(
                f"| {store} | {name} | {st.get('new_bytes', 0):,} | {st.get('stored_bytes', 0):,} "
                f"| {st.get('reused_bytes', 0):,} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
