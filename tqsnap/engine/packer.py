"""Cut items into deterministic shards, hash them, skip known ones, upload the rest.

A :class:`ShardPacker` is the part of a save that touches bulk bytes. It holds no repository
state beyond a store and a *reuse index* (hash -> ShardRef of the parent snapshot), so it can
run anywhere: in the driver, inside each TransferQueue storage unit actor, or on each DCP rank.
It returns a :class:`PackResult` of small, picklable references; the coordinator merges those
into one manifest and commits.

Cutting rules (docs/format.md, "Shards"), chosen so unchanged data yields identical shards:

- an item of at least ``small_item`` bytes gets shards of its own, cut every ``chunk_size``
  bytes from its start;
- smaller items are packed together in the order they are added; a pack closes when it
  reaches ``pack_size``, or once past a quarter of that after an item whose path hash hits the
  cut mask, so inserting an item disturbs only the pack it lands in (boundaries resynchronise
  at the next cut).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import xxhash

from ..format.manifest import Extent, Item, ShardRef
from ..format.shard import content_hash_parts
from ..store.base import Buffer, ObjectStore
from .shard_table import remap_items
from .shards import EncodedShard, Shards

log = logging.getLogger(__name__)

MiB = 1 << 20
_INT_DTYPES = ("int", "uint", "bool")


@dataclass(frozen=True)
class PackOptions:
    """How to cut and upload shards. Part of the writer's plan; the defaults suit S3."""

    chunk_size: int = 16 * MiB
    pack_size: int = 4 * MiB
    small_item: int = 1 * MiB
    pack_cut_mask: int = 0x7
    codec: str = "auto"  # "raw", "zstd", or "auto": zstd for integer data and packs, raw for floats
    zstd_level: int = 1
    upload_threads: int = 8
    max_inflight_bytes: int = 256 * MiB


