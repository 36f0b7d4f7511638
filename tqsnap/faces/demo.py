"""The demo job: a live TransferQueue under an RL-like load, snapshotted, then restored elsewhere.

Run ``tqsnap demo`` (or ``python -m tqsnap.faces.demo``). It starts a local Ray cluster and a
TransferQueue with 3 storage units, runs a rollout producer and two consumers (dense, jagged
and string fields, tags, KV keys, clears), and takes a snapshot every ``--every`` seconds into
``--repo`` (default ``./tqsnap-demo``). At the end it stops the load, takes a last snapshot,
shuts that TransferQueue down, starts a fresh one with 2 units, restores the latest snapshot
into it, checks that the two states are equal and that the trainer carries on, and prints a
summary. Exit code 0 means the restore was verified equal.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from .cli_common import fmt_bytes as _fmt_bytes
from .cli_common import table

DEFAULT_REPO = "./tqsnap-demo"
SOURCE_UNITS, TARGET_UNITS = 3, 2
BATCH = 16
PROMPTS = 2048
KEEP_BATCHES = 40
FIELDS = ["prompt_ids", "response_ids", "logprobs", "text"]

log = logging.getLogger("tqsnap.demo")


def _start_ray() -> Any:
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # ZMQ on loopback
    os.environ.setdefault("TQ_NUM_THREADS", str(min(8, os.cpu_count() or 1)))
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=max(SOURCE_UNITS, TARGET_UNITS) + 2,
            _node_ip_address="127.0.0.1",
            include_dashboard=False,
            logging_level="ERROR",
            log_to_driver=False,
        )
    logging.getLogger("transfer_queue").setLevel(logging.ERROR)
    return ray


def wait_transferqueue_closed(ray: Any, timeout: float = 60.0) -> None:
    """``tq.close()`` kills actors asynchronously; their names must be free before the next init."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        names = [a.get("name", "") for a in ray.util.list_named_actors(all_namespaces=True)]
        if not any(n.startswith("TransferQueue") for n in names):
            return
        time.sleep(0.2)


def init_transferqueue(units: int) -> Any:
    """``tq.init`` with ``units`` SimpleStorage units; polling mode, so an empty get returns at once."""
    import transfer_queue as tq
    from omegaconf import OmegaConf

    tq.init(
        OmegaConf.create(
            {
                "controller": {"polling_mode": True},
                "backend": {"SimpleStorage": {"num_data_storage_units": units}},
            }
        )
    )
    return tq


