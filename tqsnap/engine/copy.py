"""Copy a snapshot between repositories, moving only the shards the destination lacks.

The destination's own latest snapshot of the target stream is the reuse index, exactly as for a
save, so the copy obeys the same protocol: shards it does not upload are reached through a
parent that was visible when it began, and everything it uploads goes to fresh keys.
"""

from __future__ import annotations

import logging

from ..format.manifest import ShardRef
from .packer import PackResult, PackStats
from .reader import load_body
from .repository import Repository, SnapshotInfo
from .shards import Shards, remap_items
from .writer import SnapshotWriter

log = logging.getLogger(__name__)


def copy_snapshot(
    src: Repository,
    dst: Repository,
    stream: str,
    snapshot: str | int = "latest",
    *,
    dst_stream: str | None = None,
    threads: int = 8,
) -> SnapshotInfo:
    """Copy one snapshot of ``src`` to the next seq of ``dst_stream`` (default: same name) in ``dst``."""
    sid = src.resolve(stream, snapshot)
    source, target = Shards(src.store, threads=threads), Shards(dst.store, threads=threads)
    manifest = load_body(source, src.load_manifest(sid.stream, sid.seq))
    writer = SnapshotWriter.begin(dst, dst_stream or stream, manifest.kind)
    stats = PackStats(items=len(manifest.items), item_bytes=sum(i.size for i in manifest.items))
    refs: list[ShardRef | None] = [None] * len(manifest.shards)
    todo: list[int] = []
    body = manifest.body_shard  # the writer re-derives a body shard if one is still needed
    for i, ref in enumerate(manifest.shards):
        if i == body:
            continue
        known = writer.reuse_index.get(ref.hash)
        if known is not None:
            refs[i] = known
            stats.reused_shards += 1
            stats.reused_bytes += ref.size
        else:
            todo.append(i)

    # Each shard is verified before it is uploaded, so a damaged one is never spread.
    for i, new_ref in target.adopt_many(source, [(i, manifest.shards[i]) for i in todo], snapshot=str(sid)):
        refs[i] = new_ref
        stats.new_shards += 1
        stats.new_bytes += new_ref.size
        stats.stored_bytes += new_ref.stored_size
    keep = [i for i in range(len(refs)) if i != body]
    shards = [refs[i] for i in keep]
    items = remap_items(manifest.items, {old: new for new, old in enumerate(keep)})
    writer.add_result(PackResult(shards, items, stats))  # type: ignore[arg-type]
    metadata = dict(manifest.metadata) | {
        "copied_from": {"repo": src.url, "stream": sid.stream, "seq": sid.seq}
    }
    info = writer.commit(extra=manifest.extra, metadata=metadata)
    log.info(
        "copied %s to %s as %s@%d: %d shards moved, %d reused",
        sid,
        dst.url,
        info.stream,
        info.seq,
        stats.new_shards,
        stats.reused_shards,
    )
    return info
