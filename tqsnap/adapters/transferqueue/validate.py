"""Checks a restore makes before it touches the target TransferQueue.

Each check raises a typed error that names what is wrong and what to do. Together with the
staging phase (every shard fetched and verified against its hash, every value decoded, on the
target units but aside from their live data) they make a failed restore change nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...engine import SnapshotReader
from ...errors import (
    FormatError,
    PickleNotAllowedError,
    RestoreError,
    TargetNotEmptyError,
    UnsupportedFormatError,
)
from ...format.manifest import Item
from .controller_restore import describe_controller
from .controller_state import ControllerSummary
from .layout import LAYOUT_VERSION, MAX_BLOCK_SIZE, MAX_UNITS, count_runs, parse_data_path
from .system import TransferQueueSystem
from .unit_restore import describe_unit


@dataclass
class TQHeader:
    """A TransferQueue snapshot's header (``manifest.extra``), checked."""

    layout: int
    units: int
    block_size: int
    partitions: list[str]
    consumption_tasks: dict[str, list[str]]


def _header(reader: SnapshotReader) -> TQHeader:
    extra = reader.manifest.extra
    name = reader.name
    layout = extra.get("tq_layout")
    if type(layout) is not int:
        raise FormatError(f"snapshot {name} has no TransferQueue layout header (extra.tq_layout)")
    if layout > LAYOUT_VERSION:
        raise UnsupportedFormatError(
            f"snapshot {name} uses TransferQueue layout {layout}; this tqsnap reads up to "
            f"{LAYOUT_VERSION}. Upgrade tqsnap to restore it"
        )
    for key in ("units", "partitions", "consumption_tasks", "block_size"):
        if key not in extra:
            raise FormatError(f"snapshot {name}: TransferQueue header lacks {key!r}")
    units, block_size = extra["units"], extra["block_size"]
    if type(units) is not int or not 1 <= units <= MAX_UNITS:
        raise FormatError(f"snapshot {name}: TransferQueue header names {units!r:.40} units, not 1 to {MAX_UNITS}")
    if type(block_size) is not int or not 1 <= block_size <= MAX_BLOCK_SIZE:
        raise FormatError(f"snapshot {name}: block_size {block_size!r:.40} is not an integer from 1 to {MAX_BLOCK_SIZE}")
    partitions, tasks = extra["partitions"], extra["consumption_tasks"]
    if type(partitions) is not list or not all(type(p) is str for p in partitions) or len(set(partitions)) != len(
        partitions
    ):
        raise FormatError(f"snapshot {name}: TransferQueue header's partitions are not distinct strings")
    if type(tasks) is not dict or not all(
        type(ts) is list and all(type(t) is str for t in ts) and len(set(ts)) == len(ts) for ts in tasks.values()
    ):
        raise FormatError(f"snapshot {name}: TransferQueue header's consumption_tasks are not lists of task names")
    return TQHeader(layout, units, block_size, list(partitions), {p: list(ts) for p, ts in tasks.items()})


def _check_data_item(name: str, path: str, item: Item, block_size: int) -> None:
    """A data item's path and sample runs agree with the layout, checked without expanding them.

    Its samples lie in its block (``gi // block_size``) and on its unit (``gi % n == k``), so it
    declares at most ``block_size`` of them; and it declares no more than its bytes can hold.
    """
    where = f"snapshot {name}: data item {path!r:.200}"
    parsed = parse_data_path(path)
    if parsed is None or type(item.meta.get("gi")) is not list:
        raise FormatError(f"{where} is malformed")
    _, _, block, unit, units = parsed
    lo = block * block_size
    count = count_runs(item.meta["gi"], f"{where}: meta.gi", lo=lo, hi=lo + block_size)
    for run in item.meta["gi"]:
        step = run[2] if len(run) == 3 else 1
        if run[0] % units != unit or (run[1] > 1 and step % units):
            raise FormatError(f"{where}: meta.gi run {run!r:.60} holds samples of another unit than {unit} of {units}")
    if count > block_size:
        raise FormatError(f"{where} declares {count} samples, more than its block of {block_size}")
    enc = item.meta.get("enc")
    rows = item.shape[0] if item.shape else None
    if enc == "dense" and rows != count:
        raise FormatError(f"{where}: a dense block of shape {item.shape} cannot hold {count} samples")
    if enc == "jagged":
        listed = item.meta.get("lens", item.meta.get("shapes"))
        if type(listed) is not list or len(listed) != count:
            raise FormatError(f"{where}: a jagged block must list one length or shape for each of {count} samples")
    if enc == "json" and 2 * count + 1 > max(item.size, 2):
        raise FormatError(f"{where}: a JSON block of {item.size} bytes cannot hold {count} values")


def check_manifest(reader: SnapshotReader) -> TQHeader:
    """The snapshot's TransferQueue header; refuses layouts this version cannot read.

    Every count the header and the data items declare is checked here, against the limits in
    :mod:`.layout` and against what the snapshot really holds, before a restore allocates
    anything for it.
    """
    header = _header(reader)
    for path, item in reader.items.items():
        if path.startswith("d/"):
            _check_data_item(reader.name, path, item, header.block_size)
    return header


def check_pickle(reader: SnapshotReader, allow_pickle: bool) -> None:
    """Refuse pickled sample values up front unless the caller allows them."""
    if allow_pickle:
        return
    for path, item in reader.items.items():
        if item.kind == "pickle" or item.meta.get("pickle"):
            raise PickleNotAllowedError(
                f"snapshot {reader.name} holds pickled values in {path!r}; loading them could run code. "
                "Pass allow_pickle=True only if you trust everyone who can write this repository"
            )


def describe_target(system: TransferQueueSystem) -> tuple[ControllerSummary, list[dict[str, Any]]]:
    controller, *units = system.collect(
        [
            system.start_controller(describe_controller),
            *system.start_units(describe_unit, [()] * system.n_units),
        ]
    )
    return controller, units


def check_target(system: TransferQueueSystem, force: bool) -> ControllerSummary:
    """Refuse a target that holds data, unless ``force``; return the controller's description."""
    controller, units = describe_target(system)
    if force:
        return controller
    held = sum(u["keys"] for u in units)
    if controller.partitions or held:
        raise TargetNotEmptyError(
            f"the target TransferQueue is not empty ({controller.partitions} partitions, {held} samples "
            "in its storage units); restore into a freshly started TransferQueue, or pass force=True to "
            "replace everything it holds"
        )
    return controller


def check_sampler(snapshot_class: str, state: Any, target_class: str, name: str) -> bool:
    """Whether to load the saved sampler state into the target's sampler.

    A different sampler class cannot take another's state; that is fine while the saved state is
    empty (nothing was cached), and an error otherwise.
    """
    if snapshot_class == target_class:
        return True
    cached = state.get("_states") if isinstance(state, dict) else state
    if cached:
        raise RestoreError(
            f"snapshot {name} holds state of sampler {snapshot_class}, but the target uses {target_class}; "
            "start the target TransferQueue with the same sampler"
        )
    return False
