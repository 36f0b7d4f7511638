"""The demo's training job: the driver loop, its loop state, and its whole-job snapshots.

A :class:`DemoJob` is what a single-controller RL framework runs on its driver: it asks the
rollout worker for rollouts ``LAG`` steps ahead, waits until step ``t``'s partition is
complete, marks it consumed by the trainer (``get_meta``), hands each trainer rank the keys
of its microbatches, and clears partitions older than ``KEEP`` steps.

Its loop state is everything the driver holds that a restart needs: the step, the prompt
sampler's position, the driver's RNG states (Python's, for the batch shuffle and rollout
seeds; a torch generator, for dropout seeds) and the rollout requests not yet trained on. A
job snapshot (:meth:`DemoJob.snapshot`) saves it beside the trainer and the queue as ONE
snapshot: the ranks stage their DCP shards, the queue stages its units' shards, and the
driver commits one manifest (``tqsnap.job``). A job built by :meth:`DemoJob.restored` from any
such snapshot continues exactly where the snapshot was taken.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from .demo_trainer import MICROBATCHES, start_ranks
from .demo_workload import (
    FIELDS,
    PROMPTS_PER_STEP,
    STEP_SAMPLES,
    TRAIN_TASK,
    PromptSampler,
    RolloutRequest,
    RolloutWorker,
    load_prompts,
    partition,
)

log = logging.getLogger("tqsnap.demo")

LAG = 3  # rollouts are requested this many steps ahead of training
KEEP = 4  # partitions of the last KEEP trained steps stay in the queue
PART_NAMES = ("trainer", "queue", "loop")


@dataclass
class PartRecord:
    """One part of one job snapshot: bytes uploaded and reused, and how long it blocked its owner."""

    new_bytes: int
    reused_bytes: int
    stall_s: float


@dataclass
class SnapshotRecord:
    """One committed job snapshot, as the summary reports it."""

    snapshot: str
    step: int
    parts: dict[str, PartRecord]
    training_stall_s: float


@dataclass
class JobTarget:
    """Where the job snapshots go."""

    repo: str
    stream: str
    storage_options: dict[str, Any] | None = None


@dataclass
class DemoJob:
    """The driver of one running job (its trainer ranks, its queue, its rollout worker)."""

    target: JobTarget
    tq: Any
    ranks: list[Any]
    worker: RolloutWorker
    step: int = 0
    sampler: PromptSampler = field(default_factory=PromptSampler)
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    gen: Any = None
    inflight: dict[int, RolloutRequest] = field(default_factory=dict)
    digests: dict[int, dict[str, str]] = field(default_factory=dict)
    snapshots: list[SnapshotRecord] = field(default_factory=list)

    # --- building ----------------------------------------------------------------------------

    @classmethod
    def fresh(cls, target: JobTarget, tq: Any, world: int) -> DemoJob:
        """A new job on a fresh queue: the prompt set, trainer ranks at step 0."""
        import torch

        load_prompts(tq)
        job = cls(target, tq, start_ranks(world), RolloutWorker(tq), gen=torch.Generator().manual_seed(0))
        return job

    @classmethod
    def restored(
        cls, target: JobTarget, tq: Any, world: int, snapshot: int
    ) -> tuple[DemoJob, dict[str, float]]:
        """A job rebuilt from job snapshot ``snapshot`` on a fresh, empty queue with ``world`` ranks.

        Restores the queue (any unit count), then the trainer (any rank count) and the loop
        state, and replays the rollout requests the snapshot had in flight. Returns the job and
        the seconds each part took.
        """

        from .. import load
        from .. import tq as tqsnap_tq

        opts = target.storage_options
        times: dict[str, float] = {}
        t0 = time.perf_counter()
        tqsnap_tq.restore(
            target.repo, stream=target.stream, snapshot=snapshot, part="queue", storage_options=opts
        )
        times["queue"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        ranks = start_ranks(world)
        times["start_ranks"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        import ray

        ray.get([r.load.remote(target.repo, target.stream, snapshot, "trainer", opts) for r in ranks])
        times["trainer"] = time.perf_counter() - t2
        t3 = time.perf_counter()
        loop = load(target.repo, stream=target.stream, snapshot=snapshot, part="loop", storage_options=opts)
        times["loop"] = time.perf_counter() - t3
        job = cls(target, tq, ranks, RolloutWorker(tq))
        job._set_loop_state(loop)
        for p in sorted(job.inflight):  # puts the same keys and values again: harmless if they landed
            job.worker.submit(job.inflight[p])
        times["total"] = time.perf_counter() - t0
        times["parts"] = times["queue"] + times["trainer"] + times["loop"]
        return job, times

    # --- loop state --------------------------------------------------------------------------

    def loop_state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "sampler": self.sampler.state_dict(),
            "rng": {"python": self.rng.getstate(), "torch": self.gen.get_state()},
            "rollouts": [self.inflight[p].to_state() for p in sorted(self.inflight)],
        }

    def _set_loop_state(self, state: dict[str, Any]) -> None:
        import torch

        self.step = int(state["step"])
        self.sampler = PromptSampler(**{k: int(v) for k, v in state["sampler"].items()})
        self.rng = random.Random()
        version, internal, gauss = state["rng"]["python"]
        self.rng.setstate((version, tuple(internal), gauss))
        self.gen = torch.Generator()
        self.gen.set_state(state["rng"]["torch"])
        self.inflight = {r.step: r for r in (RolloutRequest.from_state(s) for s in state["rollouts"])}

    # --- the loop ----------------------------------------------------------------------------

    def _request_ahead(self) -> None:
        ahead = max([self.step, *self.inflight])
        while ahead < self.step + LAG:
            ahead += 1
            req = RolloutRequest(ahead, tuple(self.sampler.next(PROMPTS_PER_STEP)), self.rng.randrange(2**31))
            self.inflight[ahead] = req
            self.worker.submit(req)

    def start_step(self, timeout: float = 120.0) -> list[Any]:
        """The driver's half of step ``self.step + 1``: wait for its partition, send the ranks to work.

        Returns the ranks' pending results; :meth:`train_step` waits for them.
        """
        import torch

        self._request_ahead()
        t = self.step + 1
        part = partition(t)
        client = self.tq.get_client()
        deadline = time.monotonic() + timeout
        while True:  # polling mode: empty until the whole step's partition is there
            meta = client.get_meta(
                data_fields=FIELDS, batch_size=STEP_SAMPLES, partition_id=part, task_name=TRAIN_TASK
            )
            if meta.size:
                break
            if self.worker.errors:
                raise RuntimeError("the rollout worker failed") from self.worker.errors[0]
            if time.monotonic() > deadline:
                raise TimeoutError(f"partition {part} was not complete after {timeout:.0f}s")
            time.sleep(0.02)
        keys = self.inflight.pop(t).keys()
        self.rng.shuffle(keys)
        size = len(keys) // MICROBATCHES
        microbatches = [keys[i * size : (i + 1) * size] for i in range(MICROBATCHES)]
        seed = int(torch.randint(0, 2**31, (1,), generator=self.gen))
        return [r.train_step.remote(part, microbatches, seed) for r in self.ranks]

    def train_step(self, timeout: float = 120.0) -> None:
        """Train step ``self.step + 1`` on all ranks; record the model/optimizer digests after it."""
        import ray

        ray.get(self.start_step(timeout), timeout=timeout)
        t = self.step + 1
        if t > KEEP:
            self.tq.get_client().clear_partition(partition(t - KEEP))
        self.step = t
        digests = ray.get([r.digests.remote() for r in self.ranks], timeout=timeout)
        if any(d != digests[0] for d in digests[1:]):
            raise AssertionError(f"step {t}: the DDP replicas differ")
        self.digests[t] = digests[0]

    # --- snapshots ---------------------------------------------------------------------------

    def snapshot(self) -> SnapshotRecord:
        """One job snapshot at this step boundary: trainer, queue and loop state in one commit.

        The ranks save with DCP and the queue stages at the same time (the queue's controller
        is captured first, while the loop is stopped, so its consumption status is this
        step's). Training is blocked until both have staged and the manifest is committed.
        """
        import ray

        import tqsnap.job

        from .. import tq as tqsnap_tq

        t0 = time.perf_counter()
        tgt = self.target
        job = tqsnap.job.begin(tgt.repo, stream=tgt.stream, storage_options=tgt.storage_options)
        saves = [r.save.remote(tgt.repo, tgt.stream, job.token, tgt.storage_options) for r in self.ranks]
        queue: dict[str, Any] = {}

        def stage_queue() -> None:
            try:
                queue["staged"] = tqsnap_tq.stage(job, part="queue")
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                queue["error"] = exc

        thread = threading.Thread(target=stage_queue, name="demo-stage-queue")
        thread.start()
        results = ray.get(saves, timeout=300)
        thread.join(300)
        if "error" in queue:
            job.abort()
            raise queue["error"]
        staged = next(r["staged"] for r in results if r["staged"] is not None)
        job.add("trainer", staged)
        job.add("queue", queue["staged"])
        t_loop = time.perf_counter()
        loop_part = job.add("loop", self.loop_state())
        loop_s = time.perf_counter() - t_loop
        info = job.commit(metadata={"step": self.step})
        total = time.perf_counter() - t0
        parts = {
            "trainer": _part_record(staged, max(r["stall_s"] for r in results)),
            "queue": _part_record(queue["staged"], _queue_stall(queue["staged"])),
            "loop": _part_record(loop_part, loop_s),
        }
        rec = SnapshotRecord(f"{info.stream}@{info.seq}", self.step, parts, total)
        self.snapshots.append(rec)
        return rec

    # --- the end -----------------------------------------------------------------------------

    def pids(self) -> list[int]:
        import ray

        return ray.get([r.pid.remote() for r in self.ranks])

    def stop_worker(self) -> None:
        self.worker.stop()


def _part_record(staged: Any, stall_s: float) -> PartRecord:
    stats = staged.stats
    return PartRecord(int(stats.get("new_bytes", 0)), int(stats.get("reused_bytes", 0)), stall_s)


def _queue_stall(staged: Any) -> float:
    """The longest a storage unit (or the controller) was blocked by the queue's capture."""
    stats = staged.stats
    units = stats.get("tq_unit_stall_s") or [0.0]
    return max([float(stats.get("tq_controller_stall_s", 0.0)), *(float(u) for u in units)])
