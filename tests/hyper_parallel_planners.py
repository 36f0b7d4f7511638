"""hyper_parallel's save and load sequences, and planners for them, written from its interface.

hyper_parallel cannot be installed here, so these follow the description of its public
interface (``hyper_parallel/core/distributed_checkpoint``: ``api.save``/``api.load``,
``planner.py``, ``metadata.py``): :func:`save` and :func:`load` call the storage writer and
reader exactly in that documented order, every rank or the coordinator as documented, with
torch.distributed collectives in between (or none for one rank). The planners split every
tensor by rows across ranks, so a load on a different number of ranks reads parts of several
saved chunks (resharding); non-tensor values go through ``BYTE_IO`` as pickled bytes, which
the load planner unpickles in ``apply_bytes`` exactly as hyper_parallel's standard planner does.

The types are those ``tqsnap.adapters.hyper_parallel.types`` exposes: hyper_parallel's own
when it is importable, stand-ins with the same fields otherwise.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import torch
import torch.distributed as dist

from tqsnap.adapters.hyper_parallel.types import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    LoadItemType,
    LoadPlan,
    LoadPlanner,
    Metadata,
    MetadataIndex,
    ReadItem,
    SavePlan,
    SavePlanner,
    TensorProperties,
    TensorStorageMetadata,
    WriteItem,
    WriteItemType,
)

#: What unpickling a :class:`Marker` did, in this process: the proof that code ran.
MARKER_RAN: list[str] = []


class Marker:
    """A value whose unpickling runs code (it records itself in :data:`MARKER_RAN`)."""

    def __init__(self, note: str) -> None:
        self.note = note

    def __setstate__(self, state: dict[str, Any]) -> None:
        MARKER_RAN.append(state["note"])
        self.__dict__.update(state)


def row_range(rows: int, rank: int, world: int) -> tuple[int, int]:
    """Rows ``[start, end)`` of ``rows`` that ``rank`` of ``world`` owns (contiguous, near equal)."""
    return rows * rank // world, rows * (rank + 1) // world


# --- save --------------------------------------------------------------------------------------


class RowSavePlanner(SavePlanner):
    """Every tensor of the (full) state dict is split by rows; rank r writes its rows.

    Non-tensor values are written once, by the coordinator, as ``BYTE_IO`` items holding
    ``pickle.dumps(value)``. ``version`` is the ``Metadata.version`` the global plan reports.
    """

    def __init__(self, world: int, version: str = "2.0") -> None:
        self.world = world
        self.version = version
        self.rank = 0
        self.is_coordinator = True
        self.state_dict: dict[str, Any] = {}
        self._chunks: dict[tuple[str, tuple[int, ...]], torch.Tensor] = {}

    def configure_planner(self, state_dict: dict[str, Any], **kwargs: Any) -> None:
        self.state_dict = state_dict
        self.rank = kwargs.get("rank", 0)
        self.is_coordinator = kwargs.get("is_coordinator", self.rank == 0)

    def build_local_plan(self) -> SavePlan:
        items: list[WriteItem] = []
        self._chunks = {}
        for fqn, value in sorted(self.state_dict.items()):
            if not isinstance(value, torch.Tensor):
                if self.is_coordinator:
                    # A stream is stored as it is (e.g. torch.save output); anything else pickled.
                    data = value if isinstance(value, io.BytesIO) else pickle.dumps(value)
                    items.append(WriteItem(MetadataIndex(fqn), WriteItemType.BYTE_IO, bytes_io_data=data))
                continue
            start, end = row_range(value.shape[0], self.rank, self.world)
            if start == end:
                continue
            offsets = (start,) + (0,) * (value.dim() - 1)
            rows = value[start:end]
            self._chunks[(fqn, offsets)] = rows
            chunk = ChunkStorageMetadata(offsets=offsets, sizes=tuple(rows.shape))
            props = TensorProperties(dtype=str(value.dtype))
            tensor_data = {"chunk": chunk, "properties": props, "size": tuple(value.shape)}
            items.append(WriteItem(MetadataIndex(fqn, offsets), WriteItemType.TENSOR, tensor_data=tensor_data))
        return SavePlan(items=items)

    def build_global_plan(self, all_plans: list[SavePlan]) -> tuple[list[SavePlan], Metadata]:
        """Coordinator: number every chunk and describe the whole checkpoint."""
        state: dict[str, Any] = {}
        plans = []
        for plan in all_plans:
            items = []
            for item in plan.items:
                fqn = item.index.fqn
                if item.type == WriteItemType.BYTE_IO:
                    state[fqn] = BytesStorageMetadata()
                    items.append(item)
                    continue
                td = item.tensor_data
                smd = state.setdefault(fqn, TensorStorageMetadata(td["properties"], td["size"], []))
                smd.chunks.append(td["chunk"])
                index = MetadataIndex(fqn, item.index.offset, len(smd.chunks) - 1)
                items.append(WriteItem(index, item.type, td, item.bytes_io_data))
            plans.append(SavePlan(items=items, storage_data=plan.storage_data, planner_data=plan.planner_data))
        planner_data = {fqn: (fqn,) for fqn in state}
        return plans, Metadata(state_dict_metadata=state, planner_data=planner_data, version=self.version)

    def finalize_plan(self, plan: SavePlan) -> SavePlan:
        return plan

    def get_tensor(self, index: MetadataIndex) -> torch.Tensor:
        return self._chunks[(index.fqn, tuple(index.offset))]


# --- load --------------------------------------------------------------------------------------


class RowLoadPlanner(LoadPlanner):
    """The state dict holds this rank's rows of each tensor (``row_range`` of the global size)
    and the non-tensor values to replace; reads whatever saved chunks overlap those rows."""

    def __init__(self, world: int) -> None:
        self.world = world
        self.rank = 0
        self.state_dict: dict[str, Any] = {}
        self.metadata: Metadata | None = None
        self._starts: dict[str, int] = {}

    def configure_planner(self, state_dict: dict[str, Any], metadata: Metadata, **kwargs: Any) -> None:
        self.state_dict = state_dict
        self.metadata = metadata
        self.rank = kwargs.get("rank", 0)

    def build_local_plan(self) -> LoadPlan:
        assert self.metadata is not None
        items: list[ReadItem] = []
        for fqn in sorted(self.state_dict):
            smd = self.metadata.state_dict_metadata[fqn]
            if isinstance(smd, BytesStorageMetadata):
                index = MetadataIndex(fqn)
                items.append(ReadItem(LoadItemType.BYTE_IO, index, (), index, (), ()))
                continue
            start, end = row_range(smd.size[0], self.rank, self.world)
            self._starts[fqn] = start
            rest = tuple(smd.size[1:])
            for chunk in smd.chunks:
                lo, hi = max(start, chunk.offsets[0]), min(end, chunk.offsets[0] + chunk.sizes[0])
                if lo >= hi:
                    continue
                zeros = (0,) * len(rest)
                items.append(
                    ReadItem(
                        LoadItemType.TENSOR,
                        dest_index=MetadataIndex(fqn, (start,) + zeros),
                        dest_offsets=(lo - start,) + zeros,
                        storage_index=MetadataIndex(fqn, tuple(chunk.offsets)),
                        storage_offsets=(lo - chunk.offsets[0],) + zeros,
                        lengths=(hi - lo,) + rest,
                    )
                )
        return LoadPlan(items=items)

    def build_global_plan(self, all_plans: list[LoadPlan]) -> list[LoadPlan]:
        return all_plans

    def finalize_plan(self, plan: LoadPlan) -> LoadPlan:
        return plan

    def acquire_tensor(self, read_item: ReadItem) -> torch.Tensor:
        dest = self.state_dict[read_item.dest_index.fqn]
        for dim, (offset, length) in enumerate(zip(read_item.dest_offsets, read_item.lengths, strict=True)):
            dest = dest.narrow(dim, offset, length)
        return dest

    def apply_tensor(self, read_item: ReadItem, tensor: Any) -> None:
        dest = self.acquire_tensor(read_item)
        if dest.data_ptr() != tensor.data_ptr():
            dest.copy_(torch.as_tensor(tensor))

    def apply_bytes(self, read_item: ReadItem, value: bytes) -> None:
        self.state_dict[read_item.dest_index.fqn] = pickle.loads(value)


# --- the documented call sequences ------------------------------------------------------------


def _collective(world: int) -> bool:
    return world > 1 and dist.is_available() and dist.is_initialized()


def _gather(obj: Any, world: int, group: Any = None) -> list[Any]:
    if not _collective(world):
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj, group=group)
    return out


def _from_coordinator(rank: int, world: int, compute: Any, group: Any = None) -> Any:
    """Run ``compute`` on the coordinator and hand its result (or its failure) to every rank."""
    box: list[Any] = [None]
    if rank == 0:
        try:
            box[0] = ("ok", compute())
        except Exception as exc:  # noqa: BLE001 - re-raised on every rank
            if not _collective(world):
                raise
            box[0] = ("error", f"{type(exc).__name__}: {exc}")
    if _collective(world):
        dist.broadcast_object_list(box, src=0, group=group)
    status, payload = box[0]
    if status != "ok":
        raise RuntimeError(f"coordinator failed: {payload}")
    return payload


def save(
    state_dict: dict[str, Any],
    writer: Any,
    planner: SavePlanner,
    *,
    rank: int = 0,
    world: int = 1,
    checkpoint_id: Any = None,
    every_rank_global_plan: bool = False,
    group: Any = None,
) -> Metadata:
    """hyper_parallel's save: the six documented steps, in order.

    ``every_rank_global_plan`` follows the newer sequence, in which every rank builds the
    global plan and hands only its own plan to ``optimize_global_plan``. ``group`` is the
    process group of the ``world`` ranks taking part (the default group when None).
    """
    if checkpoint_id is not None:
        writer.initialize_writer(checkpoint_id)
    writer.configure_writer(is_coordinator=rank == 0, rank=rank, use_collectives=world > 1)
    planner.configure_planner(state_dict, is_coordinator=rank == 0, rank=rank)
    local = writer.optimize_local_plan(planner.build_local_plan())
    all_local = _gather(local, world, group)
    if every_rank_global_plan:
        plans, metadata = planner.build_global_plan(all_local)
        mine = writer.optimize_global_plan(plans[rank])
    else:

        def global_plan() -> tuple[list[SavePlan], Metadata]:
            plans, metadata = planner.build_global_plan(all_local)
            return writer.optimize_global_plan(plans), metadata

        plans, metadata = _from_coordinator(rank, world, global_plan, group)
        mine = plans[rank]
    results = writer.execute_write(planner.finalize_plan(mine), planner)
    all_results = _gather(results, world, group)
    _from_coordinator(rank, world, lambda: writer.finalize_checkpoint(metadata, all_results), group)
    return metadata


def load(
    state_dict: dict[str, Any],
    reader: Any,
    planner: LoadPlanner,
    *,
    rank: int = 0,
    world: int = 1,
    checkpoint_id: Any = None,
    group: Any = None,
) -> None:
    """hyper_parallel's load: the documented steps, in order (``group`` as for :func:`save`)."""
    if checkpoint_id is not None:
        reader.initialize_reader(checkpoint_id)
    metadata = reader.load_metadata()
    planner.configure_planner(state_dict, metadata, is_coordinator=rank == 0, rank=rank)
    reader.configure_reader(metadata, is_coordinator=rank == 0, rank=rank)
    local = reader.optimize_local_plan(planner.build_local_plan())
    all_local = _gather(local, world, group)
    plans = _from_coordinator(
        rank, world, lambda: reader.optimize_global_plan(planner.build_global_plan(all_local)), group
    )
    reader.execute_read(planner.finalize_plan(plans[rank]), planner)
