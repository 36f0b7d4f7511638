"""Code that runs inside the TransferQueue controller actor during a snapshot: the capture.

The controller serves every put, get and clear on one ZMQ request thread. The capture holds
the guard lock around that thread's request handler (:mod:`.guard`), so it sees the controller
between two requests, never in the middle of one. Inside the lock it only copies: tensors are
cloned, sets and dicts are copied (two levels deep where the controller updates the inner
dicts in place; elsewhere it replaces values, never mutates them). Encoding to JSON happens
after the lock is released (:func:`capture_encoded`).

The copy is a :class:`.ControllerState`, the common language of the codec
(:mod:`.controller_codec`, :mod:`.controller_decode`), the restore (:mod:`.controller_restore`) and the inspection helpers.
"""

from __future__ import annotations

import copy
import time
from typing import Any

from . import controller_codec
from .controller_state import (
    ControllerState,
    EncodedController,
    FieldState,
    IndexManagerState,
    PartitionState,
    PartitionStatus,
    SamplerState,
    copy_field,
    sampler_class_name,
)
from .guard import between_requests
from .held import drop, hold, take
from .system import in_actor

#: The controller methods the guard lock wraps: its request handler.
CONTROLLER_HANDLER = ("_handle_request",)


def _two_level(d: dict[Any, Any]) -> dict[Any, Any]:
    return {k: dict(v) if isinstance(v, dict) else v for k, v in d.items()}


def _copy_partition(p: Any) -> PartitionState:
    return PartitionState(
        partition_id=p.partition_id,
        created_at=p.created_at,
        status=PartitionStatus(
            production=p.production_status.clone(),
            consumption={task: t.clone() for task, t in p.consumption_status.items()},
            field_name_mapping=dict(p.field_name_mapping),
        ),
        global_indexes=set(p.global_indexes),
        pre_allocated=set(p.pre_allocated_global_indexes),
        field_metadata={name: copy_field(m, FieldState) for name, m in p.field_metadata.items()},
        field_custom_backend_meta=_two_level(p.field_custom_backend_meta),  # updated in place
        custom_meta=dict(p.custom_meta),  # per-sample dicts are replaced, never updated in place
        keys_mapping=dict(p.keys_mapping),
        revert_keys_mapping=dict(p.revert_keys_mapping),
    )


def _capture(self: Any) -> tuple[ControllerState, float]:
    """Copy every partition, the index manager and the sampler state between two requests.

    Returns the copy and how long the controller's requests were held off.
    """
    with between_requests(self, CONTROLLER_HANDLER):
        t0 = time.monotonic()
        partitions = {pid: _copy_partition(p) for pid, p in self.partitions.items()}
        im = self.index_manager
        index_manager = IndexManagerState(
            partition_to_indexes={pid: set(s) for pid, s in im.partition_to_indexes.items()},
            reusable_indexes=list(im.reusable_indexes),
            global_index_counter=int(im.global_index_counter),
            allocated_indexes=set(im.allocated_indexes),
        )
        sampler = SamplerState(sampler_class_name(self.sampler), copy.deepcopy(self.sampler.save_checkpoint()))
        stall = time.monotonic() - t0
    return ControllerState(partitions, index_manager, sampler), stall


@in_actor
def capture_controller(self: Any) -> ControllerState:
    """The controller's whole state, copied between two of its requests."""
    return _capture(self)[0]


@in_actor
def capture_encoded(self: Any, allow_pickle: bool) -> EncodedController:
    """Capture, then encode the JSON items here, after the lock is released.

    What a snapshot needs from the controller: its JSON items as bytes, and per partition the
    status tensors and field mapping that the plan and the reconcile use. Per-sample metadata
    (shapes, tags, keys) thus never crosses to the coordinator as Python objects, which cost
    more to unpickle there than to encode here.
    """
    state, stall = _capture(self)
    return EncodedController(
        json_items=controller_codec.encode(state, allow_pickle=allow_pickle),
        statuses={pid: p.status for pid, p in state.partitions.items()},
        sampler_class=state.sampler.class_name,
        stall_s=stall,
    )


@in_actor
def capture_held(self: Any, capture_id: str) -> float:
    """Capture and keep the copy here for :func:`encode_held`; returns the stall.

    The capture of an asynchronous stage: only the copy under the lock, no encoding, so the
    caller waits for one round trip and the copy.
    """
    state, stall = _capture(self)
    hold(self, capture_id, state)
    return stall


@in_actor
def encode_held(self: Any, capture_id: str, allow_pickle: bool, stall_s: float) -> EncodedController:
    """What :func:`capture_encoded` returns, from the copy :func:`capture_held` kept."""
    state: ControllerState = take(self, capture_id)
    return EncodedController(
        json_items=controller_codec.encode(state, allow_pickle=allow_pickle),
        statuses={pid: p.status for pid, p in state.partitions.items()},
        sampler_class=state.sampler.class_name,
        stall_s=stall_s,
    )


@in_actor
def drop_held(self: Any, capture_id: str) -> None:
    """Forget an abandoned capture's copy."""
    drop(self, capture_id)
