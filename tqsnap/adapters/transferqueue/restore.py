"""Restore a snapshot into a running TransferQueue (the coordinator's side).

1. Validate (:mod:`.validate`): the snapshot exists and is a TransferQueue snapshot of a
   layout this version reads; no pickled values unless allowed; the target is empty unless
   ``force``.
2. Read the controller items here (verified against their hashes).
3. Stage, all at once: the controller decodes its items and keeps the state aside, while
   every target unit fetches and verifies the shards assigned to it (each shard to one
   unit), decodes its own samples, routed by ``gi % n`` over the target's unit order, and
   hands the items other units also need on to them, unit to unit; then each unit decodes
   what it was handed, and keeps it all aside (:mod:`.unit_restore`).
4. Hold: every unit, then the controller, is checked empty (unless ``force``) and from then
   on holds its puts, clears and requests off (:func:`.guard.hold`), so nothing can land
   between the last check and the install.
5. Only then install: first the units, then the controller, so no sample is ever marked
   produced before its value is in place; then release the holds.

Any failure in steps 1-4 discards what was staged and leaves the target as it was.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from ...engine import Repository
from ...engine.job_read import open_reader
from ...engine.shard_table import select_shards
from ...engine.shards import Shards
from ...errors import FormatError
from ...format.manifest import Item
from .blocks import block_units
from .controller_decode import controller_paths, decode_sampler
from .controller_restore import (
    discard_controller,
    hold_controller,
    install_staged_controller,
    release_controller,
    stage_controller,
)
from .layout import KIND, parse_data_path, sampler_path
from .system import TransferQueueSystem
from .unit_restore import (
    StageJob,
    discard_unit,
    hold_unit,
    install_unit,
    receive_unit,
    release_unit,
    stage_unit,
)
from .validate import check_manifest, check_pickle, check_sampler, check_target

log = logging.getLogger(__name__)


@dataclass
class TQRestoreResult:
    """What one restore did."""

    snapshot: str
    samples: int
    bytes: int
    units: int
    source_units: int
    fetched_bytes: int = 0  # shard bytes the units read from the store (each shard once)
    shipped_bytes: int = 0  # verified item bytes units handed to other units (another unit count)
    validate_s: float = 0.0
    stage_s: float = 0.0
    install_s: float = 0.0
    total_s: float = 0.0
    unit_stall_s: list[float] = field(default_factory=list)  # each unit's swap
    controller_stall_s: float = 0.0  # the controller's swap
    hold_s: float = 0.0  # how long requests to the target were held off, hold to release

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _stage_jobs(
    reader: Any, units: int, token: str, repo: Repository, allow_pickle: bool, threads: int
) -> list[StageJob]:
    """Per target unit: the shards it reads, and the data items in them with their target units.

    Every shard is read by exactly one unit, so the store serves each stored byte once whatever
    the source and target unit counts. Items that share a shard (a pack) or a shard's bytes (a
    chunk kept once for two items) form a group read by one unit: the unit that needs most of
    the group's bytes, the least loaded on a tie (a block rerouted into another unit count is
    needed by every target in equal parts, so groups spread evenly). A unit hands the items
    other units need on to them (:func:`.unit_restore.stage_unit`). When the unit counts are
    equal each item is needed by its own unit only, so nothing is handed on.

    The items' paths and sample runs were checked by :func:`.validate.check_manifest`; the
    target units of an item are read from its runs without expanding them.
    """
    entries: list[tuple[str, Item, tuple[int, ...]]] = []
    for path, item in reader.items.items():
        parsed = parse_data_path(path)
        if parsed is None:
            continue
        _, name, _, k, n = parsed
        targets = {k} if n == units else block_units(item.meta, units, f"data item {path!r} of {reader.name}")
        if targets:
            entries.append((name, item, tuple(sorted(targets))))
    shards = reader.manifest.shards
    load = [0] * units
    per_unit: list[list[tuple[str, Item, tuple[int, ...]]]] = [[] for _ in range(units)]
    for group in _shard_groups(entries):
        need = [0.0] * units
        for _, item, targets in group:
            for t in targets:
                need[t] += item.size / len(targets)
        best = max(range(units), key=lambda u: (need[u], -load[u], -u))
        load[best] += sum(shards[s].stored_size for s in {e.shard for _, item, _ in group for e in item.extents})
        per_unit[best].extend(group)
    jobs = []
    source = Shards(repo.store, threads=threads)
    for j, group in enumerate(per_unit):
        refs, items = select_shards(shards, (item for _, item, _ in group))
        jobs.append(
            StageJob(
                unit=j,
                units=units,
                token=token,
                source=source,
                refs=refs,
                items=[(name, item, targets) for (name, _, targets), item in zip(group, items, strict=True)],
                snapshot=reader.name,
                allow_pickle=allow_pickle,
            )
        )
    return jobs


def _shard_groups(entries: list[tuple[str, Item, tuple[int, ...]]]) -> list[list[tuple[str, Item, tuple[int, ...]]]]:
    """``entries`` grouped so that two items using one shard are in one group; manifest order kept."""
    parent: dict[int, int] = {}

    def root(s: int) -> int:
        while parent.setdefault(s, s) != s:
            parent[s] = parent[parent[s]]
            s = parent[s]
        return s

    for _, item, _ in entries:
        first = [root(e.shard) for e in item.extents]
        for r in first[1:]:
            parent[r] = first[0]
    groups: dict[Any, list[tuple[str, Item, tuple[int, ...]]]] = {}
    for i, entry in enumerate(entries):
        extents = entry[1].extents
        key: Any = root(extents[0].shard) if extents else ("empty", i)  # an empty item needs no shard
        groups.setdefault(key, []).append(entry)
    return list(groups.values())


def restore_system(
    system: TransferQueueSystem,
    repo: Repository,
    stream: str,
    snapshot: str | int = "latest",
    *,
    force: bool = False,
    allow_pickle: bool = False,
    threads: int = 8,
    hold_lease_s: float = 60.0,
    part: str | None = None,
) -> TQRestoreResult:
    """Restore ``stream@snapshot`` into ``system``, exactly; a failure before the install changes nothing.

    ``part`` restores that part of a job snapshot (:mod:`tqsnap.job`), e.g. ``"queue"``.

    ``hold_lease_s`` bounds how long the target's requests can be held off should this
    process die between taking the holds and releasing them.
    """
    t0 = time.monotonic()
    if not repo.store.shareable_across_processes:
        raise ValueError(f"{repo.store!r} lives in one process; restore from a local path or an s3:// URL")
    reader = open_reader(repo, stream, snapshot, kind=KIND, part=part)
    header = check_manifest(reader)
    check_pickle(reader, allow_pickle)
    target = check_target(system, force)

    partitions = header.partitions
    paths = controller_paths(partitions, header.consumption_tasks)
    absent = [p for p in paths if p not in reader.items]
    if absent:
        raise FormatError(f"snapshot {reader.name} lacks controller items {absent[:3]}")
    values = reader.read_items(paths)
    sampler = decode_sampler(
        values[sampler_path()], allow_pickle=allow_pickle, where=f"item {sampler_path()!r} of {reader.name}"
    )
    load_sampler = check_sampler(sampler.class_name, sampler.state, target.sampler_class, reader.name)
    token = secrets.token_hex(8)
    jobs = _stage_jobs(reader, system.n_units, token, repo, allow_pickle, threads)
    t_validate = time.monotonic()

    try:
        # The controller decodes its own items (per-sample metadata is built where it is used)
        # while every unit fetches and decodes its samples: the two stages share nothing.
        refs = [
            system.start_controller(
                stage_controller,
                token,
                partitions,
                {p: bytes(values[p]) for p in paths},
                {p: reader.items[p] for p in paths},
                reader.name,
                allow_pickle,
            ),
            *system.start_units(stage_unit, [(job,) for job in jobs]),
        ]
        read = system.collect(refs)[1:]
        # Each unit takes what the others read for it, straight from them: the coordinator
        # passes references, never the bytes.
        staged = system.call_units(
            receive_unit,
            [
                (token, j, system.n_units, [r["sent"][j] for r in read if j in r["sent"]], reader.name, allow_pickle)
                for j in range(system.n_units)
            ],
        )
        fetched = sum(r["fetched_bytes"] for r in read)
        shipped = sum(r["shipped_bytes"] for r in read)
        kept = sum(r["kept_bytes"] for r in read)
        del read  # drops the references to the bundles, so Ray frees them
    except BaseException:
        _discard(system, token)
        raise
    t_stage = time.monotonic()

    # Hold every unit and the controller, each seen empty at that moment, before changing any:
    # a put that arrived while we staged refuses the restore with nothing changed, and one
    # that arrives from here on waits until the restore is in place.
    # The lease ends a hold whose coordinator died; a live one finishes in well under it.
    try:
        try:
            system.call_units(hold_unit, [(token, force, hold_lease_s) for _ in system.units])
            system.call_controller(hold_controller, token, force, hold_lease_s)
            t_held = time.monotonic()
            unit_stalls = system.call_units(install_unit, [(token,) for _ in system.units])
            controller_stall = system.call_controller(install_staged_controller, token, load_sampler)
        except BaseException:
            _discard(system, token)
            raise
    finally:
        _release(system, token)
    t_end = time.monotonic()
    result = TQRestoreResult(
        snapshot=reader.name,
        samples=sum(s["samples"] for s in staged),
        bytes=kept + shipped,
        fetched_bytes=fetched,
        shipped_bytes=shipped,
        units=system.n_units,
        source_units=header.units,
        validate_s=t_validate - t0,
        stage_s=t_stage - t_validate,
        install_s=t_end - t_stage,
        total_s=t_end - t0,
        unit_stall_s=list(unit_stalls),
        controller_stall_s=controller_stall,
        hold_s=time.monotonic() - t_held,
    )
    log.info(
        "restored %s (%d units) into %d units: %d samples in %.2fs",
        reader.name,
        result.source_units,
        result.units,
        result.samples,
        result.total_s,
    )
    return result


def _release(system: TransferQueueSystem, token: str) -> None:
    try:
        system.collect(
            [
                system.start_controller(release_controller, token),
                *system.start_units(release_unit, [(token,)] * system.n_units),
            ]
        )
    except Exception:  # noqa: BLE001 - the holds' lease ends them anyway
        log.warning("could not release the hold of restore %s everywhere", token, exc_info=True)


def _discard(system: TransferQueueSystem, token: str) -> None:
    try:
        system.call_controller(discard_controller, token)
        system.call_units(discard_unit, [(token,) for _ in system.units])
    except Exception:  # noqa: BLE001 - best effort; staged data also dies with the actor
        log.warning("could not discard staged restore %s on every unit", token, exc_info=True)
