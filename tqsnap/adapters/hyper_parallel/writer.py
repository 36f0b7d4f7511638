"""``tqsnap.hyper_parallel.Writer``: hyper_parallel's ``StorageWriter``, saving into a tqsnap stream.

hyper_parallel drives a save in six steps (``hyper_parallel.core.distributed_checkpoint.api``);
this writer maps them onto one tqsnap snapshot, with the DCP adapter's machinery
(:mod:`tqsnap.adapters.checkpoint_ranks`, :mod:`tqsnap.adapters.dcp.layout`):

1. ``initialize_writer(checkpoint_id)`` (every rank, when the caller names a checkpoint):
   ``[URL#]STREAM`` picks the stream, optionally another repository.
2. ``configure_writer(is_coordinator, rank=, use_collectives=)`` (every rank, every save): the
   coordinator begins the :class:`~tqsnap.engine.SnapshotWriter` (server time, parent).
3. ``optimize_local_plan`` (every rank): the planner's plan passes through unchanged.
4. ``optimize_global_plan(plans)`` (coordinator, with every rank's plan): each plan gets
   ``storage_data`` naming the parent every rank deduplicates against. Newer hyper_parallel
   calls it on every rank with that rank's plan alone, and a cached plan skips it: a rank
   without the coordinator's word finds the parent itself (read-only, confirmed shards only).
5. ``execute_write(plan, planner)`` (every rank, synchronous): cut the rank's items into
   deterministic shards, reuse those the parent holds, upload the rest; the rank's pack result
   rides to the coordinator on its first ``WriteResult``.
6. ``finalize_checkpoint(metadata, results)`` (coordinator): merge every rank's references,
   encode ``Metadata`` as JSON and commit ONE manifest with put-if-absent. Until that put
   lands no reader sees the checkpoint; a rank that dies first leaves nothing visible.

With ``stage=job.token`` (:mod:`tqsnap.job`) the save is one *part* of a job snapshot, as with
``tqsnap.dcp.Writer``: the coordinator begins a :class:`~tqsnap.engine.job.PartStager` instead,
ranks deduplicate against the same part of the job's parent, and step 6 commits nothing but
leaves a :class:`~tqsnap.engine.job.StagedPart` in ``writer.staged`` for ``job.add``.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import pickle
from dataclasses import dataclass
from typing import Any

from ...engine import PackOptions, PackResult, SnapshotWriter
from ...engine.job import PartStager
from ...errors import ManifestError, ShapeMismatchError
from ...format.manifest import SnapshotId
from ..checkpoint_ranks import PackEntry, adopt_earliest_clock, pack_entries, rank_reuse_index, save_id
from ..checkpoint_writer import CheckpointWriterSettings
from ..dcp.repos import RepoLike, repo_url
from ..dcp.writer import SavePlanData
from ..tensors import dtype_name, tensor_bytes
from .layout import (
    EXTRA_KEY,
    KIND,
    CheckpointRef,
    bytes_item_path,
    dtype_key,
    parse_hp_checkpoint_id,
    tensor_item_path,
)
from .metadata_json import check_version, encode_metadata
from .types import MetadataIndex, SavePlan, StorageInfo, StorageWriter, WriteResult, is_byte_io

log = logging.getLogger(__name__)

_STORAGE_INFO_FIELDS = {f.name for f in dataclasses.fields(StorageInfo)}


@dataclass
class ItemInfo(StorageInfo):
    """``WriteResult.storage_data``: hyper_parallel's ``StorageInfo`` for one item, plus tqsnap's part.

    ``relative_path`` is the item's path inside the snapshot, ``offset`` 0 and ``length`` its
    bytes. The first result of each rank also carries the rank's pack result (references,
    no tensor bytes), so it reaches the coordinator through hyper_parallel's own gather.
    """

    pack: PackResult | None = None
    #: The server time this rank began its own save, when it had no word from the coordinator.
    began_at: float | None = None


def storage_info(
    path: str, length: int, pack: PackResult | None = None, began_at: float | None = None
) -> StorageInfo:
    """A ``StorageInfo`` for an item (an :class:`ItemInfo` when it carries a pack result)."""
    fields: dict[str, Any] = {"relative_path": path, "offset": 0, "length": int(length)}
    if "tensor_key" in _STORAGE_INFO_FIELDS:  # later hyper_parallel versions
        fields["tensor_key"] = None
    return ItemInfo(**fields, pack=pack, began_at=began_at) if pack is not None else StorageInfo(**fields)


def item_path(item: Any) -> str:
    """The deterministic item path of a write item: the same chunk gets the same path every save."""
    if is_byte_io(item.type):
        return bytes_item_path(item.index.fqn)
    return tensor_item_path(item.index.fqn, item.index.offset)


class Writer(CheckpointWriterSettings, StorageWriter):
    """Save hyper_parallel checkpoints as incremental, deduplicated, atomically committed snapshots.

    ``save(state_dict, storage_writer=Writer("s3://bucket/prefix", stream="run-1"))`` commits
    the next snapshot of ``run-1``. Every rank constructs its writer with the same arguments;
    reuse one writer for every save of a run. Arguments are those of ``tqsnap.dcp.Writer``:

    Args:
        url: repository URL (``s3://``, ``obs://``, ``file://``, a path, ``memory://``), an open
            store or a :class:`~tqsnap.engine.Repository`. Multi-process saves need a URL.
        stream: the stream that receives one snapshot per save.
        storage_options: passed to the store (``endpoint_url``, credentials, ...).
        options: how to cut and upload shards (:class:`~tqsnap.engine.PackOptions`).
        metadata: JSON user metadata stored with each snapshot.
        parent: ``"latest"``, a :class:`~tqsnap.format.SnapshotId` to fork from, or ``None``.
        create: create the repository on first use if it does not exist.
        stage: a job token (``job.token`` from :func:`tqsnap.job.begin`): stage this save as a
            part of that job instead of committing it; the coordinator rank's :attr:`staged`
            then holds the part for ``job.add``.
        part: the part's name in the job (with ``stage``; default ``"trainer"``).
    """

    def __init__(
        self,
        url: RepoLike,
        stream: str = "default",
        *,
        storage_options: dict[str, Any] | None = None,
        options: PackOptions | None = None,
        metadata: dict[str, Any] | None = None,
        parent: SnapshotId | str | None = "latest",
        create: bool = True,
        stage: str | None = None,
        part: str | None = None,
    ) -> None:
        super().__init__()
        self._settle(
            url,
            stream,
            storage_options=storage_options,
            options=options,
            metadata=metadata,
            parent=parent,
            create=create,
            stage=stage,
            part=part,
            caller="tqsnap.hyper_parallel.Writer",
        )
        self._begun: SnapshotWriter | PartStager | None = None

    @property
    def last_checkpoint_id(self) -> str | None:
        """``<url>#<stream>@<seq>`` of the last committed save (coordinator only), for a ``Reader``."""
        if self.last_snapshot is None:
            return None
        return str(CheckpointRef(repo_url(self.url), self.last_snapshot.stream, str(self.last_snapshot.seq)))

    # --- the six steps -----------------------------------------------------------------------

    def initialize_writer(self, checkpoint_id: str | os.PathLike[str] | None = None) -> None:
        """Every rank: ``[URL#]STREAM`` switches the stream or repository; ``None`` keeps them."""
        if checkpoint_id is None:
            return
        ref = parse_hp_checkpoint_id(checkpoint_id)
        if ref.snapshot not in (None, "latest"):
            raise ValueError(
                f"checkpoint id {checkpoint_id!r} names snapshot {ref.snapshot!r}; a save always commits "
                "the next snapshot of its stream, so give only '[URL#]STREAM'"
            )
        if ref.url is not None and ref.url != repo_url(self.url):
            self.url, self._repo = ref.url, None
        self.stream = ref.stream
        self._begun = None

    def configure_writer(self, is_coordinator: bool, **kwargs: Any) -> None:
        """Every rank, each save: note the rank; the coordinator begins the snapshot."""
        self.is_coordinator = is_coordinator
        self.rank = kwargs.get("rank")
        self._begun = None
        if not kwargs.get("use_collectives", True) and _world_size() > 1:
            raise ValueError(
                "tqsnap.hyper_parallel.Writer commits ONE snapshot for all ranks, which needs the ranks' "
                "write results on the coordinator; call save with use_collectives=True"
            )
        self.staged = None
        if is_coordinator:
            self._begun = self._begin()
            log.debug("save %s of %s begins", save_id(self._begun), self.stream)

    def optimize_local_plan(self, plan: SavePlan) -> SavePlan:
        """Every rank: the planner already decided what this rank writes."""
        return plan

    def optimize_global_plan(self, plans: list[SavePlan]) -> list[SavePlan]:
        """Coordinator: tell every rank which parent to deduplicate against.

        Given one plan instead of a list (hyper_parallel versions that run the global plan on
        every rank), a rank returns it unchanged, or on the coordinator tagged alike.
        """
        if not isinstance(plans, list):
            return self._tag(plans) if self._begun is not None else plans
        if self._begun is None:
            raise RuntimeError(
                "optimize_global_plan() called before configure_writer(is_coordinator=True); this is "
                "not hyper_parallel's save sequence"
            )
        return [self._tag(plan) for plan in plans]

    def execute_write(self, plan: SavePlan, planner: Any) -> list[WriteResult]:
        """Every rank: pack, hash and upload this rank's items; return where each one went."""
        data = plan.storage_data if isinstance(plan.storage_data, SavePlanData) else None
        entries = [self._entry(item, planner) for item in plan.items]
        pack, began_at = None, None
        if entries:
            repo = self._repository()
            reuse, began_at = rank_reuse_index(repo, data, self._begun, self._begin, self.rank)
            pack = pack_entries(repo, reuse, self.options, [entry for _, entry in entries])
            assert pack is not None
            log.debug(
                "rank %s packed %d items: %d new shards (%d bytes), %d reused",
                self.rank,
                pack.stats.items,
                pack.stats.new_shards,
                pack.stats.stored_bytes,
                pack.stats.reused_shards,
            )
        return [
            WriteResult(
                index=index,
                storage_data=storage_info(entry.path, len(entry.data), pack, began_at)
                if i == 0
                else storage_info(entry.path, len(entry.data)),
            )
            for i, (index, entry) in enumerate(entries)
        ]

    def finalize_checkpoint(self, metadata: Any, results: list[list[WriteResult]]) -> None:
        """Coordinator: merge every rank's references and commit one manifest (put-if-absent)."""
        if self._begun is None:
            raise RuntimeError(
                "finalize_checkpoint() called without configure_writer(is_coordinator=True); this is not "
                "hyper_parallel's save sequence on the coordinator"
            )
        writer, self._begun = self._begun, None
        where = f"save of {self.checkpoint_id}"
        check_version(getattr(metadata, "version", "1.0"), where)
        paths: dict[MetadataIndex, str] = {}
        infos: dict[MetadataIndex, StorageInfo] = {}
        for rank_results in results:
            for result in rank_results:
                info = result.storage_data
                if not isinstance(getattr(info, "relative_path", None), str):
                    raise ManifestError(f"write result for {result.index} did not come from tqsnap.hyper_parallel")
                key = MetadataIndex(result.index.fqn, tuple(int(o) for o in result.index.offset or ()))
                if key in paths:
                    raise ManifestError(
                        f"two ranks wrote {result.index}; the save plan should give each chunk one writer"
                    )
                paths[key] = info.relative_path
                infos[result.index] = storage_info(info.relative_path, info.length)
                pack = getattr(info, "pack", None)
                if pack is not None:
                    writer.add_result(pack)
                    adopt_earliest_clock(writer, getattr(info, "began_at", None))
        extra = {EXTRA_KEY: encode_metadata(metadata, paths, where)}
        metadata.storage_data = infos  # what save() returns: where every item went, without pack results
        if isinstance(writer, PartStager):
            self.staged = writer.finish(extra)
            return
        info = writer.commit(extra=extra, metadata=self.metadata)
        self.last_snapshot = info
        log.info(
            "hyper_parallel checkpoint committed as %s@%d (%d bytes uploaded, %d reused)",
            info.stream,
            info.seq,
            info.stats.get("stored_bytes", 0),
            info.stats.get("reused_bytes", 0),
        )

    # --- helpers -----------------------------------------------------------------------------

    def _begin(self) -> SnapshotWriter | PartStager:
        """Begin this save (coordinator), or on a rank without the coordinator's word, find its parent."""
        if self.stage is not None:
            assert self.part is not None
            return PartStager.begin(
                self._repository(), self.stage, self.part, KIND, stream=self.stream, options=self.options
            )
        return SnapshotWriter.begin(self._repository(), self.stream, KIND, parent=self.parent, options=self.options)

    def _tag(self, plan: SavePlan) -> SavePlan:
        """The plan with the coordinator's word for the ranks: parent, save id, job part."""
        save = self._begun
        assert save is not None
        if isinstance(save, PartStager):
            parent = save.token.parent if save.parent_keys else None
            data = SavePlanData(parent, save.token.job_id, save.part)
        else:
            data = SavePlanData(save.parent, save.write_id)
        return dataclasses.replace(plan, storage_data=data)

    def _entry(self, item: Any, planner: Any) -> tuple[Any, PackEntry]:
        """One write item as a pack entry (bytes or a tensor's bytes), checked against its plan."""
        path = item_path(item)
        if is_byte_io(item.type):
            return item.index, PackEntry(path, _value_bytes(item, planner), kind="bytes")
        tensor = _as_tensor(_data(item, planner), item.index.fqn)
        chunk = (item.tensor_data or {}).get("chunk")
        if chunk is not None and list(tensor.shape) != [int(s) for s in chunk.sizes]:
            raise ShapeMismatchError(
                f"{item.index.fqn!r} at offset {list(item.index.offset)}: the planner's data has shape "
                f"{list(tensor.shape)}, but its write item describes a chunk of {list(chunk.sizes)}"
            )
        props = (item.tensor_data or {}).get("properties")
        if props is not None and dtype_key(props.dtype) != dtype_key(dtype_name(tensor.dtype)):
            raise ManifestError(
                f"{item.index.fqn!r} at offset {list(item.index.offset)}: the planner's data holds "
                f"{dtype_name(tensor.dtype)} values, but its write item says {props.dtype!r}; the checkpoint "
                "would not load"
            )
        view, owner = tensor_bytes(tensor)
        entry = PackEntry(path, view, kind="tensor", dtype=dtype_name(owner.dtype), shape=list(owner.shape), owner=owner)
        return item.index, entry


def _data(item: Any, planner: Any) -> Any:
    """The data of one write item: ``get_data(item)`` in current hyper_parallel, ``get_tensor(index)`` before."""
    get_data = getattr(planner, "get_data", None)
    if get_data is not None:
        return get_data(item)
    return planner.get_tensor(item.index)


def _value_bytes(item: Any, planner: Any) -> bytes:
    """A BYTE_IO item's bytes; a planner that hands over an object gets it pickled, as its writer does."""
    value = item.bytes_io_data if item.bytes_io_data is not None else _data(item, planner)
    if isinstance(value, io.BytesIO):
        return value.getvalue()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def _as_tensor(value: Any, fqn: str) -> Any:
    """A torch tensor of the planner's data: torch tensors as they are, numpy arrays (and
    MindSpore tensors, through ``asnumpy``) wrapped without a copy."""
    import torch

    if isinstance(value, torch.Tensor):
        return value
    if hasattr(value, "asnumpy"):
        value = value.asnumpy()
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - torch needs numpy for from_numpy anyway
        np = None
    if np is not None and isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    raise TypeError(f"planner returned a {type(value).__name__} for tensor item {fqn!r}; expected a tensor")


def _world_size() -> int:
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover
        return 1
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
