"""``tqsnap.dcp.Reader``: a DCP :class:`StorageReader` that loads a tqsnap ``dcp`` snapshot.

DCP drives a load in five steps:

1. ``read_metadata`` (every rank): resolve the snapshot, refuse other kinds, and rebuild DCP's
   ``Metadata`` from the manifest's JSON.
2. ``set_up_storage_reader`` (every rank): keep the chunk -> item map.
3. ``prepare_local_plan`` (every rank): DCP's planner has already resharded the request into
   ``ReadItem`` s against the saved chunks; the rank tags its plan with the snapshot it resolved.
4. ``prepare_global_plan`` (coordinator): every rank must have resolved the same snapshot.
5. ``read_data`` (every rank): fetch the shards that hold the requested chunks (whole shards,
   in parallel ranged GETs, each verified against its hash before any byte is used), narrow
   each chunk to the requested region and copy it into the tensor the planner hands out.

With DCP's default load planner, whose destination tensors are views into the state dict, a
chunk stored as whole raw shards is read straight into its destination and verified there: no
intermediate buffer and no second copy. Everything else (packed small chunks, compressed
shards, partial reads when resharding, custom planners) goes through buffers. Both routes are
the shard layer's ``get_many`` (:mod:`tqsnap.engine.shards`): at most about ``window_bytes``
of shards are fetched ahead of their use, and each shard is dropped once its last item is
copied out.
"""

from __future__ import annotations

import io
import logging
import os
import uuid
from typing import Any

import torch
from torch.distributed.checkpoint.metadata import Metadata, MetadataIndex, StorageMeta, TensorStorageMetadata
from torch.distributed.checkpoint.planner import LoadItemType, LoadPlan, LoadPlanner, ReadItem
from torch.distributed.checkpoint.storage import StorageReader
from torch.futures import Future

from ...engine import Repository
from ...engine.job_read import open_reader
from ...errors import InconsistentSnapshotError, ManifestError, ShapeMismatchError
from ...format.manifest import Item, ShardRef
from ..checkpoint_reader import CheckpointReaderSettings
from ..tensors import dtype_name, tensor_bytes, tensor_from_bytes
from .byte_values import restricted_value_stream
from .checks import BYTES_KIND, check_reads, check_snapshot
from .layout import EXTRA_KEY, KIND, is_checkpoint_id, parse_checkpoint_id, snapshot_arg
from .metadata_json import decode_metadata
from .repos import RepoLike, open_repository, repo_url
from .transfer import narrow, resolves_views

log = logging.getLogger(__name__)

MiB = 1 << 20


class _FailedRead:
    """Placeholder ``storage_data`` handed to DCP after ``read_metadata`` failed (see there)."""


