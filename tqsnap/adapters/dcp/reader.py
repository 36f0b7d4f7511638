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

Shards are fetched in windows of about ``window_bytes``, the next window downloading while the
current one is copied out, so a rank never holds much more than two windows at once.
"""

from __future__ import annotations

import io
import logging
import os
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from torch.distributed.checkpoint.metadata import Metadata, MetadataIndex, StorageMeta, TensorStorageMetadata
from torch.distributed.checkpoint.planner import LoadItemType, LoadPlan, LoadPlanner, ReadItem
from torch.distributed.checkpoint.storage import StorageReader
from torch.futures import Future

from ...engine import Repository, SnapshotReader
from ...errors import ManifestError, TqsnapError
from ...format.manifest import Item
from ...store import ObjectStore
from ..tensors import tensor_from_bytes
from .errors import InconsistentSnapshotError, ShapeMismatchError
from .layout import EXTRA_KEY, KIND, CheckpointRef, is_checkpoint_id, parse_checkpoint_id, snapshot_arg
from .metadata_json import decode_metadata

log = logging.getLogger(__name__)

MiB = 1 << 20
RepoLike = str | ObjectStore | Repository


class _FailedRead:
    """Placeholder ``storage_data`` handed to DCP after ``read_metadata`` failed (see there)."""


class Reader(StorageReader):
    """Load a DCP checkpoint that :class:`~tqsnap.adapters.dcp.writer.Writer` saved.

    ``dcp.load(state_dict, storage_reader=Reader("s3://bucket/prefix", stream="run-1"))``
    loads the stream's latest snapshot into ``state_dict`` in place, resharding as DCP does.

    Args:
        url: repository URL, an open store or a :class:`~tqsnap.engine.Repository`.
        stream: the stream to load from.
        snapshot: ``"latest"``, a seq (int or digits) or ``"tag:<name>"``. Pin a seq when a
            writer may commit while ranks load: ranks that resolve ``latest`` to different
            snapshots stop with :class:`~tqsnap.adapters.dcp.errors.InconsistentSnapshotError`.
        storage_options: passed to the store.
        threads: parallel shard downloads per rank.
        window_bytes: about how many shard bytes one rank fetches ahead of copying them out.
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
    ) -> None:
        super().__init__()
        self.url = url
        self.stream = stream
        self.snapshot: str | int = snapshot
        self.storage_options = dict(storage_options or {})
        self.threads = threads
        self.window_bytes = window_bytes
        self.load_id = uuid.uuid4().hex
        self.is_coordinator = False
        self.rank: int | None = None
        self._repo: Repository | None = url if isinstance(url, Repository) else None
        self._snapshot: SnapshotReader | None = None
        self._paths: dict[MetadataIndex, str] = {}
        self._chunk_sizes: dict[MetadataIndex, torch.Size] = {}
        self._failure: TqsnapError | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if isinstance(self.url, str):
            state["_repo"] = None
        state["_snapshot"] = None
        return state

    # --- identity ----------------------------------------------------------------------------

    @property
    def checkpoint_id(self) -> str:
        """``<url>#<stream>@<snapshot>``; after ``read_metadata`` the snapshot is the resolved seq."""
        snapshot = self._snapshot.manifest.seq if self._snapshot is not None else self.snapshot
        return str(CheckpointRef(_url(self.url), self.stream, str(snapshot)))

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        """True for ``[URL#]STREAM[@SNAPSHOT]``."""
        return is_checkpoint_id(checkpoint_id)

    def reset(self, checkpoint_id: str | os.PathLike[str] | None = None) -> None:
        """Start a new load; ``checkpoint_id`` selects the stream, snapshot or repository."""
        if checkpoint_id is not None:
            ref = parse_checkpoint_id(checkpoint_id)
            if ref.url is not None and ref.url != _url(self.url):
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
        """
        if kwargs.get("rank") is not None and self._failure is not None:
            return Metadata(state_dict_metadata={}, storage_data=_FailedRead(), storage_meta=StorageMeta())
        try:
            repo = self._repository()
            reader = repo.reader(self.stream, snapshot_arg(self.snapshot), kind=KIND, threads=self.threads)
            metadata = decode_metadata(reader.manifest.extra.get(EXTRA_KEY), f"snapshot {reader.name}")
        except TqsnapError as exc:
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
        snapshot = self._snapshot
        requests: dict[str, list[ReadItem]] = {}
        for req in plan.items:
            requests.setdefault(self._path(req.storage_index), []).append(req)
        items = [self._item(path) for path in requests]
        items.sort(key=lambda it: (it.extents[0].shard, it.extents[0].offset) if it.extents else (-1, 0))
        sizes = [ref.size for ref in snapshot.manifest.shards]
        uses = Counter(shard for item in items for shard in {e.shard for e in item.extents})
        cache: dict[int, memoryview] = {}
        windows = list(_windows(items, sizes, self.window_bytes))
        with ThreadPoolExecutor(1, thread_name_prefix="tqsnap-dcp-prefetch") as prefetch:
            pending = prefetch.submit(snapshot.fetch_shards, windows[0][1]) if windows else None
            for k, (window_items, _) in enumerate(windows):
                assert pending is not None
                cache.update(pending.result())
                if k + 1 < len(windows):
                    pending = prefetch.submit(snapshot.fetch_shards, windows[k + 1][1])
                for item in window_items:
                    self._deliver(item, requests[item.path], cache, planner)
                    for shard in {e.shard for e in item.extents}:
                        uses[shard] -= 1
                        if uses[shard] == 0:
                            del cache[shard]
        fut: Future[None] = Future()
        fut.set_result(None)
        return fut

    # --- helpers -----------------------------------------------------------------------------

    def _repository(self) -> Repository:
        if self._repo is None:
            assert not isinstance(self.url, Repository)
            self._repo = Repository.open(self.url, storage_options=self.storage_options)
        return self._repo

    def _path(self, index: MetadataIndex) -> str:
        try:
            return self._paths[index]
        except KeyError:
            raise ManifestError(
                f"snapshot {self.checkpoint_id} has no chunk {index.fqn!r} at offset {list(index.offset or [])}"
            ) from None

    def _item(self, path: str) -> Item:
        assert self._snapshot is not None
        item = self._snapshot.items.get(path)
        if item is None:
            raise ManifestError(
                f"snapshot {self._snapshot.name}: DCP metadata names item {path!r}, which it lacks"
            )
        return item

    def _deliver(
        self, item: Item, reqs: list[ReadItem], cache: dict[int, memoryview], planner: LoadPlanner
    ) -> None:
        """Copy one stored item into every destination that asked for part of it."""
        data = _item_bytes(item, cache)
        if item.kind == "bytes":
            for req in reqs:
                planner.load_bytes(req, io.BytesIO(data))
            return
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
            part = _narrow(source, req.storage_offsets, req.lengths, item.path)
            target = planner.resolve_tensor(req).detach()
            if target.shape != part.shape:
                raise ShapeMismatchError(
                    f"{req.dest_index.fqn!r}: the planner's destination has shape {list(target.shape)}, but "
                    f"the requested region of {item.path!r} has shape {list(part.shape)}"
                )
            target.copy_(part)
            planner.commit_tensor(req, target)


def _url(repo: RepoLike) -> str:
    return repo if isinstance(repo, str) else repo.url


def _windows(items: list[Item], sizes: list[int], budget: int) -> Iterator[tuple[list[Item], list[int]]]:
    """Group items (in shard order) so each group brings at most about ``budget`` new shard bytes."""
    seen: set[int] = set()
    group: list[Item] = []
    fetch: list[int] = []
    total = 0
    for item in items:
        new = [s for s in dict.fromkeys(e.shard for e in item.extents) if s not in seen]
        grow = sum(sizes[s] for s in new)
        if group and total + grow > budget:
            yield group, fetch
            group, fetch, total = [], [], 0
        group.append(item)
        fetch.extend(new)
        seen.update(new)
        total += grow
    if group:
        yield group, fetch


def _item_bytes(item: Item, cache: dict[int, memoryview]) -> memoryview:
    """The item's bytes: a view into its shard when it has one extent, else a joined copy."""
    if len(item.extents) == 1:
        e = item.extents[0]
        return cache[e.shard][e.offset : e.offset + e.length]
    buf = bytearray(item.size)
    pos = 0
    for e in item.extents:
        buf[pos : pos + e.length] = cache[e.shard][e.offset : e.offset + e.length]
        pos += e.length
    return memoryview(buf)


def _narrow(t: torch.Tensor, offsets: torch.Size, lengths: torch.Size, path: str) -> torch.Tensor:
    """The hypercube ``[offsets, offsets + lengths)`` of ``t``; refuses regions outside it."""
    if len(offsets) != t.dim() or len(lengths) != t.dim():
        raise ShapeMismatchError(
            f"item {path!r} has {t.dim()} dimensions, but DCP asked for a {len(lengths)}-dimensional region"
        )
    for dim, (start, length) in enumerate(zip(offsets, lengths, strict=True)):
        if start < 0 or start + length > t.size(dim):
            raise ShapeMismatchError(
                f"item {path!r} of shape {list(t.shape)} has no region at offsets {list(offsets)} "
                f"of lengths {list(lengths)}"
            )
        if start != 0 or length != t.size(dim):
            t = t.narrow(dim, start, length)
    return t
