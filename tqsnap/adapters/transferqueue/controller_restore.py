"""Code that runs inside the TransferQueue controller actor during a restore.

A restore is two-phase so that a failure changes nothing (:mod:`.restore`):
:func:`stage_controller` decodes the snapshot's controller items here and keeps the state
aside; :func:`hold_controller` checks the controller is still empty and holds its requests
off; :func:`install_staged_controller` swaps the staged state in inside that hold, after the
units installed their values; :func:`release_controller` ends the hold, and
:func:`discard_controller` drops a staged state that will not be installed.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

from ...errors import RestoreError, TargetNotEmptyError
from ...format.manifest import Item
from . import controller_decode
from .controller_capture import CONTROLLER_HANDLER
from .controller_state import (
    ControllerState,
    ControllerSummary,
    PartitionState,
    copy_field,
    sampler_class_name,
)
from .guard import hold, inside_hold, release
from .system import in_actor

_STAGED = "_tqsnap_staged_controller"


@in_actor
def describe_controller(self: Any) -> ControllerSummary:
    """What a restore needs to know about its target before it touches anything."""
    return ControllerSummary(
        partitions=len(self.partitions),
        global_index_counter=int(self.index_manager.global_index_counter),
        sampler_class=sampler_class_name(self.sampler),
    )


def _build_partition(state: PartitionState) -> Any:
    from transfer_queue.controller import DataPartitionStatus, FieldMeta

    p = DataPartitionStatus(partition_id=state.partition_id)
    p.created_at = state.created_at
    p.production_status = state.status.production
    p.consumption_status = dict(state.status.consumption)
    p.global_indexes = set(state.global_indexes)
    p.pre_allocated_global_indexes = set(state.pre_allocated)
    p.field_name_mapping = dict(state.status.field_name_mapping)
    p.field_metadata = {name: copy_field(m, FieldMeta) for name, m in state.field_metadata.items()}
    p.field_custom_backend_meta = dict(state.field_custom_backend_meta)
    p.custom_meta = dict(state.custom_meta)
    p.keys_mapping = dict(state.keys_mapping)
    p.revert_keys_mapping = dict(state.revert_keys_mapping)
    return p


@in_actor
def stage_controller(
    self: Any,
    token: str,
    partitions: list[str],
    data: dict[str, bytes],
    items: dict[str, Item],
    snapshot: str,
    allow_pickle: bool,
) -> int:
    """Decode a snapshot's controller items here and keep the state aside under ``token``.

    The coordinator has read and verified the items; decoding them here means per-sample
    metadata (shapes, tags, keys) is built once, where it is used, instead of being built in
    the coordinator and pickled over. The decode checks every count the items declare before
    it allocates for it (:mod:`.controller_decode`). Nothing of the live state is touched.
    Returns the number of partitions staged.
    """
    state = controller_decode.decode(partitions, data, items, snapshot=snapshot, allow_pickle=allow_pickle)
    self.__dict__.setdefault(_STAGED, {})[token] = state
    return len(state.partitions)


@in_actor
def discard_controller(self: Any, token: str) -> None:
    self.__dict__.get(_STAGED, {}).pop(token, None)


@in_actor
def hold_controller(self: Any, token: str, force: bool, lease_s: float) -> None:
    """Hold every request off for ``token``, once the controller is seen empty (unless ``force``)."""

    def check() -> None:
        if not force and self.partitions:
            raise TargetNotEmptyError(
                f"the target TransferQueue controller gained {len(self.partitions)} partitions while the "
                "snapshot was being staged; nothing was changed. Restore into an idle TransferQueue"
            )

    hold(self, CONTROLLER_HANDLER, token, lease_s, check)


@in_actor
def release_controller(self: Any, token: str) -> None:
    release(self, token)


@in_actor
def install_staged_controller(self: Any, token: str, load_sampler: bool) -> float:
    """Install what :func:`stage_controller` kept under ``token``, inside ``token``'s hold.

    Returns how long the swap took. Objects are built before the lock is taken; requests
    have been held off since :func:`hold_controller` and stay so until the release.
    """
    state: ControllerState | None = self.__dict__.get(_STAGED, {}).pop(token, None)
    if state is None:
        raise RestoreError(f"no staged restore {token} on the TransferQueue controller; stage it again")
    partitions = {pid: _build_partition(p) for pid, p in state.partitions.items()}
    im_state = state.index_manager
    with inside_hold(self, token, "the TransferQueue controller"):
        t0 = time.monotonic()
        self.partitions = partitions
        im = self.index_manager
        im.partition_to_indexes = defaultdict(set, {k: set(v) for k, v in im_state.partition_to_indexes.items()})
        im.reusable_indexes = list(im_state.reusable_indexes)
        im.global_index_counter = int(im_state.global_index_counter)
        im.allocated_indexes = set(im_state.allocated_indexes)
        if load_sampler:
            self.sampler.load_checkpoint(state.sampler.state)
        else:  # a different sampler class: its cached batches would name samples that changed
            for pid in list(getattr(self.sampler, "_states", {}) or {}):
                self.sampler.clear_cache(pid)
        return time.monotonic() - t0
