"""One rank's share of a distributed checkpoint save, for every checkpoint adapter.

A distributed checkpoint framework (torch DCP, hyper_parallel) saves as one tqsnap snapshot:
the coordinator begins a :class:`~tqsnap.engine.SnapshotWriter`, every rank packs and uploads
its own items against the parent's shards, and the coordinator merges the ranks'
:class:`~tqsnap.engine.PackResult` s and commits one manifest. The frameworks differ only in
the types they hand over (plans, write items, metadata); what a rank does with the bytes is
here, typed in tqsnap's own terms, so that each adapter only translates.

A save staged as one part of a job snapshot (:mod:`tqsnap.job`) works the same way with a
:class:`~tqsnap.engine.job.PartStager` in place of the ``SnapshotWriter``.

The coordinator's parent travels to the ranks in ``SavePlanData`` (the DCP adapter's plan
payload, shared as is). A rank that never received one (a framework that calls no global plan
step on the coordinator, or replays a cached plan) begins its own read-only save or stage to
find the parent, which also drops parent shards that fail their existence check, so such a
rank never references a shard it did not confirm. Such a rank also reads the server clock
before its first upload; the coordinator moves the save's clock back to the earliest one a
rank reports (:func:`adopt_earliest_clock`), so the write deadline still counts from before
every upload of the save (docs/protocol.md).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..engine import PackOptions, PackResult, Repository, ShardPacker, SnapshotWriter
from ..engine.job import PartStager, part_reuse_index
from ..errors import SnapshotNotFoundError
from ..format.manifest import ShardRef
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


def save_id(save: SnapshotWriter | PartStager) -> str:
    """The id ranks learn from ``SavePlanData.write_id``: the save's write id, or a staged part's job id."""
    return save.token.job_id if isinstance(save, PartStager) else save.write_id


def rank_reuse_index(
    repo: Repository,
    data: SavePlanData | None,
    coordinator_save: SnapshotWriter | PartStager | None,
    begin_here: Callable[[], SnapshotWriter | PartStager],
    rank: int | None,
) -> tuple[dict[str, ShardRef], float | None]:
    """The parent's shards by hash that this rank may reference instead of uploading, and the
    server time this rank read when it had to begin on its own (else ``None``).

    ``data`` is the coordinator's word on the parent (and, for a job part, the part's name);
    ``coordinator_save`` the coordinator's own save or stage, on the coordinator only. Without
    either, ``begin_here`` begins a read-only save or stage on this rank to find the parent.
    A parent forgotten since the plan was made (a replayed plan) costs a full upload of this
    rank's items, never a reference to a deleted shard.
    """
    if data is None:
        if coordinator_save is not None:
            return coordinator_save.reuse_index, None
        own = begin_here()
        return own.reuse_index, clock(own)
    if data.parent is None:
        return {}, None
    if coordinator_save is not None and save_id(coordinator_save) == data.write_id:
        return coordinator_save.reuse_index, None  # the coordinator read it when it began
    if data.part is not None:
        return part_reuse_index(repo, data.parent, data.part)[0], None
    try:
        sid = repo.resolve(data.parent.stream, data.parent.seq)
        manifest = repo.load_manifest(sid.stream, sid.seq)
    except SnapshotNotFoundError:
        log.warning("parent %s was forgotten during the save; rank %s uploads all its shards", data.parent, rank)
        return {}, None
    return {ref.hash: ref for ref in manifest.shards}, None


def clock(save: SnapshotWriter | PartStager) -> float:
    """The server time a save or stage began at: the start of its write deadline."""
    return save.staged_at if isinstance(save, PartStager) else save.started_at


def adopt_earliest_clock(save: SnapshotWriter | PartStager, began_at: float | None) -> None:
    """Move the save's clock back to ``began_at`` when a rank began before the coordinator.

    Without a word from the coordinator (a replayed plan), a rank can upload before the
    coordinator's begin; its own begin read the clock first. The deadline must count from the
    earliest upload, so the earlier time wins; a later one changes nothing.
    """
    if began_at is None or began_at >= clock(save):
        return
    log.debug("a rank began at %.3f, before the coordinator; the save's clock starts there", began_at)
    if isinstance(save, PartStager):
        save.staged_at = began_at
    else:
        save.started_at = began_at


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
