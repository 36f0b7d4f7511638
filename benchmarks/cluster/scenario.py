"""The drivers of the end-to-end run; each runs on a cluster's head host, inside its namespace.

``source``: joins cluster A, starts a TransferQueue whose units Ray places on the worker
hosts, runs the RL workload of ``tqsnap demo`` (rollouts in, training batches out, clears)
with periodic snapshots to region X, stops the load, takes a last snapshot, and writes the
TransferQueue's whole state (``dump.pkl``) and what it did (``source.json``).

``restore``: joins cluster B (other hosts, another unit count), restores the latest
snapshot from region Y, compares the state with the source's dump, lets the trainer drain
what was left unconsumed, and writes ``restore.json``.

Both write JSON only; the orchestrator (:mod:`e2e`) makes the assertions. The dump is a
pickle of this run's own objects, read back by this run only.
"""

from __future__ import annotations

import argparse
import json
import logging
import pickle
import sys
import time
from pathlib import Path
from typing import Any

from .raynodes import STORAGE_RESOURCE

log = logging.getLogger("tqsnap.cluster")
STREAM = "rl"


def _say(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


def connect(address: str, nodes: int, timeout: float = 120.0) -> Any:
    """Join the cluster as its driver and wait (bounded) until ``nodes`` nodes are alive."""
    import ray

    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [n for n in ray.nodes() if n.get("Alive")]
        if len(alive) >= nodes:
            return ray
        time.sleep(0.5)
    raise RuntimeError(f"only {len(alive)} of {nodes} Ray nodes alive after {timeout:.0f}s")


def init_transferqueue(units: int) -> Any:
    """``tq.init`` as the demo does, with units only on hosts that offer the storage resource."""
    import transfer_queue as tq
    from omegaconf import OmegaConf

    tq.init(
        OmegaConf.create(
            {
                "controller": {"polling_mode": True},
                "backend": {
                    "SimpleStorage": {
                        "num_data_storage_units": units,
                        "required_node_resource": STORAGE_RESOURCE,
                    }
                },
            }
        )
    )
    return tq


def _node_ip(_self: Any) -> str:
    import ray

    return ray.util.get_node_ip_address()


def unit_addresses(system: Any) -> list[str]:
    """The address of the host each storage unit runs on, in unit order."""
    import ray

    return ray.get([u.__ray_call__.remote(_node_ip) for u in system.units])


def _options(a: argparse.Namespace) -> dict[str, str]:
    return {"endpoint_url": a.endpoint_url, "aws_access_key_id": a.key, "aws_secret_access_key": a.secret}


def load_features(tq: Any, mib: float) -> int:
    """A static partition of float32 rows (64 KiB each, like a response's hidden states),
    ``mib`` MiB in all: the bulk of the sample data, so the bytes each host uploads show where
    sample data goes. Returns the rows."""
    import torch
    from tensordict import TensorDict

    rows = int(mib * 16)
    for start in range(0, rows, 64):
        n = min(64, rows - start)
        g = torch.Generator().manual_seed(start)
        fields = TensorDict({"features": torch.randn(n, 16384, generator=g)}, batch_size=n)
        keys = [f"feature-{i}" for i in range(start, start + n)]
        tq.kv_batch_put(keys=keys, partition_id="features", fields=fields)
    return rows


class Loop:
    """The RL loop of the demo, without its trainer ranks: rollouts requested ``LAG`` steps
    ahead (the demo's rollout worker), each step's partition read whole and marked consumed
    by the trainer, partitions older than ``KEEP`` steps cleared."""

    LAG, KEEP = 3, 4

    def __init__(self, tq: Any) -> None:
        import random

        from tqsnap.faces.demo_workload import PromptSampler, RolloutWorker, load_prompts

        self.tq = tq
        self.client = tq.get_client()
        load_prompts(tq)
        self.sampler = PromptSampler(seed=0)
        self.rng = random.Random(0)
        self.worker = RolloutWorker(tq)
        self.step = self.requested = 0

    def train_step(self, timeout: float = 120.0) -> None:
        from tqsnap.faces.demo_workload import (
            FIELDS,
            PROMPTS_PER_STEP,
            STEP_SAMPLES,
            TRAIN_TASK,
            RolloutRequest,
            partition,
        )

        while self.requested < self.step + 1 + self.LAG:
            self.requested += 1
            prompts = tuple(self.sampler.next(PROMPTS_PER_STEP))
            self.worker.submit(RolloutRequest(self.requested, prompts, self.rng.randrange(2**31)))
        t = self.step + 1
        deadline = time.monotonic() + timeout
        while True:  # polling mode: empty until the step's partition is complete
            meta = self.client.get_meta(
                data_fields=FIELDS, batch_size=STEP_SAMPLES, partition_id=partition(t), task_name=TRAIN_TASK
            )
            if meta.size:
                break
            if self.worker.errors:
                raise RuntimeError("the rollout worker failed") from self.worker.errors[0]
            if time.monotonic() > deadline:
                raise TimeoutError(f"partition {partition(t)} incomplete after {timeout:.0f}s")
            time.sleep(0.02)
        self.client.get_data(meta)
        if t > self.KEEP:
            self.client.clear_partition(partition(t - self.KEEP))
        self.step = t


def drain_unconsumed(tq: Any) -> int:
    """What a resumed trainer finds: read every step partition's unconsumed samples; their count."""
    from tqsnap.faces.demo_workload import FIELDS, STEP_SAMPLES, TRAIN_TASK

    client = tq.get_client()
    resumed = 0
    for pid in sorted(client.get_partition_list()):
        if not pid.startswith("step-"):
            continue
        for _ in range(1000):  # bounded: a partition holds one step's samples
            meta = client.get_meta(data_fields=FIELDS, batch_size=STEP_SAMPLES, partition_id=pid, task_name=TRAIN_TASK)
            if meta.size == 0:
                break
            client.get_data(meta)
            resumed += meta.size
    return resumed


def run_source(a: argparse.Namespace) -> dict[str, Any]:
    from tqsnap.adapters.transferqueue import TransferQueueSystem
    from tqsnap.adapters.transferqueue.inspection import dump_system
    from tqsnap.faces.scheduler import Snapshotter

    t0 = time.monotonic()
    ray = connect(a.address, a.nodes)
    tq = init_transferqueue(a.units)
    system = TransferQueueSystem.attached()
    t_up = time.monotonic()
    _say(f"TransferQueue up with units on {unit_addresses(system)} after {t_up - t0:.1f}s")
    features = load_features(tq, a.feature_mib)
    loop = Loop(tq)
    snap = Snapshotter(tq, a.repo, stream=STREAM, every=a.every, storage_options=_options(a))
    deadline = time.monotonic() + a.duration
    while time.monotonic() < deadline:
        loop.train_step()
        time.sleep(0.1)
    _say(f"workload done: {loop.step} steps, {len(snap.results)} snapshots")
    loop.worker.drain()
    loop.worker.stop()
    snap.stop(final_snapshot=True)
    results = list(snap.results)
    if not results:
        raise RuntimeError(f"no snapshot succeeded: {snap.last_error!r}")
    dump = dump_system(system)
    (a.out / "dump.pkl").write_bytes(pickle.dumps(dump))
    report = {
        "driver": ray.util.get_node_ip_address(),
        "units": unit_addresses(system),
        "snapshots": [r.to_json() for r in results],
        "steps": loop.step,
        "produced": loop.worker.produced,
        "feature_rows": features,
        "samples": results[-1].detail.samples,
        "startup_s": t_up - t0,
        "total_s": time.monotonic() - t0,
    }
    tq.close()
    return report


def run_restore(a: argparse.Namespace) -> dict[str, Any]:
    from tqsnap.adapters.transferqueue import TransferQueueSystem, restore_system
    from tqsnap.adapters.transferqueue.inspection import diff_states, dump_system
    from tqsnap.faces.api import open_repo

    t0 = time.monotonic()
    ray = connect(a.address, a.nodes)
    tq = init_transferqueue(a.units)
    system = TransferQueueSystem.attached()
    t_up = time.monotonic()
    _say(f"TransferQueue up with units on {unit_addresses(system)} after {t_up - t0:.1f}s")
    restored = restore_system(system, open_repo(a.repo, storage_options=_options(a)), STREAM)
    t_restored = time.monotonic()
    source = pickle.loads(a.expect.read_bytes())
    diffs = diff_states(source, dump_system(system))
    report = {
        "driver": ray.util.get_node_ip_address(),
        "units": unit_addresses(system),
        "snapshot": restored.snapshot,
        "source_units": restored.source_units,
        "samples": restored.samples,
        "bytes": restored.bytes,
        "restore_s": t_restored - t_up,
        "diffs": diffs,
        "resumed": drain_unconsumed(tq),
        "startup_s": t_up - t0,
    }
    tq.close()
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("role", choices=["source", "restore"])
    p.add_argument("--address", required=True, help="Ray GCS address of this cluster's head")
    p.add_argument("--nodes", type=int, required=True, help="nodes to wait for")
    p.add_argument("--units", type=int, required=True, help="TransferQueue storage units")
    p.add_argument("--repo", required=True, help="s3:// URL of the repository")
    p.add_argument("--endpoint-url", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--secret", required=True)
    p.add_argument("--out", type=Path, required=True, help="directory for the report (and the dump)")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of workload (source)")
    p.add_argument("--every", type=float, default=5.0, help="seconds between snapshots (source)")
    p.add_argument("--feature-mib", type=float, default=8.0, help="MiB of static feature rows (source)")
    p.add_argument("--expect", type=Path, help="the source's dump.pkl (restore)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("transfer_queue").setLevel(logging.ERROR)
    report = run_source(a) if a.role == "source" else run_restore(a)
    (a.out / f"{a.role}.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
