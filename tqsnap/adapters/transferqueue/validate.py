"""Checks a restore makes before it touches the target TransferQueue.

Each check raises a typed error that names what is wrong and what to do. Together with the
staging phase (every shard fetched and verified against its hash, every value decoded, on the
target units but aside from their live data) they make a failed restore change nothing.
"""

from __future__ import annotations

from typing import Any

from ...engine import SnapshotReader
from ...errors import (
    FormatError,
    PickleNotAllowedError,
    RestoreError,
    TargetNotEmptyError,
    UnsupportedFormatError,
)
from .capture import describe_controller
from .layout import LAYOUT_VERSION, parse_data_path
from .system import TransferQueueSystem
from .unit_restore import describe_unit


def check_manifest(reader: SnapshotReader) -> dict[str, Any]:
    """The snapshot's TransferQueue header; refuses layouts this version cannot read."""
    extra = reader.manifest.extra
    layout = extra.get("tq_layout")
    if not isinstance(layout, int):
        raise FormatError(f"snapshot {reader.name} has no TransferQueue layout header (extra.tq_layout)")
    if layout > LAYOUT_VERSION:
        raise UnsupportedFormatError(
            f"snapshot {reader.name} uses TransferQueue layout {layout}; this tqsnap reads up to "
            f"{LAYOUT_VERSION}. Upgrade tqsnap to restore it"
        )
    for key in ("units", "partitions", "consumption_tasks", "block_size"):
        if key not in extra:
            raise FormatError(f"snapshot {reader.name}: TransferQueue header lacks {key!r}")
    for path, item in reader.items.items():
        if path.startswith("d/") and (parse_data_path(path) is None or "gi" not in item.meta):
            raise FormatError(f"snapshot {reader.name}: data item {path!r} is malformed")
    return extra


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


def describe_target(system: TransferQueueSystem) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    controller, *units = system.collect(
        [
            system.start_controller(describe_controller),
            *system.start_units(describe_unit, [()] * system.n_units),
        ]
    )
    return controller, units


def check_target(system: TransferQueueSystem, force: bool) -> dict[str, Any]:
    """Refuse a target that holds data, unless ``force``; return the controller's description."""
    controller, units = describe_target(system)
    if force:
        return controller
    held = sum(u["keys"] for u in units)
    if controller["partitions"] or held:
        raise TargetNotEmptyError(
            f"the target TransferQueue is not empty ({controller['partitions']} partitions, {held} samples "
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
