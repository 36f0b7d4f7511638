"""The demo's RL traffic: a prompt set, a rollout producer that runs ahead, and a queue digest.

An RL post-training loop in the shape verl and NeMo-RL use: the driver asks for rollouts of
step ``p`` a few steps ahead of training (``LAG``), a rollout worker generates them and puts
them into the TransferQueue as partition ``step-<p>`` (several responses per prompt, jagged
token tensors, log-probs, strings, rewards as tags), and the trainer consumes partition
``step-<t>`` at step ``t`` and clears old partitions.

Deterministic by construction: a rollout is a pure function of its :class:`RolloutRequest`
(the prompts the sampler chose and a seed the driver drew from its RNG), so a request
replayed after a restore puts exactly the same keys, values and tags. Only *when* a put lands
depends on timing, and no result depends on that: the trainer reads a step's partition by key
once all of it is there. The global indexes the controller hands out do depend on timing
(freed indexes are reused), which is why :func:`queue_digest` compares queues by key.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
from dataclasses import asdict, dataclass
from typing import Any

log = logging.getLogger("tqsnap.demo")

VOCAB = 32000
PROMPTS = 1024
PROMPT_LEN = 32
SAMPLES_PER_PROMPT = 4
PROMPTS_PER_STEP = 4
STEP_SAMPLES = SAMPLES_PER_PROMPT * PROMPTS_PER_STEP
FIELDS = ["prompt_ids", "response_ids", "logprobs", "reward", "text"]
TRAIN_FIELDS = ["prompt_ids", "response_ids", "reward"]
TRAIN_TASK = "train"


def partition(step: int) -> str:
    return f"step-{step}"


def prompt_tokens(index: int) -> Any:
    import torch

    return torch.randint(0, VOCAB, (PROMPT_LEN,), generator=torch.Generator().manual_seed(10_000 + index))


def load_prompts(tq: Any) -> None:
    """The static prompt set (partition ``prompts``): the same values in every snapshot, so they dedup."""
    import torch
    from tensordict import TensorDict
    from tensordict.tensorclass import NonTensorStack

    for start in range(0, PROMPTS, 256):
        ids = list(range(start, min(PROMPTS, start + 256)))
        fields = TensorDict(
            {
                "prompt_ids": torch.stack([prompt_tokens(i) for i in ids]),
                "prompt_text": NonTensorStack(*[f"question {i}: what is {i} * {i + 7}?" for i in ids]),
            },
            batch_size=len(ids),
        )
        tags = [{"source": "synthetic-math", "difficulty": i % 5} for i in ids]
        tq.kv_batch_put(keys=[f"prompt-{i}" for i in ids], partition_id="prompts", fields=fields, tags=tags)


@dataclass
class PromptSampler:
    """Which prompts each step trains on: a shuffled pass over the prompt set per epoch.

    Its state (``epoch``, ``position``) is part of the job's loop state, like a stateful
    dataloader's: restored, it hands out the same prompts in the same order.
    """

    seed: int = 0
    epoch: int = 0
    position: int = 0

    def _order(self) -> list[int]:
        import torch

        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(PROMPTS, generator=g).tolist()

    def next(self, count: int) -> list[int]:
        out: list[int] = []
        while len(out) < count:
            order = self._order()
            take = order[self.position : self.position + count - len(out)]
            out += take
            self.position += len(take)
            if self.position >= PROMPTS:
                self.epoch, self.position = self.epoch + 1, 0
        return out

    def state_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class RolloutRequest:
    """Generate step ``step``'s rollouts for ``prompts`` with ``seed``: all a rollout depends on."""

    step: int
    prompts: tuple[int, ...]
    seed: int

    def keys(self) -> list[str]:
        return [f"s{self.step}-p{p}-r{j}" for p in self.prompts for j in range(SAMPLES_PER_PROMPT)]

    def to_state(self) -> list[int]:
        return [self.step, self.seed, *self.prompts]

    @classmethod
    def from_state(cls, state: list[int]) -> RolloutRequest:
        return cls(int(state[0]), tuple(int(p) for p in state[2:]), int(state[1]))


def rollout(tq: Any, req: RolloutRequest) -> None:
    """Generate and put one step's rollouts; the prompts are read back from the queue."""
    import torch
    from tensordict import TensorDict
    from tensordict.tensorclass import NonTensorStack

    prompts = tq.kv_batch_get(
        keys=[f"prompt-{p}" for p in req.prompts], partition_id="prompts", select_fields=["prompt_ids"]
    )["prompt_ids"]
    prompts = torch.stack(list(prompts.unbind()))  # the queue may hand a tensor field back nested
    g = torch.Generator().manual_seed(req.seed)
    keys = req.keys()
    lengths = torch.randint(8, 96, (len(keys),), generator=g).tolist()
    responses = [torch.randint(0, VOCAB, (n,), generator=g) for n in lengths]
    rewards = torch.rand(len(keys), generator=g)
    fields = TensorDict(
        {
            "prompt_ids": prompts.repeat_interleave(SAMPLES_PER_PROMPT, dim=0),
            "response_ids": torch.nested.as_nested_tensor(responses, layout=torch.jagged),
            "logprobs": torch.nested.as_nested_tensor(
                [-torch.rand(n, generator=g) for n in lengths], layout=torch.jagged
            ),
            "reward": rewards,
            "text": NonTensorStack(
                *[f"{k}: a response of {n} tokens" for k, n in zip(keys, lengths, strict=True)]
            ),
        },
        batch_size=len(keys),
    )
    tags = [
        {"step": req.step, "reward": round(float(r), 6), "len": n}
        for r, n in zip(rewards, lengths, strict=True)
    ]
    tq.kv_batch_put(keys=keys, partition_id=partition(req.step), fields=fields, tags=tags)