class Workload:
    """Rollouts in, training batches out: the traffic of an RL post-training loop."""

    def __init__(self, tq: Any, seed: int = 0) -> None:
        self.tq = tq
        self.client = tq.get_client()
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.produced = self.trained = self.cleared = 0
        self._threads: list[threading.Thread] = []

    def load_prompts(self, count: int = PROMPTS) -> None:
        """The static prompt set: the same blocks every snapshot, so they dedup."""
        import torch
        from tensordict import TensorDict
        from tensordict.tensorclass import NonTensorStack

        for start in range(0, count, 256):
            ids = list(range(start, min(count, start + 256)))
            fields = TensorDict(
                {
                    "prompt_ids": torch.randint(
                        0, 32000, (len(ids), 64), generator=torch.Generator().manual_seed(start)
                    ),
                    "prompt_text": NonTensorStack(*[f"question {i}: what is {i} * {i + 7}?" for i in ids]),
                },
                batch_size=len(ids),
            )
            tags = [{"source": "synthetic-math", "difficulty": i % 5} for i in ids]
            self.tq.kv_batch_put(
                keys=[f"prompt-{i}" for i in ids], partition_id="prompts", fields=fields, tags=tags
            )

    def _rollouts(self) -> None:
        """Four samples per prompt, responses of random length, rewards as tags."""
        import torch
        from tensordict import TensorDict
        from tensordict.tensorclass import NonTensorStack

        step = 0
        while not self.stop.is_set():
            keys = [f"step{step}-p{i // 4}-s{i % 4}" for i in range(BATCH)]
            lengths = [self.rng.randint(8, 192) for _ in keys]
            fields = TensorDict(
                {
                    "prompt_ids": torch.randint(0, 32000, (BATCH, 64)),
                    "response_ids": torch.nested.as_nested_tensor(
                        [torch.randint(0, 32000, (n,)) for n in lengths], layout=torch.jagged
                    ),
                    "logprobs": torch.nested.as_nested_tensor(
                        [-torch.rand(n) for n in lengths], layout=torch.jagged
                    ),
                    "text": NonTensorStack(
                        *[f"{k}: a response of {n} tokens" for k, n in zip(keys, lengths, strict=True)]
                    ),
                },
                batch_size=BATCH,
            )
            tags = [{"step": step, "reward": round(self.rng.random(), 4), "len": n} for n in lengths]
            self.tq.kv_batch_put(keys=keys, partition_id="rollout", fields=fields, tags=tags)
            self.produced += BATCH
            step += 1
            self.stop.wait(0.1)

    def _trainer(self) -> None:
        """Slightly slower than the rollouts, so a backlog builds; keeps a window of old batches."""
        done: deque[Any] = deque()
        while not self.stop.is_set():
            meta = self.client.get_meta(
                data_fields=FIELDS, batch_size=BATCH, partition_id="rollout", task_name="actor"
            )
            if meta.size == 0:
                self.stop.wait(0.05)
                continue
            self.client.get_data(meta)
            self.trained += meta.size
            done.append(meta)
            if len(done) > KEEP_BATCHES:
                old = done.popleft()
                self.client.clear_samples(old)
                self.cleared += old.size
            self.stop.wait(0.12)

    def _reference(self) -> None:
        while not self.stop.is_set():
            meta = self.client.get_meta(
                data_fields=["prompt_ids", "response_ids"],
                batch_size=8,
                partition_id="rollout",
                task_name="ref",
            )
            if meta.size:
                try:
                    self.client.get_data(meta)
                except Exception:  # noqa: BLE001 - the trainer may clear a batch under us
                    pass
            self.stop.wait(0.1)

    def _guarded(self, fn: Any) -> Any:
        def run() -> None:
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001 - reported at the end
                self.errors.append(exc)
                self.stop.set()

        return run

    def start(self) -> None:
        for fn in (self._rollouts, self._trainer, self._reference):
            t = threading.Thread(target=self._guarded(fn), name=f"demo-{fn.__name__}", daemon=True)
            t.start()
            self._threads.append(t)

    def halt(self) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(30)


def _summary(results: list[Any], restore: Any, diffs: list[str], extra: dict[str, Any]) -> str:
    rows = []
    for r in results:
        d = r.detail
        rows.append(
            [
                str(r.info.id),
                d.samples,
                _fmt_bytes(r.new_bytes),
                _fmt_bytes(r.stored_bytes),
                _fmt_bytes(r.reused_bytes),
                f"{r.reused_fraction:.0%}",
                f"{r.duration_s:.2f}s",
                f"{max(d.unit_stall_s, default=0) * 1e3:.2f}ms",
            ]
        )
    new = sum(r.new_bytes for r in results)
    stored = sum(r.stored_bytes for r in results)
    reused = sum(r.reused_bytes for r in results)
    lines = [
        table(["snapshot", "samples", "new", "uploaded", "reused", "reused %", "took", "unit stall"], rows),
        "",
        f"snapshots: {len(results)}, new {_fmt_bytes(new)} ({_fmt_bytes(stored)} uploaded after compression), "
        f"reused {_fmt_bytes(reused)}, "
        f"reused fraction {reused / (new + reused) if new + reused else 1:.0%}",
        f"workload: {extra['produced']} samples produced, {extra['trained']} trained, {extra['cleared']} cleared",
        f"restore: {restore.snapshot} ({restore.source_units} units) -> fresh TransferQueue with {restore.units} "
        f"units: {restore.samples} samples, {_fmt_bytes(restore.bytes)} in {restore.total_s:.2f}s "
        f"(validate {restore.validate_s:.2f}s, stage {restore.stage_s:.2f}s, install {restore.install_s:.3f}s)",
        f"after restore the trainer resumed with {extra['resumed']} unconsumed samples",
        "verification: " + ("EQUAL (controller state and every value)" if not diffs else "DIFFERENT"),
    ]
    lines += [f"  - {d}" for d in diffs]
    return "\n".join(lines)


