"""The demo's trainer: a small reward model trained with DDP on gloo ranks that are Ray actors.

Each rank reads its part of a step's batch straight from the TransferQueue (by key: only keys
travel from the driver) and DDP averages the gradients. A job snapshot saves the model and
the Adam state with ``torch.distributed.checkpoint`` through ``tqsnap.dcp.Writer`` on every
rank; a restore loads them on any number of ranks through ``tqsnap.dcp.Reader``.

Why a run on 1 rank is bit-exact with a run on 2: the global batch is always
``MICROBATCHES`` (2) microbatches of the same keys, and each microbatch's forward and backward
run alone (same shapes, same values, same dropout seed: the same bits on any rank). On 2 ranks
each rank takes one microbatch and DDP's gloo all-reduce computes ``g0/2 + g1/2``; on 1 rank the
rank runs both with the loss scaled by 1/2 (``no_sync`` for the first), which gives
``g0/2 + g1/2`` too: halving is exact in floating point and a sum of two is the same in either
order. No other rank counts are bit-exact with each other (a sum of more parts depends on the
all-reduce's order), so the demo resumes its 2-rank job on 1 rank.

The model imitates LoRA-style RL fine-tuning: a large frozen token embedding (the "base", the
same bytes in every snapshot, so it dedups) under a small trainable head.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from typing import Any

from .demo_workload import TRAIN_FIELDS, VOCAB

MICROBATCHES = 2
DIM = 64
HIDDEN = 256


def _build_model() -> Any:
    import torch
    from torch import nn

    class RewardModel(nn.Module):
        """Mean token embedding of prompt and response (frozen), then a trainable MLP to a reward."""

        def __init__(self) -> None:
            super().__init__()
            self.base = nn.EmbeddingBag(VOCAB, DIM, mode="mean")
            self.base.weight.requires_grad_(False)
            self.head = nn.Sequential(
                nn.Linear(DIM, HIDDEN),
                nn.ReLU(),
                nn.Dropout(0.1),
                nn.Linear(HIDDEN, HIDDEN),
                nn.ReLU(),
                nn.Linear(HIDDEN, 1),
            )

        def forward(self, tokens: Any, offsets: Any) -> Any:
            return self.head(self.base(tokens, offsets)).squeeze(-1)

    torch.manual_seed(1234)
    return RewardModel()


def state_digests(state: dict[str, Any]) -> dict[str, str]:
    """``{flattened key: sha256 of dtype, shape and bytes}`` of a nested model/optimizer state."""
    import torch

    out: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k in sorted(value, key=str):
                walk(f"{prefix}/{k}", value[k])
        elif isinstance(value, list | tuple):
            for i, v in enumerate(value):
                walk(f"{prefix}/{i}", v)
        elif isinstance(value, torch.Tensor):
            t = value.detach().contiguous()
            h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
            out[prefix] = h.hexdigest()
        else:
            out[prefix] = repr(value)

    walk("", state)
    return out


class TrainerRank:
    """One DDP rank (a Ray actor): trains on its microbatches, saves and loads with DCP."""

    def __init__(self, rank: int, world: int, port: int) -> None:
        import torch
        import torch.distributed as dist
        import transfer_queue as tq
        from torch.nn.parallel import DistributedDataParallel

        torch.set_num_threads(1)
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
        self.rank, self.world = rank, world
        self.model = DistributedDataParallel(_build_model())
        self.optim = torch.optim.Adam([p for p in self.model.parameters() if p.requires_grad], lr=1e-3)
        tq.init()  # attaches to the running TransferQueue
        self.tq = tq

    def pid(self) -> int:
        return os.getpid()

    def _state(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model, optim = get_state_dict(self.model, self.optim)
        return {"model": model, "optim": optim}

    def train_step(self, part: str, microbatches: list[list[str]], dropout_seed: int) -> float:
        """Forward and backward each of this rank's microbatches alone, then one optimizer step."""
        import torch

        lo = self.rank * len(microbatches) // self.world
        hi = (self.rank + 1) * len(microbatches) // self.world
        scale = self.world / len(microbatches)  # 1.0 on 2 ranks, 0.5 on 1: exact either way
        self.optim.zero_grad(set_to_none=True)
        total = 0.0
        for index in range(lo, hi):
            data = self.tq.kv_batch_get(
                keys=microbatches[index], partition_id=part, select_fields=TRAIN_FIELDS
            )
            rows = [
                torch.cat([p, r])
                for p, r in zip(data["prompt_ids"], data["response_ids"].unbind(), strict=True)
            ]
            offsets = torch.tensor([0] + [len(r) for r in rows[:-1]]).cumsum(0)
            torch.manual_seed(dropout_seed * 131 + index)
            # gradients are all-reduced once, after the rank's last microbatch
            with self.model.no_sync() if index < hi - 1 else contextlib.nullcontext():
                loss = torch.nn.functional.mse_loss(self.model(torch.cat(rows), offsets), data["reward"])
                (loss * scale).backward()
            total += float(loss)
        self.optim.step()
        return total

    def digests(self) -> dict[str, str]:
        return state_digests(self._state())

    def save(
        self, url: str, stream: str, token: str | None, storage_options: dict[str, Any] | None
    ) -> dict[str, Any]:
        """``dcp.save`` of model and optimizer; staged into job ``token`` when given.

        Returns the time this rank was blocked and, on the coordinator, the staged part (a small
        description, never tensor bytes) or the committed snapshot.
        """
        import torch.distributed.checkpoint as dcp

        from .. import dcp as tqdcp

        t0 = time.perf_counter()
        if token is None:
            writer = tqdcp.Writer(url, stream=stream, storage_options=storage_options)
        else:
            writer = tqdcp.Writer(
                url, stream=stream, storage_options=storage_options, stage=token, part="trainer"
            )
        dcp.save(self._state(), storage_writer=writer)
        stall = time.perf_counter() - t0
        staged = getattr(writer, "staged", None) if token is not None else None
        info = writer.last_snapshot
        return {"stall_s": stall, "staged": staged, "seq": info.seq if info is not None else None}

    def load(
        self,
        url: str,
        stream: str,
        snapshot: str | int,
        part: str | None,
        storage_options: dict[str, Any] | None,
    ) -> float:
        """Load model and optimizer from a snapshot (any rank count saved it); returns seconds."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import set_state_dict

        from .. import dcp as tqdcp

        t0 = time.perf_counter()
        state = self._state()
        kwargs: dict[str, Any] = {"storage_options": storage_options, "snapshot": snapshot}
        if part is not None:
            kwargs["part"] = part
        dcp.load(state, storage_reader=tqdcp.Reader(url, stream=stream, **kwargs))
        set_state_dict(
            self.model, self.optim, model_state_dict=state["model"], optim_state_dict=state["optim"]
        )
        return time.perf_counter() - t0


def start_ranks(world: int) -> list[Any]:
    """``world`` trainer ranks as Ray actors (no CPU reservation: they share the machine)."""
    import ray

    from .demo_cluster import free_port

    port = free_port()
    cls = ray.remote(num_cpus=0)(TrainerRank)
    ranks = [cls.remote(r, world, port) for r in range(world)]
    ray.get([r.pid.remote() for r in ranks], timeout=180)
    return ranks
