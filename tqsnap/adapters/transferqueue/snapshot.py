"""Take one snapshot of a running TransferQueue (the coordinator's side).

Order, and why (docs/transferqueue.md, "Consistency"):

1. begin the save (parent, reuse index);
2. capture the controller, between two of its requests;
3. tell every unit which samples the controller saw as produced on it; each unit copies its
   data, keeps the samples it really holds, and hashes and uploads its own shards, all units
   at once;
4. reconcile: a (sample, field) that the controller saw produced but its unit no longer held
   (a clear raced the snapshot) is saved as not produced;
5. save the controller items from here, and commit the manifest LAST.

A put that lands after step 2 is not in the snapshot; one that landed before it is, whole.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from ...engine import PackOptions, Repository, SnapshotInfo, SnapshotWriter
from ...engine.packer import reuse_fraction
from ...engine.shards import Shards
from ...errors import TqsnapError
from ...format.manifest import SnapshotId
from .controller_capture import capture_encoded
from .controller_codec import controller_items
from .controller_state import EncodedController, PartitionStatus
from .layout import DEFAULT_BLOCK_SIZE, KIND, LAYOUT_VERSION, MAX_BLOCK_SIZE, decode_runs
from .system import TransferQueueSystem, _ray
from .unit_upload import UnitJob, UnitResult, snapshot_unit

log = logging.getLogger(__name__)

#: Packing for TransferQueue data: a block item of 256 KiB or more gets shards of its own, so
#: a change re-uploads that item only; smaller items of one field share packs (S3 requests
#: cost more than their bytes below about 1 MiB).
TQ_PACK_OPTIONS = PackOptions(small_item=256 * 1024)


@dataclass
class TQSnapshotResult:
    """What one snapshot did: the committed snapshot, bytes new vs reused, and timings."""

    info: SnapshotInfo
    samples: int
    values: int
    dropped: int
    units: int
    new_bytes: int
    reused_bytes: int
    stored_bytes: int
    item_bytes: int
    controller_stall_s: float
    unit_stall_s: list[float] = field(default_factory=list)
    unit_memcpy_s: list[float | None] = field(default_factory=list)
    unit_memcpy_raw_s: list[float | None] = field(default_factory=list)
    unit_data_bytes: list[int] = field(default_factory=list)
    capture_s: float = 0.0
    upload_s: float = 0.0
    commit_s: float = 0.0
    total_s: float = 0.0

    @property
    def reused_fraction(self) -> float:
        """Fraction of this snapshot's bytes that were already in the repository."""
        return reuse_fraction(self.new_bytes, self.reused_bytes)

    def to_json(self) -> dict[str, Any]:
        return {
            "snapshot": str(self.info.id),
            "samples": self.samples,
            "values": self.values,
            "dropped": self.dropped,
            "units": self.units,
            "new_bytes": self.new_bytes,
            "reused_bytes": self.reused_bytes,
            "stored_bytes": self.stored_bytes,
            "item_bytes": self.item_bytes,
            "reused_fraction": round(self.reused_fraction, 4),
            "controller_stall_s": self.controller_stall_s,
            "unit_stall_s": self.unit_stall_s,
            "unit_memcpy_s": self.unit_memcpy_s,
            "unit_memcpy_raw_s": self.unit_memcpy_raw_s,
            "capture_s": self.capture_s,
            "upload_s": self.upload_s,
            "commit_s": self.commit_s,
            "total_s": self.total_s,
        }


def _plan(statuses: dict[str, PartitionStatus], units: int) -> list[dict[str, dict[str, Any]]]:
    """Per unit: partition -> field -> sorted global indexes the controller saw produced."""
    import numpy as np

    plans: list[dict[str, dict[str, Any]]] = [{} for _ in range(units)]
    for pid, p in statuses.items():
        prod = p.production.numpy()
        for name, col in p.field_name_mapping.items():
            if col >= prod.shape[1]:
                continue
            gis = np.flatnonzero(prod[:, col] == 1).astype(np.int64)
            if gis.size == 0:
                continue
            owner = gis % units
            for k in range(units):
                sel = gis[owner == k]
                if sel.size:
                    plans[k].setdefault(pid, {})[name] = sel
    return plans