def run_demo(repo: str, duration: float, every: float, storage_options: dict[str, Any] | None = None) -> int:
    """Run the demo job; return the process exit code."""
    from ..adapters.transferqueue import TransferQueueSystem, restore_system
    from ..adapters.transferqueue.inspection import diff_states, dump_system
    from .api import open_repo
    from .scheduler import Snapshotter

    stream = f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    print(f"starting Ray and a TransferQueue with {SOURCE_UNITS} storage units ...", flush=True)
    ray = _start_ray()
    tq = init_transferqueue(SOURCE_UNITS)
    work = Workload(tq)
    work.load_prompts()
    work.start()
    print(
        f"running the workload for {duration:.0f}s, snapshot every {every:g}s into {repo} (stream {stream})",
        flush=True,
    )
    snap = Snapshotter(tq, repo, stream=stream, every=every, storage_options=storage_options)
    deadline = time.monotonic() + duration
    shown: set[str] = set()

    def show_new() -> None:
        for r in list(snap.results):
            if str(r.info.id) not in shown:
                shown.add(str(r.info.id))
                print(
                    f"  {r.info.id}: {r.detail.samples} samples, {_fmt_bytes(r.new_bytes)} new, "
                    f"{_fmt_bytes(r.reused_bytes)} reused",
                    flush=True,
                )

    while time.monotonic() < deadline and not work.errors:
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
        show_new()
    work.halt()
    snap.stop(final_snapshot=True)
    show_new()  # the last periodic one and the final one, taken after the workload stopped
    if work.errors:
        print(f"workload failed: {work.errors[0]!r}", file=sys.stderr)
        return 2
    results = list(snap.results)
    if not results:
        print(f"no snapshot succeeded: {snap.last_error!r}", file=sys.stderr)
        return 2
    source = dump_system(TransferQueueSystem.attached())
    tq.close()
    wait_transferqueue_closed(ray)

    print(
        f"restoring {results[-1].info.id} into a fresh TransferQueue with {TARGET_UNITS} units ...",
        flush=True,
    )
    tq = init_transferqueue(TARGET_UNITS)
    target = TransferQueueSystem.attached()
    restored = restore_system(target, open_repo(repo, storage_options=storage_options), stream)
    diffs = diff_states(source, dump_system(target))
    resumed = 0
    client = tq.get_client()
    while True:
        meta = client.get_meta(
            data_fields=FIELDS, batch_size=BATCH, partition_id="rollout", task_name="actor"
        )
        if meta.size == 0:
            break
        client.get_data(meta)
        resumed += meta.size
    tq.close()
    extra = {
        "produced": work.produced + PROMPTS,
        "trained": work.trained,
        "cleared": work.cleared,
        "resumed": resumed,
    }
    print()
    print(_summary(results, restored, diffs, extra))
    return 0 if not diffs else 1


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="tqsnap demo", description=__doc__.splitlines()[0])
    p.add_argument("--repo", default=DEFAULT_REPO, help="repository URL (default: %(default)s)")
    p.add_argument("--endpoint-url", help="S3 endpoint for an s3:// repo (default: $AWS_ENDPOINT_URL or AWS)")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of workload (default: %(default)s)")
    p.add_argument(
        "--every", type=float, default=5.0, help="seconds between snapshots (default: %(default)s)"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    options = {"endpoint_url": args.endpoint_url} if args.endpoint_url else None
    return run_demo(args.repo, args.duration, args.every, options)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