@dataclass
class PackStats:
    """What a packer did, in shards and bytes; summed into the snapshot's stats."""

    new_shards: int = 0
    new_bytes: int = 0
    stored_bytes: int = 0
    reused_shards: int = 0
    reused_bytes: int = 0
    items: int = 0
    item_bytes: int = 0

    def add(self, other: PackStats) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def to_json(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass
class PackResult:
    """Items with extents indexing into ``shards``; small enough to ship between processes."""

    shards: list[ShardRef] = field(default_factory=list)
    items: list[Item] = field(default_factory=list)
    stats: PackStats = field(default_factory=PackStats)


def reuse_fraction(new_bytes: int, reused_bytes: int) -> float:
    """Fraction of a snapshot's bytes already in the repository (1.0 for an empty snapshot)."""
    total = new_bytes + reused_bytes
    return reused_bytes / total if total else 1.0


def resolve_codec(codec: str, dtype: str | None) -> str:
    """Pick a concrete codec: ``auto`` compresses integer data (token ids reach 4x) and packs."""
    if codec != "auto":
        return codec
    if dtype is None:
        return "zstd"
    return "zstd" if dtype.startswith(_INT_DTYPES) else "raw"


def _as_bytes_view(data: Buffer) -> memoryview:
    view = memoryview(data)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


class ShardPacker:
    """Turns added items into uploaded (or reused) shards. Use from one thread.

    It only decides where shards are cut and which are new; encoding, naming and uploading
    are the shard layer's (:class:`~tqsnap.engine.shards.Shards`).
    """

    def __init__(
        self,
        store: ObjectStore | Shards,
        reuse: Mapping[str, ShardRef] | None = None,
        options: PackOptions | None = None,
    ) -> None:
        self.shards = store if isinstance(store, Shards) else Shards(store)
        self.store = self.shards.store
        self.reuse = dict(reuse or {})
        self.options = options or PackOptions()
        self._shards: list[ShardRef] = []
        self._shard_index: dict[str, int] = {}  # hash -> index in _shards
        self._items: list[Item] = []
        self._stats = PackStats()
        self._pending: list[tuple[Item, list[memoryview]]] = []  # small items waiting in the open pack
        self._pending_size = 0
        self._futures: list[Future[None]] = []
        self._pool = ThreadPoolExecutor(self.options.upload_threads, thread_name_prefix="tqsnap-upload")
        self._budget = threading.Semaphore(max(1, self.options.max_inflight_bytes // MiB))
        self._failed: BaseException | None = None

    # --- adding items ------------------------------------------------------------------------

    def add(
        self,
        path: str,
        data: Buffer | Sequence[Buffer],
        *,
        kind: str = "bytes",
        dtype: str | None = None,
        shape: Sequence[int] | None = None,
        meta: dict[str, Any] | None = None,
        codec: str | None = None,
    ) -> None:
        """Add one item: ``data`` is a buffer or a list of buffers to concatenate.

        Buffers are not copied for large items: they must stay unchanged until :meth:`finish`.
        """
        self._raise_if_failed()
        parts = (
            [_as_bytes_view(data)]
            if not isinstance(data, list | tuple)
            else [_as_bytes_view(p) for p in data]
        )
        size = sum(p.nbytes for p in parts)
        item = Item(
            path=path,
            kind=kind,
            size=size,
            extents=[],
            dtype=dtype,
            shape=list(shape) if shape is not None else None,
            meta=dict(meta or {}),
        )
        self._items.append(item)
        self._stats.items += 1
        self._stats.item_bytes += size
        if size >= self.options.small_item:
            self._add_large(item, parts, resolve_codec(codec or self.options.codec, dtype))
            return
        item.hash = content_hash_parts(parts)  # packed: the shard hash does not identify the item
        self._pending.append((item, parts))
        self._pending_size += size
        cut = (
            self._pending_size >= self.options.pack_size // 4
            and (xxhash.xxh64_intdigest(path.encode()) & self.options.pack_cut_mask) == 0
        )
        if self._pending_size >= self.options.pack_size or cut:
            self._flush_pack()

    def _add_large(self, item: Item, parts: list[memoryview], codec: str) -> None:
        chunk = self.options.chunk_size
        for start in range(0, item.size, chunk):
            piece = _slice_parts(parts, start, min(chunk, item.size - start))
            index = self._emit(piece, codec)
            item.extents.append(Extent(index, 0, sum(p.nbytes for p in piece)))

    def flush(self) -> None:
        """Close the open pack now, so the next item starts a new one.

        Adapters call this at natural boundaries (a new field, a new block) so that a change in
        one group never shifts the packs of the next.
        """
        self._flush_pack()

    def _flush_pack(self) -> None:
        if not self._pending:
            return
        parts: list[memoryview] = []
        offset = 0
        placements: list[tuple[Item, int]] = []
        for item, item_parts in self._pending:
            placements.append((item, offset))
            parts.extend(item_parts)
            offset += item.size
        index = self._emit(parts, resolve_codec(self.options.codec, None))
        for item, item_offset in placements:
            item.extents.append(Extent(index, item_offset, item.size))
        self._pending = []
        self._pending_size = 0

    # --- shards ------------------------------------------------------------------------------

    def _emit(self, parts: list[memoryview], codec: str) -> int:
        """Hash one shard's bytes; reuse a known shard or schedule an upload. Return its index."""
        digest = content_hash_parts(parts)
        if digest in self._shard_index:
            return self._shard_index[digest]
        size = sum(p.nbytes for p in parts)
        known = self.reuse.get(digest)
        if known is not None:
            self._stats.reused_shards += 1
            self._stats.reused_bytes += size
            return self._register(digest, known)
        shard = self.shards.encode(parts, codec, digest=digest, level=self.options.zstd_level)
        index = self._register(digest, shard.ref)
        self._stats.new_shards += 1
        self._stats.new_bytes += size
        self._stats.stored_bytes += shard.ref.stored_size
        # A buffer encoding allocated counts against the memory budget until it is uploaded.
        units = max(1, shard.ref.stored_size // MiB) if shard.owned else 1
        units = min(units, max(1, self.options.max_inflight_bytes // MiB))
        for _ in range(units):
            self._budget.acquire()
        self._futures.append(self._pool.submit(self._upload, shard, units))
        return index

    def _register(self, digest: str, ref: ShardRef) -> int:
        self._shard_index[digest] = len(self._shards)
        self._shards.append(ref)
        return len(self._shards) - 1

    def _upload(self, shard: EncodedShard, units: int) -> None:
        try:
            if self._failed is None:
                self.shards.upload(shard)
        except BaseException as exc:
            self._failed = self._failed or exc
            raise
        finally:
            for _ in range(units):
                self._budget.release()

    def _raise_if_failed(self) -> None:
        if self._failed is not None:
            self._shutdown()
            raise self._failed

    def _shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    # --- finishing ---------------------------------------------------------------------------

    def finish(self) -> PackResult:
        """Flush the open pack, wait for every upload, and return the references.

        On any upload error, this raises it; what was uploaded becomes garbage for gc.
        """
        try:
            self._flush_pack()
            for fut in self._futures:
                fut.result()
        finally:
            self._shutdown()
        log.debug(
            "packed %d items into %d shards (%d new, %d bytes uploaded)",
            self._stats.items,
            len(self._shards),
            self._stats.new_shards,
            self._stats.stored_bytes,
        )
        return PackResult(self._shards, self._items, self._stats)

    def abort(self) -> None:
        """Stop uploading; already uploaded shards become garbage for gc."""
        self._failed = self._failed or RuntimeError("pack aborted")
        self._shutdown()


def _slice_parts(parts: list[memoryview], start: int, length: int) -> list[memoryview]:
    """The views covering ``[start, start+length)`` of the concatenation of ``parts``."""
    out: list[memoryview] = []
    pos = 0
    end = start + length
    for p in parts:
        n = p.nbytes
        lo, hi = max(start, pos), min(end, pos + n)
        if lo < hi:
            out.append(p[lo - pos : hi - pos])
        pos += n
        if pos >= end:
            break
    return out


def merge_results(results: Sequence[PackResult]) -> PackResult:
    """Combine several packers' results into one shard table, remapping extents.

    Shards with the same hash collapse into one (the first seen), so two units that uploaded the
    same bytes still yield one reference; the duplicate object becomes garbage.
    """
    merged = PackResult()
    by_hash: dict[str, int] = {}
    for result in results:
        remap: list[int] = []
        for ref in result.shards:
            if ref.hash not in by_hash:
                by_hash[ref.hash] = len(merged.shards)
                merged.shards.append(ref)
            remap.append(by_hash[ref.hash])
        merged.items.extend(remap_items(result.items, remap))
        merged.stats.add(result.stats)
    return merged
