"""The demo: an RL training job snapshotted whole, killed, and resumed elsewhere bit-exact.

Run ``tqsnap demo`` (or ``python -m tqsnap.faces.demo``). It starts a local Ray cluster, a
TransferQueue with 3 storage units, a rollout worker that runs ahead of training, and a small
reward model trained with DDP on 2 gloo ranks (Ray actors) that read their batches from the
queue. Every ``--every`` seconds, at a step boundary, it takes ONE job snapshot into
``--repo`` (default ``./tqsnap-demo``): the trainer's model and Adam state through
``tqsnap.dcp.Writer(stage=...)`` on both ranks, the live queue through ``tqsnap.tq.stage``, and
the loop state (step, RNG states, prompt sampler position, rollouts in flight), committed
together by ``tqsnap.job``.

After ``--duration`` seconds it trains ``COMPARE_STEPS`` more steps without snapshots,
recording the model and optimizer after each step and the queue after the last, and then
SIGKILLs the trainer ranks and the TransferQueue's actors in the middle of a step. It restores
the latest job snapshot into a fresh job with 1 trainer rank and 2 storage units, resumes, and
checks that the resumed run is the uninterrupted run: model and optimizer bit-exact after every
step up to the last one the killed job finished, and the queue (every key's values, tags and
consumption) equal there. Exit code 0 means all of it was equal.

What is deterministic, and why the checks can demand bits: rollouts are pure functions of
their requests (prompts from the sampler, a seed from the driver's RNG); the trainer reads a
step's batch by key once all of it is there, shuffled by the driver's RNG; dropout is seeded
per microbatch from the driver's torch generator; and the global batch is 2 microbatches that
DDP averages exactly the same way on 1 rank as on 2 (``demo_trainer``). Not deterministic, and
not compared: timings, when puts land, and the queue's global indexes and unit placement.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from typing import Any

from .demo_cluster import forget_transferqueue, init_transferqueue, sigkill, start_ray, transferqueue_pids
from .demo_job import DemoJob, JobTarget
from .demo_report import Verification, summary
from .demo_workload import diff_digests, queue_digest

DEFAULT_REPO = "./tqsnap-demo"
SOURCE_RANKS, SOURCE_UNITS = 2, 3
TARGET_RANKS, TARGET_UNITS = 1, 2
COMPARE_STEPS = 3
MIN_SNAPSHOTS = 2  # the second one shows what an incremental job snapshot uploads

log = logging.getLogger("tqsnap.demo")


def _say(msg: str) -> None:
    print(msg, flush=True)


def run_original(target: JobTarget, duration: float, every: float) -> tuple[DemoJob, dict[str, Any], int]:
    """The job that gets killed: train with periodic job snapshots, then past the last one.

    Returns the job, its queue digest at the last step it finished, and the seq of its last
    snapshot (the one the restore must take).
    """
    import tqsnap.job

    tq = init_transferqueue(SOURCE_UNITS)
    job = DemoJob.fresh(target, tq, SOURCE_RANKS)
    _say(
        f"training on {SOURCE_RANKS} DDP ranks from a TransferQueue with {SOURCE_UNITS} units for "
        f"{duration:.0f}s; a job snapshot every {every:g}s into {target.repo} (stream {target.stream})"
    )
    deadline = time.monotonic() + duration
    next_snapshot = time.monotonic() + every
    while True:
        job.train_step()
        now = time.monotonic()
        if now >= next_snapshot or (now >= deadline and len(job.snapshots) < MIN_SNAPSHOTS):
            rec = job.snapshot()
            parts = ", ".join(f"{n} {p.new_bytes} B new" for n, p in rec.parts.items())
            _say(
                f"  {rec.snapshot}: step {rec.step}, {parts}; training stalled {rec.training_stall_s * 1e3:.0f}ms"
            )
            next_snapshot = time.monotonic() + every
        if now >= deadline and len(job.snapshots) >= MIN_SNAPSHOTS:
            break
    seq = tqsnap.job.resolve(target.repo, target.stream, "latest", storage_options=target.storage_options)
    for _ in range(COMPARE_STEPS):
        job.train_step()
    job.worker.drain()
    digest = queue_digest(tq.get_client(), tq)
    return job, digest, seq


def kill_mid_step(job: DemoJob) -> list[int]:
    """Send the ranks into the next training step, then SIGKILL them and the queue's actors."""
    import ray

    ranks = job.pids()
    queue = transferqueue_pids()
    in_flight = job.start_step()  # the next step's batch is consumed and the ranks are training
    job.stop_worker()
    sigkill(ranks + queue)
    del in_flight
    for r in job.ranks:
        ray.kill(r)
    return ranks + queue


def run_demo(repo: str, duration: float, every: float, storage_options: dict[str, Any] | None = None) -> int:
    """Run the demo; return the process exit code (0: the resumed job was verified equal)."""
    stream = f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    target = JobTarget(repo, stream, storage_options)
    _say(f"starting Ray, a TransferQueue with {SOURCE_UNITS} units and {SOURCE_RANKS} trainer ranks ...")
    ray = start_ray()
    original, expected_queue, seq = run_original(target, duration, every)
    killed_at = original.step
    pids = kill_mid_step(original)
    _say(
        f"killed the job at step {killed_at}: SIGKILL to {len(pids)} processes (trainer ranks and queue actors)"
    )
    forget_transferqueue(ray)

    restored_name = f"{stream}@{seq}"
    _say(
        f"restoring {restored_name} into a fresh job with {TARGET_RANKS} trainer rank and {TARGET_UNITS} units ..."
    )
    tq = init_transferqueue(TARGET_UNITS)
    job, times = DemoJob.restored(target, tq, TARGET_RANKS, seq)
    first = job.step + 1
    check = Verification(first, killed_at)
    while job.step < killed_at:
        job.train_step()
        want, got = original.digests[job.step], job.digests[job.step]
        check.model_diffs += [
            f"step {job.step}: {k} differs" for k in sorted(set(want) | set(got)) if want.get(k) != got.get(k)
        ][:5]
    job.worker.drain()
    resumed_queue = queue_digest(tq.get_client(), tq)
    check.queue_diffs = diff_digests(expected_queue, resumed_queue)
    check.queue_keys = sum(len(v) for v in resumed_queue.values())
    job.stop_worker()
    tq.close()
    shape = {
        "ranks": SOURCE_RANKS,
        "units": SOURCE_UNITS,
        "new_ranks": TARGET_RANKS,
        "new_units": TARGET_UNITS,
        "steps": killed_at,
        "produced": original.worker.produced,
        "killed_at": killed_at,
    }
    _say("")
    _say(summary(original.snapshots, restored_name, times, shape, check))
    return 0 if check.ok else 1


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="tqsnap demo", description=__doc__.splitlines()[0])
    p.add_argument("--repo", default=DEFAULT_REPO, help="repository URL (default: %(default)s)")
    p.add_argument("--endpoint-url", help="S3 endpoint for an s3:// repo (default: $AWS_ENDPOINT_URL or AWS)")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of training (default: %(default)s)")
    p.add_argument(
        "--every", type=float, default=5.0, help="seconds between job snapshots (default: %(default)s)"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    options = {"endpoint_url": args.endpoint_url} if args.endpoint_url else None
    return run_demo(args.repo, args.duration, args.every, options)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
