"""Code that runs inside the TransferQueue controller actor: capture, describe, install.

The controller serves every put, get and clear on one ZMQ request thread. Capture and
install hold the guard lock around that thread's request handler (:mod:`.guard`), so they see
and leave the controller between two requests, never in the middle of one. Inside the lock
they only copy: tensors are cloned, sets and dicts are copied (two levels deep where the
controller updates the inner dicts in place; elsewhere it replaces values, never mutates
them). Encoding to JSON happens after the lock is released (:func:`capture_encoded`).

The state is a plain dict (see :func:`capture_controller`), the common language of the
codec (:mod:`.controller_codec`) and of :func:`install_staged_controller`.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

from ...errors import RestoreError, TargetNotEmptyError
from .controller_codec import decode_controller, decode_partition_doc, encode_controller_json
from .guard import between_requests, hold, inside_hold, release
from .layout import partition_state_path
from .system import in_actor

_HANDLER = ("_handle_request",)


def _two_level(d: dict[Any, Any]) -> dict[Any, Any]:
    return {k: dict(v) if isinstance(v, dict) else v for k, v in d.items()}


def _copy_partition(p: Any) -> dict[str, Any]:
    return {
        "partition_id": p.partition_id,
        "created_at": p.created_at,
        "production": p.production_status.clone(),
        "consumption": {task: t.clone() for task, t in p.consumption_status.items()},
        "global_indexes": set(p.global_indexes),
        "pre_allocated": set(p.pre_allocated_global_indexes),
        "field_name_mapping": dict(p.field_name_mapping),
        "field_metadata": {
            name: {
                "global_indexes": set(m.global_indexes),
                "dtype": m.dtype,
                "shape": m.shape,
                "is_nested": m.is_nested,
                "is_non_tensor": m.is_non_tensor,
                "per_sample_shapes": dict(m.per_sample_shapes),
            }
            for name, m in p.field_metadata.items()
        },
        "field_custom_backend_meta": _two_level(p.field_custom_backend_meta),  # updated in place
        "custom_meta": dict(p.custom_meta),  # per-sample dicts are replaced, never updated in place
        "keys_mapping": dict(p.keys_mapping),
        "revert_keys_mapping": dict(p.revert_keys_mapping),
    }


def _sampler_class(sampler: Any) -> str:
    cls = type(sampler)
    return f"{cls.__module__}.{cls.__qualname__}"


@in_actor
def capture_controller(self: Any) -> dict[str, Any]:
    """Copy every partition, the index manager and the sampler state between two requests."""
    return _capture(self)


@in_actor
def capture_encoded(self: Any, allow_pickle: bool) -> dict[str, Any]:
    """Capture, then encode the JSON items here, after the lock is released.

    What a snapshot needs from the controller: its JSON items as bytes (``json``, by path),
    and per partition the status tensors and field mapping that the plan and the reconcile
    use. Per-sample metadata (shapes, tags, keys) thus never crosses to the coordinator as
    Python objects, which cost more to unpickle there than to encode here.
    """
    state = _capture(self)
    specs = encode_controller_json(state, allow_pickle=allow_pickle)
    return {
        "partitions": {
            pid: {
                "production": p["production"],
                "consumption": p["consumption"],
                "field_name_mapping": p["field_name_mapping"],
            }
            for pid, p in state["partitions"].items()
        },
        "json": specs,
        "sampler": {"class": state["sampler"]["class"]},
        "stall_s": state["stall_s"],
    }


def _capture(self: Any) -> dict[str, Any]:
    import copy

    with between_requests(self, _HANDLER):
        t0 = time.monotonic()
        partitions = {pid: _copy_partition(p) for pid, p in self.partitions.items()}
        im = self.index_manager
        index_manager = {
            "partition_to_indexes": {pid: set(s) for pid, s in im.partition_to_indexes.items()},
            "reusable_indexes": list(im.reusable_indexes),
            "global_index_counter": int(im.global_index_counter),
            "allocated_indexes": set(im.allocated_indexes),
        }
        sampler_state = copy.deepcopy(self.sampler.save_checkpoint())
        stall = time.monotonic() - t0
    return {
        "partitions": partitions,
        "index_manager": index_manager,
        "sampler": {"class": _sampler_class(self.sampler), "state": sampler_state},
        "stall_s": stall,
    }


def _is_empty(self: Any) -> bool:
    return not self.partitions


@in_actor
def describe_controller(self: Any) -> dict[str, Any]:
    """What a restore needs to know about its target before it touches anything."""
    return {
        "partitions": len(self.partitions),
        "global_index_counter": int(self.index_manager.global_index_counter),
        "sampler_class": _sampler_class(self.sampler),
    }


def _build_partition(state: dict[str, Any]) -> Any:
    from transfer_queue.controller import DataPartitionStatus, FieldMeta

    p = DataPartitionStatus(partition_id=state["partition_id"])
    p.created_at = state["created_at"]
    p.production_status = state["production"]
    p.consumption_status = dict(state["consumption"])
    p.global_indexes = set(state["global_indexes"])
    p.pre_allocated_global_indexes = set(state["pre_allocated"])
    p.field_name_mapping = dict(state["field_name_mapping"])
    p.field_metadata = {
        name: FieldMeta(
            global_indexes=set(m["global_indexes"]),
            dtype=m["dtype"],
            shape=m["shape"],
            is_nested=m["is_nested"],
            is_non_tensor=m["is_non_tensor"],
            per_sample_shapes=dict(m["per_sample_shapes"]),
        )
        for name, m in state["field_metadata"].items()
    }
    p.field_custom_backend_meta = dict(state["field_custom_backend_meta"])
    p.custom_meta = dict(state["custom_meta"])
    p.keys_mapping = dict(state["keys_mapping"])
    p.revert_keys_mapping = dict(state["revert_keys_mapping"])
    return p


_STAGED = "_tqsnap_staged_controller"


@in_actor
def stage_controller(
    self: Any,
    token: str,
    partitions: list[str],
    data: dict[str, bytes],
    items: dict[str, Any],
    allow_pickle: bool,
) -> int:
    """Decode a snapshot's controller items here and keep the state aside under ``token``.

    The coordinator has read and verified the items; decoding them here means per-sample
    metadata (shapes, tags, keys) is built once, where it is used, instead of being built in
    the coordinator and pickled over. Nothing of the live state is touched. Returns the
    number of partitions staged.
    """
    docs = {
        pid: decode_partition_doc(data[partition_state_path(pid)], pid, allow_pickle=allow_pickle)
        for pid in partitions
    }
    state = decode_controller(partitions, docs, data, items, allow_pickle=allow_pickle)
    self.__dict__.setdefault(_STAGED, {})[token] = state
    return len(state["partitions"])


@in_actor
def discard_controller(self: Any, token: str) -> None:
    self.__dict__.get(_STAGED, {}).pop(token, None)


@in_actor
def hold_controller(self: Any, token: str, force: bool, lease_s: float) -> None:
    """Hold every request off for ``token``, once the controller is seen empty (unless ``force``)."""

    def check() -> None:
        if not force and not _is_empty(self):
            raise TargetNotEmptyError(
                f"the target TransferQueue controller gained {len(self.partitions)} partitions while the "
                "snapshot was being staged; nothing was changed. Restore into an idle TransferQueue"
            )

    hold(self, _HANDLER, token, lease_s, check)


@in_actor
def release_controller(self: Any, token: str) -> None:
    release(self, token)


@in_actor
def install_staged_controller(self: Any, token: str, load_sampler: bool) -> float:
    """Install what :func:`stage_controller` kept under ``token``, inside ``token``'s hold.

    Returns how long the swap took. Objects are built before the lock is taken; requests
    have been held off since :func:`hold_controller` and stay so until the release.
    """
    state = self.__dict__.get(_STAGED, {}).pop(token, None)
    if state is None:
        raise RestoreError(f"no staged restore {token} on the TransferQueue controller; stage it again")
    partitions = {pid: _build_partition(p) for pid, p in state["partitions"].items()}
    im_state = state["index_manager"]
    with inside_hold(self, token, "the TransferQueue controller"):
        t0 = time.monotonic()
        self.partitions = partitions
        im = self.index_manager
        im.partition_to_indexes = defaultdict(
            set, {k: set(v) for k, v in im_state["partition_to_indexes"].items()}
        )
        im.reusable_indexes = list(im_state["reusable_indexes"])
        im.global_index_counter = int(im_state["global_index_counter"])
        im.allocated_indexes = set(im_state["allocated_indexes"])
        if load_sampler:
            self.sampler.load_checkpoint(state["sampler"]["state"])
        else:  # a different sampler class: its cached batches would name samples that changed
            for pid in list(getattr(self.sampler, "_states", {}) or {}):
                self.sampler.clear_cache(pid)
        return time.monotonic() - t0