def _reconcile(
    statuses: dict[str, PartitionStatus], results: list[UnitResult]
) -> tuple[dict[str, PartitionStatus], int]:
    """The statuses to save: (sample, field) pairs no unit held marked not produced.

    Returns them and how many pairs there were. A partition with such pairs gets a new
    production tensor; the captured ones are left as they were.
    """
    dropped = 0
    out = dict(statuses)
    for r in results:
        for pid, fields in r.missing.items():
            if out[pid] is statuses[pid]:
                out[pid] = dataclasses.replace(statuses[pid], production=statuses[pid].production.clone())
            p = out[pid]
            for name, runs in fields.items():
                gis = decode_runs(runs)
                p.production[gis, p.field_name_mapping[name]] = 0
                dropped += len(gis)
    if dropped:
        log.info("reconcile: %d produced values were cleared during the snapshot and are left out", dropped)
    return out, dropped


@dataclass
class _Taken:
    """A snapshot's data uploaded, before its commit: what the commit or the stage needs."""

    results: list[UnitResult]
    n: int
    samples: int
    values: int
    dropped: int
    stall_s: float
    stats: dict[str, Any]
    extra: dict[str, Any]
    t_capture: float
    t_upload: float


class _Target(Protocol):
    """Where the units' shards go: a :class:`SnapshotWriter` (a snapshot) or a :class:`PartStager` (a job part)."""

    reuse_index: dict[str, Any]

    def packer(self) -> Any: ...

    def add_result(self, result: Any) -> None: ...


def _check_args(repo: Repository, block_size: int) -> None:
    if not repo.store.shareable_across_processes:
        raise ValueError(
            f"{repo.store!r} lives in one process; TransferQueue storage units upload their own shards, "
            "so use a local path or an s3:// URL"
        )
    if type(block_size) is not int or not 1 <= block_size <= MAX_BLOCK_SIZE:
        raise TqsnapError(f"block_size must be an integer from 1 to {MAX_BLOCK_SIZE}, not {block_size!r}")


def _take(
    system: TransferQueueSystem,
    repo: Repository,
    target: _Target,
    *,
    options: PackOptions,
    allow_pickle: bool,
    block_size: int,
    measure_memcpy: bool,
) -> _Taken:
    """Steps 2-5 up to the commit: capture, upload on every unit, reconcile, controller items."""
    ray = _ray()
    # The controller encodes its JSON items itself, before any upload, so a value that needs
    # pickle fails the save early. Its status items are made after the reconcile, from the
    # statuses the reconcile returns.
    captured: EncodedController = system.call_controller(capture_encoded, allow_pickle)
    t_capture = time.monotonic()
    reuse = ray.put(target.reuse_index)
    jobs = [
        (job, reuse)
        for job in unit_jobs(
            repo,
            captured,
            system.n_units,
            options=options,
            allow_pickle=allow_pickle,
            block_size=block_size,
            measure_memcpy=measure_memcpy,
        )
    ]
    results: list[UnitResult] = system.call_units(snapshot_unit, jobs)
    return assemble(system, target, captured, results, block_size=block_size, t_capture=t_capture)


def unit_jobs(
    repo: Repository,
    captured: EncodedController,
    n: int,
    *,
    options: PackOptions,
    allow_pickle: bool,
    block_size: int,
    measure_memcpy: bool = False,
) -> list[UnitJob]:
    """Per unit, what it must save: the samples the captured controller saw produced there."""
    return [
        UnitJob(
            unit=k,
            units=n,
            plan=plan,
            shards=Shards(repo.store),
            options=options,
            block_size=block_size,
            allow_pickle=allow_pickle,
            measure_memcpy=measure_memcpy,
        )
        for k, plan in enumerate(_plan(captured.statuses, n))
    ]


