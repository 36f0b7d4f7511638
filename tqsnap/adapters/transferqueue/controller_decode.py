"""Snapshot items -> controller state: the reverse of :mod:`.controller_codec`, bounded.

A snapshot may come from a hostile bucket, and a run of indexes costs a few bytes of JSON
however many indexes it stands for. So :func:`decode` counts every declared set, map and list
before it makes one, against bounds it has already checked: every index lies below the
index manager's ``global_index_counter`` (at most :data:`.layout.MAX_INDEXES`), the
partitions together hold at most that many indexes (TransferQueue gives each index to one
partition), a partition's per-sample maps (tags, backend meta, reverse keys) hold at most as
many entries as the partition has indexes, and a field's index set and shape map at most as
many as the partition's production status has rows (a sample is given a row before it is
marked produced), so all fields together stay within that tensor's real size.
Anything beyond is a :class:`~tqsnap.errors.FormatError` naming the snapshot and item, raised
before the allocation.
"""

from __future__ import annotations

from typing import Any

from ...errors import FormatError
from ...format import strict
from ...format.manifest import Item
from ..tensors import tensor_from_bytes
from . import jsonval, layout
from .controller_state import (
    ControllerState,
    FieldState,
    IndexManagerState,
    PartitionState,
    PartitionStatus,
    SamplerState,
)
from .layout import MAX_INDEXES, count_runs, read_runs


def controller_paths(partitions: list[str], tasks: dict[str, list[str]]) -> list[str]:
    """The item paths :func:`decode` reads."""
    paths = [layout.index_manager_path(), layout.sampler_path()]
    for pid in partitions:
        paths += [layout.partition_state_path(pid), layout.production_path(pid)]
        paths += [layout.consumption_path(pid, t) for t in tasks.get(pid, [])]
    return paths


def _fail(where: str, what: str) -> FormatError:
    return FormatError(f"{where}: {what}")


def _obj(node: Any, where: str, keys: tuple[str, ...]) -> dict[str, Any]:
    if type(node) is not dict or any(k not in node for k in keys):
        raise _fail(where, f"must be an object with {', '.join(keys)}")
    return node


def _list(node: Any, where: str) -> list[Any]:
    if type(node) is not list:
        raise _fail(where, f"must be a list, not {type(node).__name__}")
    return node


def _pairs(node: Any, where: str) -> list[tuple[Any, Any]]:
    out = []
    for pair in _list(node, where):
        if type(pair) is not list or len(pair) != 2:
            raise _fail(where, f"holds {pair!r:.60} where a [key, value] pair belongs")
        out.append((pair[0], pair[1]))
    return out


def _gi(value: Any, where: str, counter: int) -> int:
    if type(value) is not int or not 0 <= value < counter:
        raise _fail(where, f"global index {value!r:.40} is not an integer below the counter {counter}")
    return value


