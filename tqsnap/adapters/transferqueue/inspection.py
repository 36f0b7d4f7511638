"""Read a whole TransferQueue's state and compare two of them, whatever their unit counts.

For verifying a restore (the demo does) and for debugging: :func:`dump_system` captures the
controller the way a snapshot does and reads every unit's values; :func:`diff_states` lists
every difference in words. Both hold the whole state in this process, so they suit test and
demo sizes, not production ones.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from .controller_capture import capture_controller
from .controller_state import ControllerState
from .system import TransferQueueSystem, _ray, in_actor


@dataclass
class SystemDump:
    """A whole TransferQueue: the controller state and every stored value, by field and index.

    ``misplaced`` lists ``(field, gi, unit)`` for values held by a unit other than ``gi % n``.
    """

    state: ControllerState
    data: dict[str, dict[int, Any]]
    misplaced: list[tuple[str, int, int]] = field(default_factory=list)


@in_actor
def _unit_values(self: Any) -> dict[str, dict[int, Any]]:
    data = self.storage_data
    return {name: dict(values) for name, values in data.field_data.items() if values}


def dump_system(system: TransferQueueSystem) -> SystemDump:
    """Capture the controller the way a snapshot does and read every unit's values."""
    ray = _ray()
    state = system.call_controller(capture_controller)
    per_unit = ray.get([u.__ray_call__.remote(_unit_values) for u in system.units])
    data: dict[str, dict[int, Any]] = {}
    misplaced = []
    n = system.n_units
    for k, values in enumerate(per_unit):
        for name, by_gi in values.items():
            for gi, v in by_gi.items():
                if gi % n != k:
                    misplaced.append((name, gi, k))
                data.setdefault(name, {})[gi] = v
    return SystemDump(state, data, misplaced)


def _same(a: Any, b: Any) -> bool:
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and bool(torch.equal(a, b))
        )
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if type(a) is not type(b):
        return False
    if dataclasses.is_dataclass(a):
        return all(_same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def diff_states(a: SystemDump, b: SystemDump, limit: int = 20) -> list[str]:
    """Differences between two dumps; empty when they hold the same TransferQueue state."""
    out: list[str] = []
    sa, sb = a.state, b.state
    for where, dump in (("first", a), ("second", b)):
        if dump.misplaced:
            out.append(f"{where}: {len(dump.misplaced)} values live on the wrong unit")
    if sorted(sa.partitions) != sorted(sb.partitions):
        out.append(f"partitions differ: {sorted(sa.partitions)} vs {sorted(sb.partitions)}")
    for pid in sorted(set(sa.partitions) & set(sb.partitions)):
        pa, pb = sa.partitions[pid], sb.partitions[pid]
        for f in dataclasses.fields(pa):
            if not _same(getattr(pa, f.name), getattr(pb, f.name)):
                out.append(f"partition {pid!r}: {f.name} differs")
    if not _same(sa.index_manager, sb.index_manager):
        out.append("index manager differs")
    if not _same(sa.sampler.state, sb.sampler.state):
        out.append("sampler state differs")
    if sorted(a.data) != sorted(b.data):
        out.append(f"fields differ: {sorted(a.data)} vs {sorted(b.data)}")
    for name in sorted(set(a.data) & set(b.data)):
        va, vb = a.data[name], b.data[name]
        if va.keys() != vb.keys():
            out.append(f"field {name!r}: {len(va)} vs {len(vb)} samples")
            continue
        bad = [gi for gi in va if not _same(va[gi], vb[gi])]
        if bad:
            out.append(f"field {name!r}: {len(bad)} values differ (first: sample {bad[0]})")
    return out[:limit]
