"""``tqsnap.dcp.Writer``: a DCP :class:`StorageWriter` that saves into a tqsnap stream.

DCP drives a save in five steps; this writer maps them onto one tqsnap snapshot:

1. ``set_up_storage_writer`` (every rank): note the rank and forget the previous save.
2. ``prepare_local_plan`` (every rank): the plan from DCP's planner passes through unchanged.
3. ``prepare_global_plan`` (coordinator): begin the :class:`~tqsnap.engine.SnapshotWriter`
   (server time ``started_at``, the parent snapshot) and tell every rank, through the plan's
   ``storage_data``, which parent to deduplicate against.
4. ``write_data`` (every rank): cut the rank's chunks into deterministic shards, hash them,
   reuse those the parent already holds and upload the rest to fresh keys. The rank's
   :class:`~tqsnap.engine.PackResult` (small references, no tensor bytes) rides back to the
   coordinator on its first ``WriteResult``.
5. ``finish`` (coordinator): merge every rank's references, encode DCP's ``Metadata`` as JSON
   and commit ONE manifest with put-if-absent. That put is the commit: until it lands no
   reader can see the checkpoint, and if any rank dies first nothing is visible at all.

With ``stage=job.token`` (:mod:`tqsnap.job`) the save is one *part* of a job snapshot instead:
step 3 begins a :class:`~tqsnap.engine.job.PartStager` (the job's parent, the part's clock),
step 4 deduplicates against the same part of the parent, and step 5 commits nothing: it leaves
a small :class:`~tqsnap.engine.job.StagedPart` in ``writer.staged`` on the coordinator rank,
for the driver's ``job.add(part, staged)``. Only that description travels, never tensor bytes.

Why each rank re-reads the parent instead of receiving its shard table: the table can hold
thousands of entries and DCP would scatter one copy per rank through the coordinator; a GET per
rank scales better. Each rank also re-checks that the parent is still visible before reusing its
shards, so a plan replayed from DCP's plan cache can never resurrect a forgotten parent
(docs/dcp.md, "Why it is safe").
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import uuid
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.metadata import Metadata, MetadataIndex, StorageMeta
from torch.distributed.checkpoint.planner import SavePlan, SavePlanner, WriteItem, WriteItemType
from torch.distributed.checkpoint.storage import StorageWriter, WriteResult
from torch.futures import Future

from ...engine import PackOptions, PackResult, ShardPacker, SnapshotWriter
from ...engine.job import PartStager, part_reuse_index
from ...errors import ManifestError, SnapshotNotFoundError
from ...format.manifest import ShardRef, SnapshotId
from ..checkpoint_writer import CheckpointWriterSettings
from ..tensors import dtype_name, tensor_bytes
from .layout import (
    EXTRA_KEY,
    KIND,
    CheckpointRef,
    bytes_item_path,
    is_checkpoint_id,
    parse_checkpoint_id,
    tensor_item_path,
)
from .metadata_json import encode_metadata
from .repos import RepoLike, repo_url

log = logging.getLogger(__name__)

#: ``Metadata.version`` written with each checkpoint: the layout DCP's own writers use.
DCP_METADATA_VERSION = "1.0.0"


@dataclass(frozen=True)
class SavePlanData:
    """``SavePlan.storage_data`` from the coordinator: which parent every rank deduplicates against."""

    parent: SnapshotId | None
    write_id: str
    #: The job part this save stages (None for a plain save): ranks index that part of the parent.
    part: str | None = None


@dataclass(frozen=True)
class ItemLocation:
    """``WriteResult.storage_data``: the item holding one chunk or value.

    The first result of each rank also carries the rank's pack result, so the references
    travel to the coordinator through DCP's own gather and nothing else is needed.
    """

    path: str
    pack: PackResult | None = None


def item_path(item: WriteItem) -> str:
    """The deterministic item path of one write item (see :mod:`.layout`)."""
    if item.type == WriteItemType.BYTE_IO:
        return bytes_item_path(item.index.fqn)
    return tensor_item_path(item.index.fqn, item.index.offset)


class Writer(CheckpointWriterSettings, StorageWriter):
    """Save DCP checkpoints as incremental, deduplicated, atomically committed tqsnap snapshots.

    ``dcp.save(state_dict, storage_writer=Writer("s3://bucket/prefix", stream="run-1"))``
    commits the next snapshot of ``run-1``. Every rank constructs its writer with the same
    arguments. Reuse one writer for every save of a run (one save at a time): each save
    uploads only the shards its parent does not hold.

    Args:
        url: repository URL (``s3://``, ``obs://``, ``file://``, a path, ``memory://``), an open
            store or a :class:`~tqsnap.engine.Repository`. Multi-process saves need a URL.
        stream: the stream that receives one snapshot per save.
        storage_options: passed to the store (``endpoint_url``, credentials, ...).
        options: how to cut and upload shards (:class:`~tqsnap.engine.PackOptions`).
        metadata: JSON user metadata stored with each snapshot (``writer.metadata`` may be
            changed between saves, e.g. to record the step).
        parent: ``"latest"`` deduplicates against the stream's newest snapshot, a
            :class:`~tqsnap.format.SnapshotId` forks from any visible snapshot, ``None`` uploads
            everything.
        create: create the repository on first use if it does not exist.
        stage: a job token (``job.token`` from :func:`tqsnap.job.begin`): stage this save as a
            part of that job instead of committing it; the coordinator rank's
            :attr:`staged` then holds the part for ``job.add``.
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
            caller="tqsnap.dcp.Writer",
        )
        self._stager: PartStager | None = None
        self.save_id = uuid.uuid4().hex
        self._begun: SnapshotWriter | None = None

    # --- identity ----------------------------------------------------------------------------

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        """True for ``[URL#]STREAM``; a snapshot suffix other than ``@latest`` makes no sense for a save."""
        if not is_checkpoint_id(checkpoint_id):
            return False
        return parse_checkpoint_id(checkpoint_id).snapshot in (None, "latest")

    def reset(self, checkpoint_id: str | os.PathLike[str] | None = None) -> None:
        """Start a new save; ``checkpoint_id`` (``[URL#]STREAM``) switches the stream or repository."""
        if checkpoint_id is not None:
            ref = parse_checkpoint_id(checkpoint_id)
            if ref.snapshot not in (None, "latest"):
                raise ValueError(
                    f"checkpoint id {checkpoint_id!r} names snapshot {ref.snapshot!r}; a save always "
                    "commits the next snapshot of its stream, so give only '[URL#]STREAM'"
                )
            if ref.url is not None and ref.url != repo_url(self.url):
                self.url, self._repo = ref.url, None
            self.stream = ref.stream
        self.save_id = uuid.uuid4().hex
        self._begun = None

    def storage_meta(self) -> StorageMeta | None:
        """DCP asks for this first thing in every save, so a fresh ``save_id`` is drawn here."""
        self.save_id = uuid.uuid4().hex
        return StorageMeta(checkpoint_id=self.checkpoint_id, save_id=self.save_id)

    # --- the five steps ----------------------------------------------------------------------

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        """Every rank, at the start of each save."""
        self.is_coordinator = is_coordinator
        self.rank = kwargs.get("rank")
        self._begun = None
        self._stager = None
        self.staged = None
        if not kwargs.get("use_collectives", True) and _world_size() > 1:
            raise ValueError(
                "tqsnap.dcp.Writer commits ONE snapshot for all ranks, which needs DCP's collectives; "
                "call dcp.save with use_collectives=True"
            )

    def prepare_local_plan(self, plan: SavePlan) -> SavePlan:
        """Every rank: DCP's planner already decided what this rank writes; nothing to add."""
        return plan

    def prepare_global_plan(self, plans: list[SavePlan]) -> list[SavePlan]:
        """Coordinator: begin the snapshot and hand every rank the parent to deduplicate against."""
        if self.stage is not None:
            self._stager = PartStager.begin(
                self._repository(), self.stage, self.part or "trainer", KIND, stream=self.stream, options=self.options
            )
            stager = self._stager
            parent = stager.token.parent if stager.parent_keys else None
            data = SavePlanData(parent, stager.token.job_id, stager.part)
            log.debug("part %r of job %s begins, parent %s", stager.part, data.write_id, parent)
            return [dataclasses.replace(plan, storage_data=data) for plan in plans]
        self._begun = SnapshotWriter.begin(
            self._repository(), self.stream, KIND, parent=self.parent, options=self.options
        )
        data = SavePlanData(self._begun.parent, self._begun.write_id)
        log.debug("save %s of %s begins, parent %s", data.write_id, self.stream, data.parent)
        return [dataclasses.replace(plan, storage_data=data) for plan in plans]

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future[list[WriteResult]]:
        """Every rank: pack, hash and upload this rank's chunks; return where each one went."""
        data = plan.storage_data
        if not isinstance(data, SavePlanData):
            raise ValueError(
                "the save plan carries no tqsnap plan data; tqsnap.dcp.Writer must take part in "
                "global planning (dcp.save with this writer on every rank)"
            )
        located: list[tuple[MetadataIndex, str, int]] = []
        pack: PackResult | None = None
        if plan.items:
            packer = ShardPacker(self._repository().store, self._reuse_index(data), self.options)
            keepalive: list[Any] = []
            try:
                for write_item in sorted(plan.items, key=item_path):
                    located.append(self._add(packer, planner, write_item, keepalive))
                pack = packer.finish()
            except BaseException:
                packer.abort()
                raise
            log.debug(
                "rank %s packed %d items: %d new shards (%d bytes), %d reused",
                self.rank,
                pack.stats.items,
                pack.stats.new_shards,
                pack.stats.stored_bytes,
                pack.stats.reused_shards,
            )
        results = [
            WriteResult(
                index=index, size_in_bytes=size, storage_data=ItemLocation(path, pack if i == 0 else None)
            )
            for i, (index, path, size) in enumerate(located)
        ]
        fut: Future[list[WriteResult]] = Future()
        fut.set_result(results)
        return fut

    def finish(self, metadata: Metadata, results: list[list[WriteResult]]) -> None:
        """Coordinator: merge every rank's references and commit one manifest (put-if-absent)."""
        if self._stager is not None:
            self._finish_stage(metadata, results)
            return
        if self._begun is None:
            raise RuntimeError("finish() called without prepare_global_plan(); this is not a DCP save")
        writer, self._begun = self._begun, None
        paths = self._gather(results, writer.add_result)
        metadata.version = DCP_METADATA_VERSION
        # No checkpoint_id in the stored metadata: it would be this writer's local path or URL,
        # which leaks and is wrong after a copy; a reader sets its own when it loads.
        metadata.storage_meta = StorageMeta(checkpoint_id=None, save_id=self.save_id)
        extra = {EXTRA_KEY: encode_metadata(metadata, paths)}
        info = writer.commit(extra=extra, metadata=self.metadata)
        self.last_snapshot = info
        # DCP returns this object from dcp.save on every rank: say exactly what was committed.
        metadata.storage_data = paths
        metadata.storage_meta.checkpoint_id = str(
            CheckpointRef(repo_url(self.url), self.stream, str(info.seq))
        )
        log.info(
            "DCP checkpoint committed as %s@%d (%d bytes uploaded, %d reused)",
            info.stream,
            info.seq,
            info.stats.get("stored_bytes", 0),
            info.stats.get("reused_bytes", 0),
        )

    def _finish_stage(self, metadata: Metadata, results: list[list[WriteResult]]) -> None:
        """Coordinator of a staged save: the part's description, nothing committed."""
        stager, self._stager = self._stager, None
        assert stager is not None
        paths = self._gather(results, stager.add_result)
        metadata.version = DCP_METADATA_VERSION
        metadata.storage_meta = StorageMeta(checkpoint_id=None, save_id=self.save_id)
        self.staged = stager.finish({EXTRA_KEY: encode_metadata(metadata, paths)})
        metadata.storage_data = paths

    @staticmethod
    def _gather(results: list[list[WriteResult]], add: Any) -> dict[MetadataIndex, str]:
        """Every rank's chunk -> item map; each rank's pack result goes to ``add``."""
        paths: dict[MetadataIndex, str] = {}
        for rank_results in results:
            for result in rank_results:
                loc = result.storage_data
                if not isinstance(loc, ItemLocation):
                    raise ManifestError(
                        f"write result for {result.index} did not come from tqsnap.dcp.Writer"
                    )
                if result.index in paths:
                    raise ManifestError(
                        f"two ranks wrote {result.index}; DCP's plan should give each chunk one writer"
                    )
                paths[result.index] = loc.path
                if loc.pack is not None:
                    add(loc.pack)
        return paths

    # --- helpers -----------------------------------------------------------------------------

    def _reuse_index(self, data: SavePlanData) -> dict[str, ShardRef]:
        """The parent's shards by hash, if the parent is still visible now."""
        if data.parent is None:
            return {}
        if data.part is not None:
            stager = self._stager
            if stager is not None and stager.token.job_id == data.write_id:
                return stager.reuse_index  # the coordinator read it when the stage began
            return part_reuse_index(self._repository(), data.parent, data.part)[0]
        if self._begun is not None and self._begun.write_id == data.write_id:
            return self._begun.reuse_index  # the coordinator read it at begin
        repo = self._repository()
        try:
            sid = repo.resolve(data.parent.stream, data.parent.seq)
            manifest = repo.load_manifest(sid.stream, sid.seq)
        except SnapshotNotFoundError:
            log.warning(
                "parent %s was forgotten during the save; rank %s uploads all its shards",
                data.parent,
                self.rank,
            )
            return {}
        return {ref.hash: ref for ref in manifest.shards}

    def _add(
        self, packer: ShardPacker, planner: SavePlanner, write_item: WriteItem, keepalive: list[Any]
    ) -> tuple[MetadataIndex, str, int]:
        path = item_path(write_item)
        value = planner.resolve_data(write_item)
        if write_item.type == WriteItemType.BYTE_IO:
            if not isinstance(value, io.BytesIO):
                raise TypeError(
                    f"planner resolved BYTE_IO item {write_item.index.fqn!r} to {type(value).__name__}"
                )
            raw = value.getvalue()
            packer.add(path, raw, kind="bytes")
            return write_item.index, path, len(raw)
        if not isinstance(value, torch.Tensor):
            raise TypeError(
                f"planner resolved tensor item {write_item.index.fqn!r} to {type(value).__name__}"
            )
        view, owner = tensor_bytes(value)
        keepalive.append(owner)  # the packer holds views into it until finish()
        packer.add(path, view, kind="tensor", dtype=dtype_name(owner.dtype), shape=list(owner.shape))
        return write_item.index, path, view.nbytes


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
