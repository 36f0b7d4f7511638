"""Copy a snapshot between repositories, moving only the shards the destination lacks.

The destination's own latest snapshot of the target stream is the reuse index, exactly as for a
save, so the copy obeys the same protocol: shards it does not upload are reached through a
parent that was visible when it began, and everything it uploads goes to fresh keys.
"""

from __future__ import annotations

import logging
import secrets
from concurrent.futures import ThreadPoolExecutor

from ..errors import CorruptShardError, MissingShardError, ObjectNotFoundError
from ..format.keys import shard_key
from ..format.manifest import Extent, ShardRef
from ..format.shard import content_hash, decode
from .packer import PackResult, PackStats
from .reader import load_body
from .repository import Repository, SnapshotInfo
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
    manifest = load_body(src.store, src.load_manifest(sid.stream, sid.seq))
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

    def transfer(i: int) -> tuple[int, ShardRef]:
        ref = manifest.shards[i]
        try:
            stored = src.store.get(ref.key)
        except ObjectNotFoundError:
            raise MissingShardError(ref.key, str(sid)) from None
        data = decode(stored, ref.codec, ref.size)  # verify before spreading a bad shard
        if len(data) != ref.size or content_hash(data) != ref.hash:
            raise CorruptShardError(ref.key, ref.hash, content_hash(data))
        key = shard_key(ref.hash, secrets.token_hex(8), ref.codec)
        dst.store.put(key, stored)
        return i, ShardRef(key, ref.hash, ref.size, len(stored), ref.codec)

    with ThreadPoolExecutor(threads) as pool:
        for i, new_ref in pool.map(transfer, todo):
            refs[i] = new_ref
            stats.new_shards += 1
            stats.new_bytes += new_ref.size
            stats.stored_bytes += new_ref.stored_size
    keep = [i for i in range(len(refs)) if i != body]
    remap = {old: new for new, old in enumerate(keep)}
    shards = [refs[i] for i in keep]
    items = manifest.items
    for item in items:
        item.extents = [Extent(remap[e.shard], e.offset, e.length) for e in item.extents]
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