class _Reader:
    """Decodes one snapshot's controller items within the bounds the module docstring lists."""

    def __init__(self, snapshot: str, allow_pickle: bool) -> None:
        self.snapshot = snapshot
        self.allow_pickle = allow_pickle
        self.counter = 0
        self.unclaimed = 0  # indexes the partitions decoded so far have not used up

    def where(self, path: str) -> str:
        return f"item {path!r} of snapshot {self.snapshot}"

    def runs(self, node: Any, where: str, limit: int) -> list[int]:
        return read_runs(node, where, hi=self.counter, limit=limit)

    def int_map(self, node: Any, where: str, dec: jsonval.Decoder, limit: int) -> dict[int, Any]:
        node = _obj(node, where, ("gi",))
        count = count_runs(node["gi"], where, hi=self.counter)
        if count > limit:
            raise _fail(where, f"a map declares {count} indexes, more than the {limit} allowed here")
        if node.get("empty") is True:
            return {k: {} for k in read_runs(node["gi"], where, hi=self.counter, limit=count)}
        if "flat" in node:
            flat, ndim = _list(node["flat"], where), node.get("ndim")
            if type(ndim) is not int or not 0 <= ndim <= 64 or len(flat) != count * ndim:
                raise _fail(where, f"a shape map lists {len(flat)} numbers for {count} indexes of {ndim!r:.20} dims")
            keys = read_runs(node["gi"], where, hi=self.counter, limit=count)
            return {k: flat[i * ndim : (i + 1) * ndim] for i, k in enumerate(keys)}
        values = _list(node.get("v"), where)
        if len(values) != count:
            raise _fail(where, f"a map lists {count} indexes for {len(values)} values")
        keys = read_runs(node["gi"], where, hi=self.counter, limit=count)
        return {k: _unfast(v, dec) for k, v in zip(keys, values, strict=True)}

    def index_manager(self, data: Any) -> IndexManagerState:
        where = self.where(layout.index_manager_path())
        doc = _load(data, where)
        doc = _obj(doc, where, ("partition_to_indexes", "reusable_indexes", "global_index_counter", "allocated_indexes"))
        counter = doc["global_index_counter"]
        if type(counter) is not int or not 0 <= counter <= MAX_INDEXES:
            raise _fail(where, f"global_index_counter {counter!r:.40} is not an integer in [0, {MAX_INDEXES}]")
        self.counter = self.unclaimed = counter
        budget = counter
        by_partition: dict[str, set[int]] = {}
        for pid, runs in _pairs(doc["partition_to_indexes"], f"{where}: partition_to_indexes"):
            if type(pid) is not str or pid in by_partition:
                raise _fail(where, f"partition_to_indexes names partition {pid!r:.60} twice or not as a string")
            gis = self.runs(runs, f"{where}: indexes of partition {pid!r:.60}", budget)
            budget -= len(gis)  # TransferQueue gives each index to one partition
            by_partition[pid] = set(gis)
        return IndexManagerState(
            partition_to_indexes=by_partition,
            reusable_indexes=self.runs(doc["reusable_indexes"], f"{where}: reusable_indexes", counter),
            global_index_counter=counter,
            allocated_indexes=set(self.runs(doc["allocated_indexes"], f"{where}: allocated_indexes", counter)),
        )

    def status(self, pid: str, doc: dict[str, Any], values: dict[str, Any], items: dict[str, Item]) -> PartitionStatus:
        path = layout.production_path(pid)
        production = _status_tensor(values[path], items[path], 2, self.where(path))
        where = self.where(layout.partition_state_path(pid))
        columns = production.shape[1]
        mapping: dict[str, int] = {}
        for name, col in _pairs(doc["field_name_mapping"], f"{where}: field_name_mapping"):
            if type(name) is not str or type(col) is not int or not 0 <= col < columns or name in mapping:
                raise _fail(where, f"field {name!r:.60} maps to column {col!r:.20} of a {columns}-column status")
            mapping[name] = col
        consumption = {}
        for task in _list(doc["consumption_tasks"], f"{where}: consumption_tasks"):
            cpath = layout.consumption_path(pid, task) if type(task) is str else ""
            if cpath not in items or task in consumption:
                raise _fail(where, f"consumption task {task!r:.60} has no status item")
            consumption[task] = _status_tensor(values[cpath], items[cpath], 1, self.where(cpath))
        return PartitionStatus(production, consumption, mapping)

    def partition(self, pid: str, data: Any, values: dict[str, Any], items: dict[str, Item]) -> PartitionState:
        where = self.where(layout.partition_state_path(pid))
        doc = _obj(_load(data, where), where, _PARTITION_KEYS)
        if doc["partition_id"] != pid:
            raise _fail(where, f"names partition {doc['partition_id']!r:.60}, not {pid!r}")
        dec = jsonval.Decoder(self.allow_pickle, where)
        status = self.status(pid, doc, values, items)
        global_indexes = set(self.runs(doc["global_indexes"], f"{where}: global_indexes", self.unclaimed))
        self.unclaimed -= len(global_indexes)
        pre_allocated = set(self.runs(doc["pre_allocated"], f"{where}: pre_allocated", self.unclaimed))
        self.unclaimed -= len(pre_allocated)
        held = len(global_indexes | pre_allocated)
        # A field's samples were produced, so they have rows in the status: per-field sets and
        # shape maps hold at most min(held, rows) entries, and all fields together at most the
        # status tensor's (real, decoded) size.
        produced = min(held, status.production.shape[0])
        field_metadata: dict[str, FieldState] = {}
        for name, m in _pairs(doc["field_metadata"], f"{where}: field_metadata"):
            if type(name) is not str or name not in status.field_name_mapping or name in field_metadata:
                raise _fail(where, f"field_metadata names field {name!r:.60}, which has no status column")
            fw = f"{where}: field {name!r:.60}"
            m = _obj(m, fw, ("global_indexes", "dtype", "shape", "is_nested", "is_non_tensor", "per_sample_shapes"))
            field_metadata[name] = FieldState(
                global_indexes=set(self.runs(m["global_indexes"], fw, produced)),
                dtype=dec.decode(m["dtype"]),
                shape=dec.decode(m["shape"]),
                is_nested=dec.decode(m["is_nested"]),
                is_non_tensor=dec.decode(m["is_non_tensor"]),
                per_sample_shapes=self.int_map(m["per_sample_shapes"], f"{fw} per_sample_shapes", dec, produced),
            )
        km = _obj(doc["keys_mapping"], f"{where}: keys_mapping", ("k", "gi"))
        keys, kgis = _list(km["k"], f"{where}: keys_mapping"), _list(km["gi"], f"{where}: keys_mapping")
        if len(keys) != len(kgis):
            raise _fail(where, f"keys_mapping lists {len(keys)} keys for {len(kgis)} indexes")
        keys_mapping: dict[Any, int] = {}
        for k, g in zip(keys, kgis, strict=True):
            key = dec.decode(k)
            try:
                hash(key)
            except TypeError:
                raise _fail(where, f"keys_mapping has an unhashable key {key!r:.60}") from None
            keys_mapping[key] = _gi(g, f"{where}: keys_mapping", self.counter)
        return PartitionState(
            partition_id=pid,
            created_at=dec.decode(doc["created_at"]),
            status=status,
            global_indexes=global_indexes,
            pre_allocated=pre_allocated,
            field_metadata=field_metadata,
            field_custom_backend_meta=self.int_map(
                doc["field_custom_backend_meta"], f"{where}: field_custom_backend_meta", dec, held
            ),
            custom_meta=self.int_map(doc["custom_meta"], f"{where}: custom_meta", dec, held),
            keys_mapping=keys_mapping,
            revert_keys_mapping=self.int_map(doc["revert_keys_mapping"], f"{where}: revert_keys_mapping", dec, held),
        )

    def sampler(self, data: Any) -> SamplerState:
        return decode_sampler(data, allow_pickle=self.allow_pickle, where=self.where(layout.sampler_path()))


