"""``tqsnap.hyper_parallel.Reader``: hyper_parallel's ``StorageReader`` for a ``hyper_parallel`` snapshot.

hyper_parallel drives a load in these steps (``hyper_parallel.core.distributed_checkpoint.api``):

1. ``initialize_reader(checkpoint_id)`` (every rank, when the caller names a checkpoint):
   ``[URL#]STREAM[@SNAPSHOT]`` with ``latest``, a seq or ``tag:<name>``.
2. ``load_metadata()`` (every rank): resolve the snapshot, refuse other kinds and unknown
   metadata versions, rebuild ``Metadata`` from the manifest's JSON and cross-check it against
   the manifest's items (the DCP adapter's checks: chunks inside their tensor, tiling it, each
   naming an item of the right kind and shape).
3. ``configure_reader(metadata, is_coordinator, rank=)`` (every rank).
4. ``optimize_local_plan`` (every rank) tags the plan with the snapshot this rank resolved;
   ``optimize_global_plan(plans)`` (coordinator) refuses ranks that resolved different ones.
5. ``execute_read(plan, planner)`` (every rank): check every request, decode every non-tensor
   value without running code, then fetch the shards (verified against their hashes, a
   window ahead), narrow each stored chunk to the requested region and copy it into
   ``planner.acquire_tensor(item)``, then ``planner.apply_tensor``; values go to
   ``planner.apply_bytes``. The saved chunks need not match this rank's: that is resharding.

Broadcast loads (newer hyper_parallel passes broadcast groups to ``execute_read``) are not
used: every rank reads its own items from the store, which is correct with or without them.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

from ...engine import Repository
from ...engine.job_read import open_reader
from ...errors import InconsistentSnapshotError, ManifestError, ShapeMismatchError
from ...format.manifest import Item
from ..checkpoint_reader import CheckpointReaderSettings
from ..dcp.checks import BYTES_KIND, TENSOR_KIND, _check_bounds, _check_cover, _check_region
from ..dcp.layout import snapshot_arg
from ..dcp.repos import RepoLike, open_repository, repo_url
from ..tensors import tensor_from_bytes
from .byte_values import safe_value_bytes
from .layout import EXTRA_KEY, KIND, dtype_key, parse_hp_checkpoint_id
from .metadata_json import decode_metadata
from .types import (
    BytesStorageMetadata,
    LoadPlan,
    Metadata,
    MetadataIndex,
    ReadItem,
    StorageReader,
    is_byte_io,
)
from .writer import storage_info

log = logging.getLogger(__name__)

MiB = 1 << 20
#: How the shared chunk checks name this adapter's metadata in their errors.
SOURCE = "hyper_parallel metadata"


class Reader(CheckpointReaderSettings, StorageReader):
    """Load a checkpoint that :class:`~tqsnap.adapters.hyper_parallel.writer.Writer` saved.

    ``load(state_dict, storage_reader=Reader("s3://bucket/prefix", stream="run-1"))`` loads the
    stream's latest snapshot, on any number of ranks.

    Args:
        url: repository URL, an open store or a :class:`~tqsnap.engine.Repository`.
        stream: the stream to load from.
        snapshot: ``"latest"``, a seq (int or digits) or ``"tag:<name>"``. Pin a seq when a
            writer may commit while ranks load.
        storage_options: passed to the store.
        threads: parallel shard downloads per rank.
        window_bytes: about how many shard bytes one rank fetches ahead of copying them out.
        allow_pickle: hand stored non-tensor values to the planner as they are (its
            ``apply_bytes`` unpickles them, which can run code). Without it (the default) they
            are decoded without running code first (:mod:`.byte_values`).
        part: load this part of a job snapshot (:mod:`tqsnap.job`). Without it a job snapshot
            with exactly one ``hyper_parallel`` part loads that part.
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
        self._paths: dict[MetadataIndex, str] = {}

    # --- the steps ---------------------------------------------------------------------------

    def initialize_reader(self, checkpoint_id: str | os.PathLike[str] | None = None) -> None:
        """Every rank: ``[URL#]STREAM[@SNAPSHOT]`` selects what to load; ``None`` keeps it."""
        if checkpoint_id is not None:
            ref = parse_hp_checkpoint_id(checkpoint_id)
            if ref.url is not None and ref.url != repo_url(self.url):
                self.url, self._repo = ref.url, None
            self.stream = ref.stream
            self.snapshot = ref.snapshot or "latest"
        self._snapshot = None
        self._paths = {}

    def load_metadata(self, **kwargs: Any) -> Metadata:
        """Every rank: resolve the snapshot and rebuild ``Metadata`` from its JSON.

        ``storage_data`` maps every chunk and value to a ``StorageInfo`` whose
        ``relative_path`` is the item holding its bytes. There is no rank-local metadata: a
        ``rank=`` argument reads the same shared metadata.
        """
        repo = self._repository()
        reader = open_reader(
            repo, self.stream, snapshot_arg(self.snapshot), kind=KIND, part=self.part, threads=self.threads
        )
        metadata, paths = decode_metadata(reader.manifest.extra.get(EXTRA_KEY), f"snapshot {reader.name}")
        check_snapshot(metadata, paths, reader.items, reader.name)
        self._snapshot = reader
        self._paths = paths
        metadata.storage_data = {index: storage_info(path, reader.items[path].size) for index, path in paths.items()}
        log.debug("loading hyper_parallel checkpoint %s (%d entries)", reader.name, len(metadata.state_dict_metadata))
        return metadata

    def configure_reader(self, metadata: Metadata, is_coordinator: bool, **kwargs: Any) -> None:
        """Every rank: note the rank; the metadata must be the one ``load_metadata`` returned."""
        if self._snapshot is None:
            raise RuntimeError("configure_reader() called before load_metadata(); this is not hyper_parallel's load")
        self.is_coordinator = is_coordinator
        self.rank = kwargs.get("rank")

    def optimize_local_plan(self, plan: LoadPlan) -> LoadPlan:
        """Every rank: tag the plan with the snapshot this rank resolved (a copy: plans may be frozen)."""
        return dataclasses.replace(plan, storage_data=self._snapshot.name if self._snapshot is not None else None)

    def optimize_global_plan(self, plans: list[LoadPlan]) -> list[LoadPlan]:
        """Coordinator: all ranks must load the same snapshot (given one plan, it passes through)."""
        if not isinstance(plans, list):
            return plans
        names = sorted({str(p.storage_data) for p in plans})
        if len(names) > 1:
            raise InconsistentSnapshotError(
                f"ranks resolved stream {self.stream!r} at {self.snapshot!r} to different snapshots "
                f"({', '.join(names)}): a save committed during the load. Load a fixed seq instead"
            )
        return plans

    def execute_read(self, plan: LoadPlan, planner: Any, *args: Any, **kwargs: Any) -> None:
        """Every rank: check every request, decode values, then fetch, narrow and copy every chunk.

        Extra arguments (broadcast groups, batch size) are accepted and not used.
        """
        snapshot = self._snapshot
        if snapshot is None:
            raise RuntimeError("execute_read() called before load_metadata()")
        requests: dict[str, list[ReadItem]] = {}
        for req in plan.items:
            requests.setdefault(self._path(req.storage_index), []).append(req)
        check_requests(requests, snapshot.items, snapshot.name, getattr(planner, "state_dict", None))
        values = self._values([path for path in requests if snapshot.items[path].kind == BYTES_KIND], requests)
        tensors = [snapshot.items[path] for path in requests if snapshot.items[path].kind != BYTES_KIND]
        tensors.sort(key=lambda it: (it.extents[0].shard, it.extents[0].offset) if it.extents else (-1, 0))
        for item, data in snapshot.iter_items(tensors, window_bytes=self.window_bytes):
            _deliver(item, data, requests[item.path], planner)
        for req, value in values:
            planner.apply_bytes(req, value)

    # --- helpers -----------------------------------------------------------------------------

    def _repository(self) -> Repository:
        if self._repo is None:
            self._repo = open_repository(self.url, self.storage_options, create=False)
        return self._repo

    def _path(self, index: MetadataIndex) -> str:
        key = MetadataIndex(index.fqn, tuple(int(o) for o in index.offset or ()))
        try:
            return self._paths[key]
        except KeyError:
            raise ManifestError(
                f"snapshot {self.checkpoint_id} has no chunk {index.fqn!r} at offset {list(index.offset or ())}"
            ) from None

    def _values(self, paths: list[str], requests: dict[str, list[ReadItem]]) -> list[tuple[ReadItem, bytes]]:
        """Fetch and decode every non-tensor value before any destination is touched."""
        assert self._snapshot is not None
        if not paths:
            return []
        data = self._snapshot.read_items(paths)
        values = []
        for path in paths:
            where = f"non-tensor value {path!r:.200} of snapshot {self._snapshot.name}"
            value = bytes(data[path]) if self.allow_pickle else safe_value_bytes(data[path], where)
            values.extend((req, value) for req in requests[path])
        return values


