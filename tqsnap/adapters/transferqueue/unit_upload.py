"""Code that runs inside one storage unit during a snapshot: copy, reconcile, hash, upload.

The unit's worker thread serves puts, gets and clears. :func:`snapshot_unit` blocks its puts
and clears (never its gets) only while it copies the two-level dict ``field -> {gi: value}``:
a pointer copy, shorter than copying the bytes. That is enough because a unit never changes a
stored value in place; a put replaces the dict entry and a clear removes it, so the values the
copy points to stay as they were while they are hashed and uploaded outside the lock.
(SSD-offloaded values are files that a clear deletes, so those are read inside the lock.)

Then, outside the lock, for every (partition, field, block) the controller reported as
produced on this unit, it keeps the samples the unit really holds (reconcile), encodes them
as one item (:mod:`.blocks`), and hands them to a :class:`~tqsnap.engine.ShardPacker` that
hashes, skips the shards the parent snapshot already has, and uploads the rest from here.
Only the small :class:`~tqsnap.engine.PackResult` goes back to the coordinator.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from ...engine.packer import PackOptions, PackResult, ShardPacker
from ...engine.shards import Shards
from ...format.manifest import ShardRef
from .blocks import EncodedBlock, encode_block
from .guard import between_requests
from .held import drop, hold, take
from .layout import data_path, encode_runs
from .system import RemoteError, in_actor

log = logging.getLogger(__name__)

#: Storage-data methods that mutate it; the guard lock wraps exactly these.
MUTATORS = ("put_data", "clear")


@dataclass
class UnitJob:
    """What one unit must save: which samples the controller says are produced there."""

    unit: int
    units: int
    plan: dict[str, dict[str, Any]]  # partition -> field -> sorted int64 array of global indexes
    shards: Shards  # the repository's shard layer; pickled as its store's spec, reopened in the actor
    options: PackOptions
    block_size: int
    allow_pickle: bool = False
    measure_memcpy: bool = False


@dataclass
class UnitResult:
    """A unit's share of a snapshot: shard references, reconcile losses and timings."""

    pack: PackResult
    missing: dict[str, dict[str, list[list[int]]]] = field(default_factory=dict)  # pid -> field -> gi runs
    samples: int = 0  # distinct global indexes saved
    values: int = 0  # (sample, field) pairs saved
    stall_s: float = 0.0
    entries: int = 0
    data_bytes: int = 0
    memcpy_s: float | None = None
    memcpy_raw_s: float | None = None
    pack_s: float = 0.0


def copy_field_data(storage_data: Any) -> tuple[dict[str, dict[int, Any]], float]:
    """The pointer copy of a unit's data, taken with its puts and clears held off.

    Returns the copy and how long the lock was held (the longest a put could have waited).
    """
    with between_requests(storage_data, MUTATORS):
        t0 = time.monotonic()
        snap = {name: dict(values) for name, values in storage_data.field_data.items()}
        if getattr(storage_data, "ssd_offload_enabled", False):
            _read_offloaded(storage_data, snap)
        return snap, time.monotonic() - t0


def _read_offloaded(storage_data: Any, snap: dict[str, dict[int, Any]]) -> None:
    for name, values in snap.items():
        gis = [gi for gi, v in values.items() if type(v).__name__ == "_SSDValueRef"]
        if gis:
            got = storage_data.get_data([name], gis)[name]
            values.update(zip(gis, got, strict=True))


def measure_memcpy(snap: dict[str, dict[int, Any]]) -> tuple[float, float, int]:
    """What copying this unit's tensor bytes would cost, for comparison with the stall.

    Returns ``(per_value_s, raw_s, bytes)``: copying every stored tensor into one pre-faulted
    buffer (what a copy-first snapshot would do), and one single memcpy of as many bytes from
    a pre-faulted buffer (the lower bound of any copy).
    """
    import torch

    tensors = [v for values in snap.values() for v in values.values() if isinstance(v, torch.Tensor)]
    total = sum(t.numel() * t.element_size() for t in tensors)
    buf = torch.zeros(max(total, 1), dtype=torch.uint8)  # zeros: pages faulted in before timing
    t0 = time.perf_counter()
    pos = 0
    for t in tensors:
        n = t.numel() * t.element_size()
        if n:
            buf[pos : pos + n].copy_(t.reshape(-1).view(torch.uint8))
            pos += n
    per_value = time.perf_counter() - t0
    dst = torch.zeros_like(buf)
    t0 = time.perf_counter()
    dst.copy_(buf)
    raw = time.perf_counter() - t0
    return per_value, raw, total