_PARTITION_KEYS = (
    "partition_id",
    "created_at",
    "global_indexes",
    "pre_allocated",
    "field_name_mapping",
    "field_metadata",
    "field_custom_backend_meta",
    "custom_meta",
    "keys_mapping",
    "revert_keys_mapping",
    "consumption_tasks",
)


def _load(data: Any, where: str) -> Any:
    return strict.load_json(data, where, "TransferQueue controller item", max_bytes=strict.MAX_BYTES)


def _status_tensor(data: Any, item: Item, ndim: int, where: str) -> Any:
    """An int8 status tensor of ``ndim`` dims; its bytes are checked against its shape first."""
    if item.dtype != "int8" or item.shape is None or len(item.shape) != ndim:
        raise _fail(where, f"a status must be an int8 tensor of {ndim} dims, not {item.dtype}{item.shape}")
    return tensor_from_bytes(data, "int8", item.shape)


def _unfast(node: Any, dec: jsonval.Decoder) -> Any:
    if type(node) is list and all(type(x) is int for x in node):
        return node
    return dec.decode(node)


def decode_sampler(data: Any, *, allow_pickle: bool, where: str) -> SamplerState:
    """The sampler item: ``{"class": "module.qualname", "state": ...}`` in typed JSON."""
    doc = jsonval.loads(data, allow_pickle=allow_pickle, where=where)
    if type(doc) is not dict or type(doc.get("class")) is not str or "state" not in doc:
        raise _fail(where, "must be an object with a string class and a state")
    return SamplerState(doc["class"], doc["state"])


def decode(
    partitions: list[str],
    values: dict[str, Any],
    items: dict[str, Item],
    *,
    snapshot: str,
    allow_pickle: bool,
) -> ControllerState:
    """Rebuild a :class:`.ControllerState` from the bytes of its items (``values``, by path).

    ``items`` are the manifest's items for the same paths (their dtype and shape say how to
    read the status tensors). Every bound is checked before the allocation it guards.
    """
    reader = _Reader(snapshot, allow_pickle)
    index_manager = reader.index_manager(values[layout.index_manager_path()])
    out = {
        pid: reader.partition(pid, values[layout.partition_state_path(pid)], values, items) for pid in partitions
    }
    return ControllerState(out, index_manager, reader.sampler(values[layout.sampler_path()]))