def check_snapshot(metadata: Metadata, paths: dict[MetadataIndex, str], items: dict[str, Item], name: str) -> None:
    """Refuse a snapshot whose metadata and manifest items disagree, before any byte is read."""
    budget = [10_000_000]
    for fqn, smd in metadata.state_dict_metadata.items():
        if isinstance(smd, BytesStorageMetadata):
            item = _item(items, paths[MetadataIndex(fqn)], name, fqn)
            if item.kind != BYTES_KIND:
                raise ManifestError(
                    f"snapshot {name}: metadata says {fqn!r:.200} is a non-tensor value, but its item "
                    f"{item.path!r:.200} is of kind {item.kind!r:.40}; the snapshot is inconsistent"
                )
            continue
        for chunk in smd.chunks:
            _check_bounds(smd.size, chunk, name, fqn, SOURCE)
            item = _item(items, paths[MetadataIndex(fqn, chunk.offsets)], name, fqn)
            where = f"snapshot {name}: item {item.path!r:.200} of {fqn!r:.200}"
            if item.kind != TENSOR_KIND:
                raise ManifestError(f"{where} is of kind {item.kind!r:.40}, but metadata says it holds a tensor chunk")
            if dtype_key(item.dtype) != dtype_key(smd.properties.dtype):
                raise ManifestError(f"{where} holds {item.dtype!r:.40} values, but metadata says {smd.properties.dtype!r:.40}")
            if item.shape != list(chunk.sizes):
                raise ShapeMismatchError(
                    f"{where} holds a tensor of shape {item.shape}, but metadata describes a chunk of {list(chunk.sizes)}"
                )
        _check_cover(smd, name, fqn, budget, SOURCE)