def assemble(
    system: TransferQueueSystem,
    target: _Target,
    captured: EncodedController,
    results: list[UnitResult],
    *,
    block_size: int,
    t_capture: float,
) -> _Taken:
    """Steps 4-5 up to the commit: the units' references, the reconcile, the controller items."""
    t_upload = time.monotonic()
    n = len(results)
    for r in results:
        target.add_result(r.pack)
    statuses, dropped = _reconcile(captured.statuses, results)
    packer = target.packer()
    try:
        for spec in controller_items(captured.json_items, statuses):
            packer.add(
                spec.path, spec.data, kind=spec.kind, dtype=spec.dtype, shape=spec.shape, meta=spec.meta
            )
        target.add_result(packer.finish())
    except BaseException:
        packer.abort()
        raise
    samples = sum(r.samples for r in results)
    values = sum(r.values for r in results)
    stats = {
        "tq_samples": samples,
        "tq_values": values,
        "tq_dropped": dropped,
        "tq_controller_stall_s": round(captured.stall_s, 6),
        "tq_unit_stall_s": [round(r.stall_s, 6) for r in results],
    }
    extra = {
        "tq_layout": LAYOUT_VERSION,
        "units": n,
        "unit_names": system.unit_names,
        "block_size": block_size,
        "partitions": sorted(statuses),
        "consumption_tasks": {pid: list(p.consumption) for pid, p in statuses.items()},
        "sampler_class": captured.sampler_class,
    }
    return _Taken(results, n, samples, values, dropped, captured.stall_s, stats, extra, t_capture, t_upload)


def snapshot_system(
    system: TransferQueueSystem,
    repo: Repository,
    stream: str,
    *,
    metadata: dict[str, Any] | None = None,
    allow_pickle: bool = False,
    options: PackOptions | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    parent: SnapshotId | str | None = "latest",
    measure_memcpy: bool = False,
) -> TQSnapshotResult:
    """Snapshot ``system`` into ``repo`` as the next snapshot of ``stream``.

    ``measure_memcpy`` also times, on each unit, copying its tensor bytes (for benchmarks; it
    costs that copy).
    """
    _check_args(repo, block_size)
    t0 = time.monotonic()
    options = options or TQ_PACK_OPTIONS
    writer = SnapshotWriter.begin(repo, stream, KIND, parent=parent, options=options)
    taken = _take(
        system,
        repo,
        writer,
        options=options,
        allow_pickle=allow_pickle,
        block_size=block_size,
        measure_memcpy=measure_memcpy,
    )
    results = taken.results
    info = writer.commit(extra=taken.extra, metadata=metadata, stats=taken.stats)
    t_end = time.monotonic()
    s = info.stats
    result = TQSnapshotResult(
        info=info,
        samples=taken.samples,
        values=taken.values,
        dropped=taken.dropped,
        units=taken.n,
        new_bytes=int(s.get("new_bytes", 0)),
        reused_bytes=int(s.get("reused_bytes", 0)),
        stored_bytes=int(s.get("stored_bytes", 0)),
        item_bytes=int(s.get("item_bytes", 0)),
        controller_stall_s=taken.stall_s,
        unit_stall_s=[r.stall_s for r in results],
        unit_memcpy_s=[r.memcpy_s for r in results],
        unit_memcpy_raw_s=[r.memcpy_raw_s for r in results],
        unit_data_bytes=[r.data_bytes for r in results],
        capture_s=taken.t_capture - t0,
        upload_s=taken.t_upload - taken.t_capture,
        commit_s=t_end - taken.t_upload,
        total_s=t_end - t0,
    )
    log.info(
        "snapshot %s: %d samples, %d bytes new, %d reused, %.2fs (unit stall max %.6fs)",
        info.id,
        taken.samples,
        result.new_bytes,
        result.reused_bytes,
        result.total_s,
        max(result.unit_stall_s, default=0.0),
    )
    return result