class RolloutWorker:
    """The asynchronous producer: a thread that serves rollout requests in order."""

    def __init__(self, tq: Any, pace_s: float = 0.05) -> None:
        self.tq = tq
        self.pace_s = pace_s
        self.requests: queue.Queue[RolloutRequest | None] = queue.Queue()
        self.done_through = -1
        self.errors: list[BaseException] = []
        self.produced = 0
        self._idle = threading.Condition()
        self._pending = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-rollouts", daemon=True)
        self._thread.start()

    def submit(self, req: RolloutRequest) -> None:
        with self._idle:
            self._pending += 1
        self.requests.put(req)

    def _run(self) -> None:
        while not self._stop.is_set():
            req = self.requests.get()
            if req is None:
                return
            try:
                rollout(self.tq, req)
                self.produced += len(req.keys())
                self.done_through = req.step
            except BaseException as exc:  # noqa: BLE001 - reported to the driver
                self.errors.append(exc)
                return
            finally:
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()
            self._stop.wait(self.pace_s)

    def drain(self, timeout: float = 60.0) -> None:
        """Wait until every submitted request is in the queue."""
        with self._idle:
            if not self._idle.wait_for(lambda: self._pending == 0 or bool(self.errors), timeout):
                raise TimeoutError(f"rollouts still pending after {timeout:.0f}s")
        if self.errors:
            raise RuntimeError("the rollout worker failed") from self.errors[0]

    def stop(self) -> None:
        self._stop.set()
        self.requests.put(None)
        self._thread.join(30)


def _value_digest(value: Any) -> str:
    import torch

    h = hashlib.sha256()
    if isinstance(value, torch.Tensor):
        h.update(str(value.dtype).encode())
        h.update(str(tuple(value.shape)).encode())
        h.update(value.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    else:
        h.update(repr(value).encode())
    return h.hexdigest()[:16]


def _rows(column: Any) -> list[Any]:
    """A column's values one per sample (``unbind`` once: indexing a nested tensor is slow)."""
    import torch

    if isinstance(column, torch.Tensor):
        return list(column.unbind(0))
    return list(column.tolist()) if hasattr(column, "tolist") else list(column)


def queue_digest(client: Any, tq: Any) -> dict[str, dict[str, Any]]:
    """The queue as a user sees it, by key: every value, tag and the trainer's consumption flag.

    ``{partition: {key: {"tags": ..., "train_consumed": bool, field: digest, ...}}}``. Global
    indexes and unit placement are left out on purpose: they differ between a 3-unit and a
    2-unit queue and between runs, and no consumer sees them.
    """
    out: dict[str, dict[str, Any]] = {}
    for pid in sorted(client.get_partition_list()):
        listed = tq.kv_list(partition_id=pid).get(pid, {})
        keys = sorted(listed)
        if not keys:
            out[pid] = {}
            continue
        gis, status = client.get_consumption_status(TRAIN_TASK, pid)
        consumed: dict[str, bool] = {}
        if gis is not None and len(gis):
            names = client.kv_retrieve_keys(global_indexes=[int(i) for i in gis], partition_id=pid)
            consumed = {str(k): bool(s) for k, s in zip(names, status.tolist(), strict=True)}
        data = tq.kv_batch_get(keys=keys, partition_id=pid)
        entries: dict[str, Any] = {}
        columns = {name: _rows(data[name]) for name in sorted(data.keys())}
        for i, key in enumerate(keys):
            entry: dict[str, Any] = {"tags": listed[key], "train_consumed": consumed.get(key, False)}
            entry.update((name, _value_digest(rows[i])) for name, rows in columns.items())
            entries[key] = entry
        out[pid] = entries
    return out


def diff_digests(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]], limit: int = 10) -> list[str]:
    """Human-readable differences between two :func:`queue_digest` results (empty: equal)."""
    diffs: list[str] = []
    for pid in sorted(set(a) | set(b)):
        if pid not in a or pid not in b:
            diffs.append(f"partition {pid} only in the {'first' if pid in a else 'second'} queue")
            continue
        for key in sorted(set(a[pid]) | set(b[pid])):
            if a[pid].get(key) != b[pid].get(key):
                diffs.append(f"{pid}/{key}: {a[pid].get(key)} != {b[pid].get(key)}")
    return diffs[:limit]
