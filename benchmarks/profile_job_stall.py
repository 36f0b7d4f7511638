"""Where an asynchronous job snapshot's stall goes, call by call, on local disk.

    python benchmarks/profile_job_stall.py --rounds 8

One process with the state and TransferQueue of bench_job.py (a 47 MiB trainer state, 3
storage units on a local Ray cluster) takes ``--rounds`` asynchronous job snapshots, timing
each call the training loop waits for, and after each one a plain ``dcp.async_save`` with
``tqsnap.dcp.Writer`` of the same state, alternating so both see the same load. Medians skip
the first two rounds (start-up).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_job as b  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.distributed.checkpoint as dcp  # noqa: E402

import tqsnap  # noqa: E402
import tqsnap.dcp  # noqa: E402
import tqsnap.job  # noqa: E402
import tqsnap.tq  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=8)
    args = ap.parse_args()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(b.free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="profile-job-"))
    b.start_ray()
    tq = b.init_transferqueue(3)
    b.load_prompts(tq)
    for i in range(8):
        b.rollout(tq, b.RolloutRequest(i + 1, (1, 2, 3, 4), i + 1))
    trainer = b.Trainer(32, 1024)
    repo = tqsnap.open_repo(str(tmp / "repo"), create=True)
    system = tqsnap.tq.TransferQueueSystem.attached()
    times: dict[str, list[float]] = {}

    @contextlib.contextmanager
    def clock(name: str) -> Iterator[None]:
        t = time.perf_counter()
        yield
        times.setdefault(name, []).append(time.perf_counter() - t)

    for step in range(args.rounds):
        loop = {"step": step, "rng": torch.get_rng_state()}
        with clock("STALL: async job snapshot"):
            with clock("tqsnap.job.begin"):
                job = tqsnap.job.begin(repo, stream="s")
            with clock("tqsnap.tq.capture(wait=False)"):
                queue = tqsnap.tq.capture(job, system=system, wait=False)
            with clock("tqsnap.dcp.Writer(stage=...)"):
                writer = tqsnap.dcp.Writer(repo, stream="s", stage=job.token)
            with clock("trainer.state()"):
                state = trainer.state()
            with clock("dcp.async_save"):
                saving = dcp.async_save(state, storage_writer=writer)
            with clock("queue capture .wait()"):
                queue.wait()
            with clock("add_async trainer + queue"):
                job.add_async("trainer", saving, writer=writer)
                job.add_async("queue", queue)
            with clock("add_async loop (copy)"):
                job.add_async("loop", loop)
            with clock("commit_async"):
                done = job.commit_async(metadata={"step": step})
        done.result()
        plain = tqsnap.dcp.Writer(str(tmp / "plain"), stream="dcp", parent=None)
        t0 = time.perf_counter()
        future = dcp.async_save(trainer.state(), storage_writer=plain)
        times.setdefault("STALL: dcp.async_save, tqsnap.dcp.Writer, trainer only", []).append(time.perf_counter() - t0)
        future.result()
    print(f"| call | median ms (rounds 3-{args.rounds}) |\n|---|---:|")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values[2:]) * 1e3:.1f} |")


if __name__ == "__main__":
    main()