def _item(items: dict[str, Item], path: str, name: str, fqn: str) -> Item:
    item = items.get(path)
    if item is None:
        raise ManifestError(f"snapshot {name}: metadata names item {path!r:.200} for {fqn!r:.200}, which it lacks")
    return item


def check_requests(
    requests: dict[str, list[ReadItem]], items: dict[str, Item], name: str, state: Any = None
) -> None:
    """Each read request agrees with the item it reads; all are checked before any is carried out.

    With a planner that keeps the state dict being loaded (``state``), a stored value may not
    land where that dict holds a tensor: the planner would replace the tensor instead of
    filling it, and the model would silently keep its old weights.
    """
    import torch

    for path, reqs in requests.items():
        item = items[path]
        for req in reqs:
            fqn = req.dest_index.fqn
            if is_byte_io(req.type):
                if item.kind != BYTES_KIND:
                    raise ManifestError(
                        f"snapshot {name}: the planner asked for {fqn!r:.200} as a non-tensor value, but item "
                        f"{path!r:.200} is of kind {item.kind!r:.40}"
                    )
                if isinstance(state, dict) and isinstance(state.get(fqn), torch.Tensor):
                    raise ManifestError(
                        f"snapshot {name} stores {fqn!r:.200} as a non-tensor value, but the state dict being "
                        "loaded holds a tensor there; refusing to replace it. Load into a matching state dict"
                    )
                continue
            if item.kind != TENSOR_KIND or item.shape is None:
                raise ManifestError(
                    f"snapshot {name}: the planner asked for tensor data of {fqn!r:.200}, but item {path!r:.200} "
                    f"is of kind {item.kind!r:.40}"
                )
            _check_region(item, req, name)


def _deliver(item: Item, data: memoryview, reqs: list[ReadItem], planner: Any) -> None:
    """Copy the requested regions of one stored chunk into the planner's destinations."""
    import torch

    from ..dcp.transfer import narrow

    assert item.dtype is not None and item.shape is not None
    source = tensor_from_bytes(data, item.dtype, item.shape)
    for req in reqs:
        part = narrow(source, torch.Size(req.storage_offsets), torch.Size(req.lengths), item.path)
        target = planner.acquire_tensor(req)
        if isinstance(target, torch.Tensor):
            target = target.detach()
            if target.shape != part.shape:
                raise ShapeMismatchError(
                    f"{req.dest_index.fqn!r}: the planner's destination has shape {list(target.shape)}, but the "
                    f"requested region of {item.path!r} has shape {list(part.shape)}"
                )
            target.copy_(part)
            planner.apply_tensor(req, target)
        else:  # numpy or another framework's tensor: the planner copies it in
            planner.apply_tensor(req, part.numpy())
