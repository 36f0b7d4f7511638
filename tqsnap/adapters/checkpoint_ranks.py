"""One rank's share of a distributed checkpoint save, for every checkpoint adapter.

A distributed checkpoint framework (torch DCP, hyper_parallel) saves as one tqsnap snapshot:
the coordinator begins a :class:`~tqsnap.engine.SnapshotWriter`, every rank packs and uploads
its own items against the parent's shards, and the coordinator merges the ranks'
:class:`~tqsnap.engine.PackResult` s and commits one manifest. The frameworks differ only in
the types they hand over (plans, write items, metadata); what a rank does with the bytes is
here, typed in tqsnap's own terms, so that each adapter only translates.

The coordinator's parent travels to the ranks in ``SavePlanData`` (the DCP adapter's plan
payload, shared as is). A rank that never received one (a framework that calls no global plan
step on the coordinator, or replays a cached plan) begins its own read-only
:class:`~tqsnap.engine.SnapshotWriter` to find the parent, which also drops parent shards that
fail their existence check, so a rank never references a shard it did not confirm.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..engine import PackOptions, PackResult, Repository, ShardPacker, SnapshotWriter
from ..errors import SnapshotNotFoundError
from ..format.manifest import ShardRef, SnapshotId
from .dcp.writer import SavePlanData

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackEntry:
    """One item a rank writes: its deterministic path, its bytes and what they are.

    ``owner`` keeps alive whatever ``data`` is a view into (a tensor) until packing is done.
    """

    path: str
    data: memoryview | bytes
    kind: str
    dtype: str | None = None
    shape: list[int] | None = None
    owner: Any = None


def rank_reuse_index(
    repo: Repository,
    data: SavePlanData | None,
    begun: SnapshotWriter | None,
    *,
    stream: str,
    kind: str,
    parent: SnapshotId | str | None,
    options: PackOptions,
    rank: int | None,
) -> dict[str, ShardRef]:
    """The parent's shards by hash that this rank may reference instead of uploading.

    ``data`` is the coordinator's choice of parent, ``begun`` the coordinator's own save (on
    the coordinator only). A parent forgotten since the plan was made (a replayed plan) costs
    a full upload of this rank's items, never a reference to a deleted shard.
    """
    if data is None:
        if begun is not None:
            return begun.reuse_index
        return SnapshotWriter.begin(repo, stream, kind, parent=parent, options=options).reuse_index
    if data.parent is None:
        return {}
    if begun is not None and begun.write_id == data.write_id:
        return begun.reuse_index
    try:
        sid = repo.resolve(data.parent.stream, data.parent.seq)
        manifest = repo.load_manifest(sid.stream, sid.seq)
    except SnapshotNotFoundError:
        log.warning("parent %s was forgotten during the save; rank %s uploads all its shards", data.parent, rank)
        return {}
    return {ref.hash: ref for ref in manifest.shards}


def pack_entries(
    repo: Repository, reuse_index: dict[str, ShardRef], options: PackOptions, entries: Sequence[PackEntry]
) -> PackResult | None:
    """Cut, hash and upload one rank's entries in path order; ``None`` when it has none.

    Path order makes the shard boundaries a function of the items alone, so an unchanged item
    hashes to the same shards as in the parent and is reused. On any failure the packer's
    uploads in flight are abandoned (gc collects what landed) and the error propagates.
    """
    if not entries:
        return None
    packer = ShardPacker(repo.store, reuse_index, options)
    try:
        for entry in sorted(entries, key=lambda e: e.path):
            if entry.kind == "tensor":
                packer.add(entry.path, entry.data, kind="tensor", dtype=entry.dtype, shape=entry.shape)
            else:
                packer.add(entry.path, entry.data, kind=entry.kind)
        return packer.finish()
    except BaseException:
        packer.abort()
        raise