class Reader(CheckpointReaderSettings, StorageReader):
    """Load a DCP checkpoint that :class:`~tqsnap.adapters.dcp.writer.Writer` saved.

    ``dcp.load(state_dict, storage_reader=Reader("s3://bucket/prefix", stream="run-1"))``
    loads the stream's latest snapshot into ``state_dict`` in place, resharding as DCP does.

    Args:
        url: repository URL, an open store or a :class:`~tqsnap.engine.Repository`.
        stream: the stream to load from.
        snapshot: ``"latest"``, a seq (int or digits) or ``"tag:<name>"``. Pin a seq when a
            writer may commit while ranks load: ranks that resolve ``latest`` to different
            snapshots stop with :class:`~tqsnap.errors.InconsistentSnapshotError`.
        storage_options: passed to the store.
        threads: parallel shard downloads per rank.
        window_bytes: about how many shard bytes one rank fetches ahead of copying them out.
        allow_pickle: hand stored non-tensor values to the planner as they are, for DCP's
            ``torch.load(weights_only=False)``, which can run code. Without it (the default)
            they are decoded by torch's restricted unpickler first and refused with
            :class:`~tqsnap.errors.PickleNotAllowedError` when it cannot (see
            :mod:`.byte_values`). Pass it only if you trust everyone who can write the repository.
        part: load this part of a job snapshot (:mod:`tqsnap.job`), e.g. ``"trainer"``. Without
            it a job snapshot with exactly one DCP part loads that part.
    """

    def __init__(
        self,
        url: RepoLike,
        stream: str = "default",
        snapshot: str | int = "latest",
        *,
        storage_options: dict[str, Any] | None = None,
        threads: int = 16,
        window_bytes: int = 256 * MiB,
        allow_pickle: bool = False,
        part: str | None = None,
    ) -> None:
        super().__init__()
        self._settle(
            url,
            stream,
            snapshot,
            storage_options=storage_options,
            threads=threads,
            window_bytes=window_bytes,
            allow_pickle=allow_pickle,
            part=part,
        )
        self.load_id = uuid.uuid4().hex
        self._paths: dict[MetadataIndex, str] = {}
        self._chunk_sizes: dict[MetadataIndex, torch.Size] = {}
        self._failure: Exception | None = None

    # --- identity ----------------------------------------------------------------------------

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        """True for ``[URL#]STREAM[@SNAPSHOT]``."""
        return is_checkpoint_id(checkpoint_id)

    def reset(self, checkpoint_id: str | os.PathLike[str] | None = None) -> None:
        """Start a new load; ``checkpoint_id`` selects the stream, snapshot or repository."""
        if checkpoint_id is not None:
            ref = parse_checkpoint_id(checkpoint_id)
            if ref.url is not None and ref.url != repo_url(self.url):
                self.url, self._repo = ref.url, None
            self.stream = ref.stream
            self.snapshot = ref.snapshot or "latest"
        self.load_id = uuid.uuid4().hex
        self._snapshot = None
        self._paths = {}
        self._chunk_sizes = {}
        self._failure = None

    # --- the five steps ----------------------------------------------------------------------

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        """Every rank: resolve the snapshot and rebuild DCP's ``Metadata`` from its JSON.

        Raises the typed tqsnap error (``SnapshotNotFoundError``, ``KindMismatchError``,
        ``ManifestError``...). DCP's loader swallows a failure here, retries with ``rank=`` for
        rank-local metadata and then reports only an ``AssertionError``; on that retry this
        reader hands DCP a placeholder instead, and ``set_up_storage_reader`` raises the
        original error, so it reaches the caller (wrapped in DCP's ``CheckpointException``).
        Any other exception is kept the same way: whatever went wrong, the caller sees it, never
        DCP's ``AssertionError`` in its place.
        """
        if kwargs.get("rank") is not None and self._failure is not None:
            return Metadata(state_dict_metadata={}, storage_data=_FailedRead(), storage_meta=StorageMeta())
        try:
            repo = self._repository()
            reader = open_reader(
                repo, self.stream, snapshot_arg(self.snapshot), kind=KIND, part=self.part, threads=self.threads
            )
            metadata = decode_metadata(reader.manifest.extra.get(EXTRA_KEY), f"snapshot {reader.name}")
            check_snapshot(metadata, metadata.storage_data, reader.items, reader.name)
        except Exception as exc:  # noqa: BLE001 - kept for set_up_storage_reader, then re-raised
            self._failure = exc
            raise
        self._failure = None
        self._snapshot = reader
        if metadata.storage_meta is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.checkpoint_id = self.checkpoint_id
        metadata.storage_meta.load_id = self.load_id
        log.debug("loading DCP checkpoint %s (%d entries)", reader.name, len(metadata.state_dict_metadata))
        return metadata

    def set_up_storage_reader(
        self, metadata: Metadata, is_coordinator: bool, *args: Any, **kwargs: Any
    ) -> None:
        """Every rank: keep the chunk -> item map of the metadata ``read_metadata`` returned."""
        if isinstance(metadata.storage_data, _FailedRead) and self._failure is not None:
            raise self._failure
        if not isinstance(metadata.storage_data, dict):
            raise ManifestError("DCP metadata handed to tqsnap.dcp.Reader was not read by it (no item map)")
        self.is_coordinator = is_coordinator
        self.rank = kwargs.get("rank")
        self._paths = metadata.storage_data
        self._chunk_sizes = {}
        for fqn, smd in metadata.state_dict_metadata.items():
            if isinstance(smd, TensorStorageMetadata):
                for chunk in smd.chunks:
                    self._chunk_sizes[MetadataIndex(fqn, chunk.offsets)] = chunk.sizes

    def prepare_local_plan(self, plan: LoadPlan) -> LoadPlan:
        """Every rank: tag the plan with the snapshot this rank resolved."""
        plan.storage_data = self._snapshot.name if self._snapshot is not None else None
        return plan

    def prepare_global_plan(self, plans: list[LoadPlan]) -> list[LoadPlan]:
        """Coordinator: all ranks must load the same snapshot."""
        names = sorted({str(p.storage_data) for p in plans})
        if len(names) > 1:
            raise InconsistentSnapshotError(
                f"ranks resolved stream {self.stream!r} at {self.snapshot!r} to different snapshots "
                f"({', '.join(names)}): a save committed during the load. Load a fixed seq instead"
            )
        return plans

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        """Every rank: fetch, verify, narrow and copy every requested chunk."""
        if self._snapshot is None:
            raise RuntimeError("read_data() called before read_metadata()")
        requests: dict[str, list[ReadItem]] = {}
        for req in plan.items:
            requests.setdefault(self._path(req.storage_index), []).append(req)
        items = [self._item(path) for path in requests]
        check_reads(requests, self._snapshot.items, planner, self._snapshot.name)
        values = self._byte_values([item for item in items if item.kind == BYTES_KIND], requests)
        items = [item for item in items if item.kind != BYTES_KIND]
        buffered = items
        if resolves_views(planner):
            direct = {item.path for item in items if self._whole_raw_chunk(item, requests[item.path])}
            buffered = [item for item in items if item.path not in direct]
            buffered += self._read_into_destinations(
                [item for item in items if item.path in direct], requests, planner
            )
        self._read_buffered(buffered, requests, planner)
        for req, stream in values:
            planner.load_bytes(req, stream)
        fut: Future[None] = Future()
        fut.set_result(None)
        return fut

    def _whole_raw_chunk(self, item: Item, reqs: list[ReadItem]) -> bool:
        """Is this one request for a whole tensor item stored as whole, uncompressed shards?"""
        assert self._snapshot is not None
        if len(reqs) != 1 or item.kind != "tensor" or item.shape is None or not item.extents:
            return False
        req = reqs[0]
        expected = self._chunk_sizes.get(req.storage_index)
        if req.type != LoadItemType.TENSOR or expected is None or list(expected) != item.shape:
            return False  # the buffered path reports the mismatch
        if any(req.storage_offsets) or list(req.lengths) != item.shape:
            return False
        refs = self._snapshot.manifest.shards
        return all(
            e.offset == 0
            and e.length == refs[e.shard].size == refs[e.shard].stored_size
            and refs[e.shard].codec == "raw"
            for e in item.extents
        )

    def _read_into_destinations(
        self, items: list[Item], requests: dict[str, list[ReadItem]], planner: LoadPlanner
    ) -> list[Item]:
        """Read whole raw shards straight into the planner's tensors; return the items that could not be."""
        assert self._snapshot is not None
        snapshot = self._snapshot
        refs = snapshot.manifest.shards
        jobs: list[tuple[int, ShardRef]] = []
        into: dict[int, memoryview] = {}
        done: list[tuple[ReadItem, torch.Tensor]] = []
        fallback: list[Item] = []
        for item in items:
            req = requests[item.path][0]
            target = planner.resolve_tensor(req).detach()
            if (
                target.device.type != "cpu"
                or not target.is_contiguous()
                or dtype_name(target.dtype) != item.dtype
                or list(target.shape) != item.shape
            ):
                fallback.append(item)
                continue
            view, _ = tensor_bytes(target)  # contiguous CPU: a view of the destination itself
            pos = 0
            for e in item.extents:
                into[len(jobs)] = view[pos : pos + e.length]
                jobs.append((len(jobs), refs[e.shard]))
                pos += e.length
            done.append((req, target))
        fetched = snapshot.shards.get_many(jobs, into=into, window_bytes=self.window_bytes, snapshot=snapshot.name)
        for _ in fetched:  # each shard lands in its destination, verified there
            pass
        for req, target in done:
            planner.commit_tensor(req, target)
        return fallback

    def _read_buffered(
        self, items: list[Item], requests: dict[str, list[ReadItem]], planner: LoadPlanner
    ) -> None:
        """Copy each item out of its shards, fetched a window ahead in shard order."""
        assert self._snapshot is not None
        items = sorted(
            items, key=lambda it: (it.extents[0].shard, it.extents[0].offset) if it.extents else (-1, 0)
        )
        for item, data in self._snapshot.iter_items(items, window_bytes=self.window_bytes):
            self._deliver(item, requests[item.path], data, planner)

    # --- helpers -----------------------------------------------------------------------------

    def _repository(self) -> Repository:
        if self._repo is None:
            self._repo = open_repository(self.url, self.storage_options, create=False)
        return self._repo

    def _path(self, index: MetadataIndex) -> str:
        try:
            return self._paths[index]
        except KeyError:
            raise ManifestError(
                f"snapshot {self.checkpoint_id} has no chunk {index.fqn!r} at offset {list(index.offset or [])}"
            ) from None

    def _byte_values(
        self, items: list[Item], requests: dict[str, list[ReadItem]]
    ) -> list[tuple[ReadItem, io.BytesIO]]:
        """Fetch and decode every non-tensor value before any destination is touched.

        They are fetched on their own (a shard they share with small tensors is read twice;
        values are few and small) so that a value that would need the full unpickler is
        refused before a single tensor is filled.
        """
        assert self._snapshot is not None
        if not items:
            return []
        data = self._snapshot.read_items([item.path for item in items])
        values: list[tuple[ReadItem, io.BytesIO]] = []
        for item in items:
            where = f"non-tensor value {item.path!r:.200} of snapshot {self._snapshot.name}"
            for req in requests[item.path]:
                stream = (
                    io.BytesIO(bytes(data[item.path]))
                    if self.allow_pickle
                    else restricted_value_stream(data[item.path], where)
                )
                values.append((req, stream))
        return values

    def _item(self, path: str) -> Item:
        assert self._snapshot is not None
        item = self._snapshot.items.get(path)
        if item is None:
            raise ManifestError(
                f"snapshot {self._snapshot.name}: DCP metadata names item {path!r}, which it lacks"
            )
        return item

    def _deliver(self, item: Item, reqs: list[ReadItem], data: memoryview, planner: LoadPlanner) -> None:
        """Copy one stored item (its bytes are ``data``) into every destination that asked for part of it."""
        if item.kind != "tensor" or item.dtype is None or item.shape is None:
            raise ManifestError(f"snapshot {self.checkpoint_id}: item {item.path!r} is not a tensor")
        source = tensor_from_bytes(data, item.dtype, item.shape)
        for req in reqs:
            if req.type != LoadItemType.TENSOR:
                raise ManifestError(f"DCP asked for bytes from tensor item {item.path!r}")
            expected = self._chunk_sizes.get(req.storage_index)
            if expected is not None and list(expected) != item.shape:
                raise ShapeMismatchError(
                    f"snapshot {self.checkpoint_id}: item {item.path!r} holds a tensor of shape {item.shape}, "
                    f"but its DCP metadata describes a chunk of {list(expected)}; the snapshot is inconsistent"
                )
            part = narrow(source, req.storage_offsets, req.lengths, item.path)
            target = planner.resolve_tensor(req).detach()
            if target.shape != part.shape:
                raise ShapeMismatchError(
                    f"{req.dest_index.fqn!r}: the planner's destination has shape {list(target.shape)}, but "
                    f"the requested region of {item.path!r} has shape {list(part.shape)}"
                )
            target.copy_(part)
            planner.commit_tensor(req, target)
