"""Code that runs inside one target storage unit during a restore: stage, then install.

A restore is two-phase so that a failure changes nothing:

1. :func:`stage_unit` fetches the shards holding this unit's samples straight from the store
   (through the shard layer, a window at a time), verifies every one against its hash, decodes
   the values and keeps them aside on the actor under a token. The unit's live data is not
   touched.
2. Only when every unit has staged (and the controller state decoded) does the coordinator
   take a hold on every unit and the controller (:func:`hold_unit`: seen empty, then puts
   and clears wait), call :func:`install_unit`, which swaps the staged values in, install
   the controller, and release every hold. :func:`discard_unit` drops a staged restore
   that will not be installed.

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
from .blocks import decode_block
from .guard import hold, inside_hold, original, release
from .layout import parse_data_path
from .system import in_actor
from .unit_upload import MUTATORS

_STAGED = "_tqsnap_staged"


@dataclass
class StageJob:
    """The items one target unit needs; extents index into ``refs``."""

    unit: int
    units: int
    token: str
    source: Shards  # the repository's shard layer; pickled as its store's spec, reopened in the actor
    refs: list[ShardRef]
    items: list[tuple[str, Item]]  # (field name, item)
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
    """Fetch, verify and decode this unit's samples; keep them aside under ``job.token``."""
    t0 = time.monotonic()
    staged: dict[str, dict[int, Any]] = {}
    nbytes = 0
    fetched = iter_items(
        job.source,
        job.refs,
        [item for _, item in job.items],
        window_bytes=job.window_bytes,
        snapshot=job.snapshot,
    )
    for (name, _), (item, data) in zip(job.items, fetched, strict=True):
        nbytes += data.nbytes
        rerouted = job.units != _source_units(item, job.snapshot)
        gis, values = decode_block(
            item.meta,
            item.dtype,
            item.shape,
            data,
            wanted=_wanted(item, job.unit, job.units) if rerouted else None,
            allow_pickle=job.allow_pickle,
            where=f"item {item.path!r} of {job.snapshot}",
        )
        if rerouted:
            keep = [(g, v) for g, v in zip(gis, values, strict=True) if g % job.units == job.unit]
        else:
            keep = list(zip(gis, values, strict=True))
        staged.setdefault(name, {}).update(keep)
    keys = set().union(*(v.keys() for v in staged.values())) if staged else set()
    capacity = self.storage_data.storage_size
    if capacity is not None and len(keys) > capacity:
        raise RestoreError(
            f"storage unit {job.unit} of the target holds at most {capacity} samples, but the snapshot routes "
            f"{len(keys)} to it; start the target TransferQueue with a larger total_storage_size"
        )
    self.__dict__.setdefault(_STAGED, {})[job.token] = staged
    return {
        "samples": len(keys),
        "values": sum(len(v) for v in staged.values()),
        "bytes": nbytes,
        "seconds": time.monotonic() - t0,
    }


def _source_units(item: Item, snapshot: str) -> int:
    """How many units wrote this block, from its path (the coordinator checked every path)."""
    parsed = parse_data_path(item.path)
    if parsed is None:
        raise FormatError(f"item {item.path!r} of {snapshot} is not a data block path")
    return parsed[4]


def _wanted(item: Item, unit: int, units: int) -> set[int]:
    from .blocks import block_gis

    return {g for g in block_gis(item.meta) if g % units == unit}


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