@in_actor
def snapshot_unit(self: Any, job: UnitJob, reuse: dict[str, ShardRef]) -> UnitResult:
    """Save this unit's produced samples; runs inside the storage unit actor."""
    snap, stall = copy_field_data(self.storage_data)
    return upload_copy(job, reuse, snap, stall)


@in_actor
def capture_unit(self: Any, capture_id: str, after: Any = None) -> Any:
    """The capture of an asynchronous stage: the pointer copy, kept here; returns the stall.

    ``after`` is the controller's capture result: passed as a Ray object reference, it makes
    Ray start this call only once the controller's copy is taken (the order of :mod:`.snapshot`)
    without a round trip through the caller. If the controller's capture failed, nothing is copied.
    """
    if isinstance(after, RemoteError):
        return after
    snap, stall = copy_field_data(self.storage_data)
    hold(self, capture_id, (snap, stall))
    return stall


@in_actor
def upload_held(self: Any, capture_id: str, job: UnitJob, reuse: dict[str, ShardRef]) -> UnitResult:
    """Pack and upload the copy :func:`capture_unit` kept: the values as they were at the capture."""
    snap, stall = take(self, capture_id)
    return upload_copy(job, reuse, snap, stall)


@in_actor
def drop_unit_capture(self: Any, capture_id: str) -> None:
    """Forget an abandoned capture's copy."""
    drop(self, capture_id)


def upload_copy(job: UnitJob, reuse: dict[str, ShardRef], snap: dict[str, dict[int, Any]], stall: float) -> UnitResult:
    """Encode, hash and upload the planned samples of a unit's copy (outside any lock)."""
    result = UnitResult(PackResult(), stall_s=stall, entries=sum(len(v) for v in snap.values()))
    if job.measure_memcpy:
        result.memcpy_s, result.memcpy_raw_s, result.data_bytes = measure_memcpy(snap)
    t0 = time.monotonic()
    packer = ShardPacker(job.shards, reuse, job.options)
    keepalive: list[EncodedBlock] = []
    saved: set[int] = set()
    try:
        for pid in sorted(job.plan):
            for name in sorted(job.plan[pid]):
                values = snap.get(name, {})
                missing: list[int] = []
                for block, block_gis in _blocks(job.plan[pid][name], job.block_size):
                    present, got = _gather(values, block_gis)
                    if len(present) != len(block_gis):
                        missing.extend(g for g in block_gis if g not in values)
                    if not present:
                        continue
                    path = data_path(pid, name, block, job.unit, job.units)
                    enc = encode_block(
                        present,
                        got,
                        allow_pickle=job.allow_pickle,
                        where=f"field {name!r} of partition {pid!r}",
                    )
                    packer.add(
                        path, enc.parts, kind=enc.kind, dtype=enc.dtype, shape=enc.shape, meta=enc.meta
                    )
                    keepalive.append(enc)
                    result.values += len(present)
                    saved.update(present)
                if missing:
                    result.missing.setdefault(pid, {})[name] = encode_runs(missing)
                _cut_pack(packer)
        result.pack = packer.finish()
        result.samples = len(saved)
    except BaseException:
        packer.abort()
        raise
    finally:
        keepalive.clear()
    result.pack_s = time.monotonic() - t0
    log.debug(
        "unit %d/%d: %d samples, stall %.6fs, %d new shards",
        job.unit,
        job.units,
        result.samples,
        stall,
        result.pack.stats.new_shards,
    )
    return result


def _cut_pack(packer: ShardPacker) -> None:
    """Close the open pack so small items of different fields never share a shard.

    Without this cut a static field (a prompt set) shares packs with a churning one (rollouts)
    and is uploaded again with every snapshot.
    """
    packer.flush()


def _gather(values: dict[int, Any], gis: list[int]) -> tuple[list[int], list[Any]]:
    """The samples of ``gis`` that ``values`` holds, and their values (same order)."""
    try:
        return gis, list(map(values.__getitem__, gis))  # the common case: all present
    except KeyError:
        present = [g for g in gis if g in values]
        return present, [values[g] for g in present]


def _blocks(gis: Any, size: int) -> list[tuple[int, list[int]]]:
    """Split sorted global indexes into ``(block, gis)`` groups of ``gi // size``."""
    import numpy as np

    arr = np.asarray(gis, dtype=np.int64)
    if not arr.size:
        return []
    blocks = arr // size
    cuts = np.flatnonzero(blocks[1:] != blocks[:-1]) + 1
    heads = np.concatenate(([0], cuts)).tolist()
    return list(zip(blocks[heads].tolist(), (part.tolist() for part in np.split(arr, cuts)), strict=True))
