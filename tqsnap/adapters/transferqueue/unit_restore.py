"""Code that runs inside one target storage unit during a restore: stage, then install.

A restore is two-phase so that a failure changes nothing:

1. Staging, in two steps. :func:`stage_unit` fetches the shards the coordinator assigned to
   this unit straight from the store (through the shard layer, a window at a time), verifies
   every one against its hash, decodes the samples this unit will hold and keeps them aside on
   the actor under a token; the verified bytes of items that other units also need are put in
   Ray's object store, one bundle per receiving unit. :func:`receive_unit` then takes the
   bundles addressed to this unit (unit to unit: the coordinator passes only their references)
   and decodes its samples from them. The unit's live data is not touched.
2. Only when every unit has staged (and the controller state decoded) does the coordinator
   take a hold on every unit and the controller (:func:`hold_unit`: seen empty, then puts
   and clears wait), call :func:`install_unit`, which swaps the staged values in, install
   the controller, and release every hold. :func:`discard_unit` drops a staged restore
   that will not be installed.

Why shards are read by one unit and handed on rather than read in part by each unit: when
the target has another number of units than the source, one stored block holds samples of
several target units, interleaved (``gi % n`` of the source against ``gi % m`` of the target).
The format's hashes cover whole shards (and whole packed items), so a ranged read of only
some samples' bytes could not be verified before use. Reading every shard once, whole, and
verified, and shipping verified item bytes between units keeps the store traffic at the
stored size, keeps every unverified byte out of every unit, and keeps sample data off the
coordinator.

Samples are routed by ``gi % units`` over the target's own unit order, so the source may have
had any number of units.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from ...engine.reader import iter_items
from ...engine.shards import Shards
from ...errors import FormatError, RestoreError, TargetNotEmptyError
from ...format.manifest import Item, ShardRef
from ...store.counting import CountingStore
from .blocks import block_gis, decode_block
from .guard import hold, inside_hold, original, release
from .layout import parse_data_path
from .system import in_actor
from .unit_upload import MUTATORS

_STAGED = "_tqsnap_staged"

#: A staged unit's samples: field name -> global index -> value.
Staged = dict[str, dict[int, Any]]


@dataclass
class StageJob:
    """The shards one target unit reads, and the items in them; extents index into ``refs``.

    Each item carries the target units that hold any of its samples: this unit keeps its own
    and hands the item's verified bytes to the others.
    """

    unit: int
    units: int
    token: str
    source: Shards  # the repository's shard layer; pickled as its store's spec, reopened in the actor
    refs: list[ShardRef]
    items: list[tuple[str, Item, tuple[int, ...]]]  # (field name, item, target units)
    snapshot: str
    allow_pickle: bool = False
    window_bytes: int = 256 << 20  # shard bytes fetched ahead of decoding


@in_actor
def describe_unit(self: Any) -> dict[str, Any]:
    data = self.storage_data
    return {
        "id": str(self.storage_unit_id),
        "keys": len(data._active_keys),
        "values": sum(len(v) for v in data.field_data.values()),
        "capacity": data.storage_size,
    }


@in_actor
def stage_unit(self: Any, job: StageJob) -> dict[str, Any]:
    """Fetch and verify this unit's shards; keep its samples aside, bundle the others' items.

    Returns counts and ``sent``: target unit -> a Ray reference to the list of
    ``(field name, item, bytes)`` that unit needs from here.
    """
    import ray

    t0 = time.monotonic()
    counted = CountingStore(job.source.store)
    source = Shards(
        counted,
        threads=job.source.threads,
        range_size=job.source.range_size,
        max_shard_size=job.source.max_shard_size,
    )
    staged: Staged = {}
    outgoing: dict[int, list[tuple[str, Item, bytes]]] = {}
    kept = shipped = 0
    fetched = iter_items(
        source, job.refs, [item for _, item, _ in job.items], window_bytes=job.window_bytes, snapshot=job.snapshot
    )
    for (name, _, targets), (item, data) in zip(job.items, fetched, strict=True):
        others = [t for t in targets if t != job.unit]
        if others:
            copy = bytes(data)  # the shard buffer is dropped after its last item
            for t in others:
                outgoing.setdefault(t, []).append((name, item, copy))
                shipped += len(copy)
        if job.unit in targets:
            kept += data.nbytes
            _keep(staged, name, item, data, job.unit, job.units, job.snapshot, job.allow_pickle)
    self.__dict__.setdefault(_STAGED, {})[job.token] = staged
    sent = {t: ray.put(bundle) for t, bundle in outgoing.items()}
    return {
        "kept_bytes": kept,
        "fetched_bytes": counted.bytes["get"],
        "get_requests": counted.requests["get"],
        "shipped_bytes": shipped,
        "sent": sent,
        "seconds": time.monotonic() - t0,
    }


@in_actor
def receive_unit(
    self: Any, token: str, unit: int, units: int, bundles: list[Any], snapshot: str, allow_pickle: bool
) -> dict[str, Any]:
    """Decode this unit's samples from the items other units handed on; check the unit's capacity.

    The bytes were verified against their shard's hash by the unit that read the shard.
    """
    import ray

    staged: Staged | None = self.__dict__.get(_STAGED, {}).get(token)
    if staged is None:
        raise RestoreError(f"no staged restore {token} on storage unit {self.storage_unit_id}; stage it again")
    received = 0
    for bundle in ray.get(list(bundles)) if bundles else []:
        for name, item, data in bundle:
            received += len(data)
            _keep(staged, name, item, memoryview(data), unit, units, snapshot, allow_pickle)
    keys = set().union(*(v.keys() for v in staged.values())) if staged else set()
    capacity = self.storage_data.storage_size
    if capacity is not None and len(keys) > capacity:
        raise RestoreError(
            f"storage unit {unit} of the target holds at most {capacity} samples, but the snapshot routes "
            f"{len(keys)} to it; start the target TransferQueue with a larger total_storage_size"
        )
    return {
        "samples": len(keys),
        "values": sum(len(v) for v in staged.values()),
        "received_bytes": received,
    }


def _keep(
    staged: Staged, name: str, item: Item, data: memoryview, unit: int, units: int, snapshot: str, allow_pickle: bool
) -> None:
    """Decode the samples of ``item`` that live on ``unit`` (``gi % units == unit``) into ``staged``."""
    rerouted = units != _source_units(item, snapshot)
    where = f"item {item.path!r} of {snapshot}"
    gis, values = decode_block(
        item.meta,
        item.dtype,
        item.shape,
        data,
        wanted=_wanted(item, unit, units, where) if rerouted else None,
        allow_pickle=allow_pickle,
        where=where,
    )
    if rerouted:
        keep = [(g, v) for g, v in zip(gis, values, strict=True) if g % units == unit]
    else:
        keep = list(zip(gis, values, strict=True))
    staged.setdefault(name, {}).update(keep)


def _source_units(item: Item, snapshot: str) -> int:
    """How many units wrote this block, from its path (the coordinator checked every path)."""
    parsed = parse_data_path(item.path)
    if parsed is None:
        raise FormatError(f"item {item.path!r} of {snapshot} is not a data block path")
    return parsed[4]


def _wanted(item: Item, unit: int, units: int, where: str) -> set[int]:
    return {g for g in block_gis(item.meta, where) if g % units == unit}


@in_actor
def discard_unit(self: Any, token: str) -> None:
    self.__dict__.get(_STAGED, {}).pop(token, None)


@in_actor
def hold_unit(self: Any, token: str, force: bool, lease_s: float) -> None:
    """Hold puts and clears off for ``token``, once the unit is seen empty (unless ``force``)."""
    data = self.storage_data

    def check() -> None:
        if data._active_keys and not force:
            raise TargetNotEmptyError(
                f"storage unit {self.storage_unit_id} gained {len(data._active_keys)} samples while the "
                "snapshot was being staged; nothing was changed. Restore into an idle TransferQueue"
            )

    hold(data, MUTATORS, token, lease_s, check)


@in_actor
def release_unit(self: Any, token: str) -> None:
    release(self.storage_data, token)


@in_actor
def install_unit(self: Any, token: str) -> float:
    """Swap the staged values in, inside ``token``'s hold; return how long the swap took."""
    staged = self.__dict__.get(_STAGED, {}).pop(token, None)
    if staged is None:
        raise RestoreError(
            f"no staged restore {token} on storage unit {self.storage_unit_id}; stage it again"
        )
    data = self.storage_data
    with inside_hold(data, token, f"storage unit {self.storage_unit_id}"):
        t0 = time.monotonic()
        existing = list(data._active_keys)
        if existing:  # force=True: without it, the hold refused a unit that held data
            original(data, "clear")(existing)
        data.field_data = {}
        put = original(data, "put_data")
        for name, values in staged.items():
            gis = list(values)
            put({name: [values[g] for g in gis]}, gis)
        return time.monotonic() - t0
