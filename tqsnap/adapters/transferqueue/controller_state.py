"""The TransferQueue controller's state, as tqsnap copies, saves and installs it.

These dataclasses mirror what the controller keeps (``DataPartitionStatus``, ``FieldMeta``,
the index manager, the sampler) in plain Python values and int8 tensors, so one shape is
shared by the capture in the controller actor (:mod:`.controller_capture`), the codec
(:mod:`.controller_codec`, :mod:`.controller_decode`), the install
(:mod:`.controller_restore`) and the inspection helpers. They hold no TransferQueue objects,
so they pickle between processes without TransferQueue's classes.

:class:`PartitionStatus` is the part of a partition the snapshot's coordinator needs (the plan
routes produced samples by it, the reconcile clears what no unit held); it travels alone, while
the rest of a partition is encoded to JSON inside the controller actor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

F = TypeVar("F")


@dataclass
class PartitionStatus:
    """A partition's production and consumption status, and the columns of its fields.

    ``production`` is an int8 tensor ``[rows, fields]`` indexed by global index and by the
    column ``field_name_mapping`` gives each field; ``consumption`` holds one int8 tensor
    ``[rows]`` per consumer task, in the controller's order.
    """

    production: Any
    consumption: dict[str, Any]
    field_name_mapping: dict[str, int]


@dataclass
class FieldState:
    """One field's metadata in a partition (TransferQueue's ``FieldMeta``)."""

    global_indexes: set[int]
    dtype: Any
    shape: Any
    is_nested: Any
    is_non_tensor: Any
    per_sample_shapes: dict[int, Any]


def copy_field(meta: Any, make: Callable[..., F]) -> F:
    """``make(...)`` over a copy of one field's metadata: a ``FieldMeta`` or a :class:`FieldState`.

    The capture copies TransferQueue's ``FieldMeta`` into a :class:`FieldState` and the install
    copies back, so both directions live here: the index set and per-sample shapes are copied
    (the controller updates them in place), the other values are shared (it replaces them).
    """
    return make(
        global_indexes=set(meta.global_indexes),
        dtype=meta.dtype,
        shape=meta.shape,
        is_nested=meta.is_nested,
        is_non_tensor=meta.is_non_tensor,
        per_sample_shapes=dict(meta.per_sample_shapes),
    )


@dataclass
class PartitionState:
    """Everything TransferQueue keeps for one partition (``DataPartitionStatus``)."""

    partition_id: str
    created_at: Any
    status: PartitionStatus
    global_indexes: set[int]
    pre_allocated: set[int]
    field_metadata: dict[str, FieldState]
    field_custom_backend_meta: dict[int, Any]
    custom_meta: dict[int, Any]
    keys_mapping: dict[Any, int]
    revert_keys_mapping: dict[int, Any]


@dataclass
class IndexManagerState:
    """The controller's global index allocator; ``reusable_indexes`` is a FIFO, order kept."""

    partition_to_indexes: dict[str, set[int]]
    reusable_indexes: list[int]
    global_index_counter: int
    allocated_indexes: set[int]


@dataclass
class SamplerState:
    """The sampler's class (``module.qualname``) and its ``save_checkpoint()`` state."""

    class_name: str
    state: Any


@dataclass
class ControllerState:
    """A whole controller: its partitions by id, the index manager and the sampler."""

    partitions: dict[str, PartitionState]
    index_manager: IndexManagerState
    sampler: SamplerState


@dataclass
class EncodedController:
    """What a snapshot takes from the controller actor: JSON items as bytes, and the statuses.

    ``json_items`` maps item path to a :class:`~.controller_codec.ItemSpec` (the partition
    documents, the index manager and the sampler). ``statuses`` are the tensors and field
    mapping the coordinator plans and reconciles with; their items are made only after the
    reconcile (:func:`.controller_codec.controller_items`). ``stall_s`` is how long the
    controller's requests were held off.
    """

    json_items: dict[str, Any]
    statuses: dict[str, PartitionStatus]
    sampler_class: str
    stall_s: float = 0.0


@dataclass
class ControllerSummary:
    """What a restore needs to know about its target controller before it touches anything."""

    partitions: int
    global_index_counter: int
    sampler_class: str


def sampler_class_name(sampler: Any) -> str:
    cls = type(sampler)
    return f"{cls.__module__}.{cls.__qualname__}"
