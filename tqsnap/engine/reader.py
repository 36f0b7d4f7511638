"""Fetch a snapshot's items: parallel ranged reads, every shard verified against its hash.

Items come back as memoryviews into the shard buffers they were read with, so a tensor can be
rebuilt with ``torch.frombuffer`` and no further copy.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ..errors import CorruptShardError, FormatError, MissingShardError, ObjectNotFoundError
from ..format.manifest import Item, Manifest, ShardRef, decode_body
from ..format.shard import content_hash, decode
from ..store.base import ObjectStore
from ..store.buffers import writable_buffer

log = logging.getLogger(__name__)

MiB = 1 << 20


@dataclass
class VerifyReport:
    """The outcome of re-hashing every shard of a snapshot."""

    snapshot: str
    shards: int = 0
    bytes: int = 0
    missing: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.corrupt

    def to_json(self) -> dict[str, Any]:
        return {
            "snapshot": self.snapshot,
            "ok": self.ok,
            "shards": self.shards,
            "bytes": self.bytes,
            "missing": self.missing,
            "corrupt": self.corrupt,
        }


def fetch_shard(
    store: ObjectStore,
    ref: ShardRef,
    *,
    range_size: int = 32 * MiB,
    pool: ThreadPoolExecutor | None = None,
    verify: bool = True,
    snapshot: str = "",
) -> memoryview:
    """Read one whole shard (in parallel ranges when large), decode and verify it."""
    view = writable_buffer(ref.stored_size)
    try:
        if pool is None or ref.stored_size <= range_size:
            got = store.get_into(ref.key, view, 0)
            if got != ref.stored_size:
                raise CorruptShardError(ref.key, ref.hash, f"truncated ({got} of {ref.stored_size} bytes)")
        else:
            starts = range(0, ref.stored_size, range_size)
            futures = [pool.submit(store.get_into, ref.key, view[s : s + range_size], s) for s in starts]
            got = sum(f.result() for f in futures)
            if got != ref.stored_size:
                raise CorruptShardError(ref.key, ref.hash, f"truncated ({got} of {ref.stored_size} bytes)")
    except ObjectNotFoundError:
        raise MissingShardError(ref.key, snapshot) from None
    try:
        data = decode(view, ref.codec, ref.size)
    except FormatError:
        raise CorruptShardError(ref.key, ref.hash, "undecodable") from None
    if memoryview(data).nbytes != ref.size:
        raise CorruptShardError(
            ref.key, ref.hash, f"decodes to {memoryview(data).nbytes} bytes, not {ref.size}"
        )
    if verify:
        actual = content_hash(data)
        if actual != ref.hash:
            raise CorruptShardError(ref.key, ref.hash, actual)
    return memoryview(data) if not isinstance(data, memoryview) else data


def item_view(item: Item, shards: Mapping[int, memoryview] | Sequence[memoryview]) -> memoryview:
    """An item's bytes from its fetched shards: a view when it has one extent, else a joined copy."""
    if len(item.extents) == 1:
        e = item.extents[0]
        return shards[e.shard][e.offset : e.offset + e.length]
    buf = writable_buffer(item.size)
    pos = 0
    for e in item.extents:
        buf[pos : pos + e.length] = shards[e.shard][e.offset : e.offset + e.length]
        pos += e.length
    return buf


def load_body(store: ObjectStore, manifest: Manifest) -> Manifest:
    """Fill in ``items`` and ``extra`` from the body shard, if the manifest has one (verified)."""
    if manifest.body_shard is not None and not manifest.items and not manifest.extra:
        ref = manifest.shards[manifest.body_shard]
        manifest.items, manifest.extra = decode_body(
            bytes(fetch_shard(store, ref, snapshot=str(manifest.id))), ref.key
        )
        manifest.validate(str(manifest.id))
    return manifest


class SnapshotReader:
    """Reads items of one committed manifest."""

    def __init__(
        self, store: ObjectStore, manifest: Manifest, *, threads: int = 16, range_size: int = 32 * MiB
    ) -> None:
        self.store = store
        self.manifest = manifest
        self.threads = threads
        self.range_size = range_size
        self.name = str(manifest.id)
        load_body(store, manifest)
        self.items: dict[str, Item] = {item.path: item for item in manifest.items}

    def read_items(self, paths: Iterable[str] | None = None, *, verify: bool = True) -> dict[str, memoryview]:
        """Return ``{path: bytes view}`` for the given items (all when None).

        Every shard an item touches is fetched whole and verified before any byte is returned,
        so a caller never sees data from a corrupt shard.
        """
        wanted = list(self.items.values()) if paths is None else [self._item(p) for p in paths]
        needed = sorted({e.shard for item in wanted for e in item.extents})
        shards = self.fetch_shards(needed, verify=verify)
        return {item.path: item_view(item, shards) for item in wanted}

    def read_item(self, path: str) -> memoryview:
        return self.read_items([path])[path]

    def fetch_shards(self, indexes: Iterable[int], *, verify: bool = True) -> dict[int, memoryview]:
        """Fetch and verify shards by their index in the manifest, in parallel."""
        indexes = list(indexes)
        refs = self.manifest.shards
        with (
            ThreadPoolExecutor(self.threads, thread_name_prefix="tqsnap-read") as pool,
            ThreadPoolExecutor(self.threads, thread_name_prefix="tqsnap-range") as range_pool,
        ):
            futures = {
                i: pool.submit(
                    fetch_shard,
                    self.store,
                    refs[i],
                    range_size=self.range_size,
                    pool=range_pool,
                    verify=verify,
                    snapshot=self.name,
                )
                for i in indexes
            }
            return {i: f.result() for i, f in futures.items()}

    def _item(self, path: str) -> Item:
        try:
            return self.items[path]
        except KeyError:
            raise KeyError(f"snapshot {self.name} has no item {path!r}") from None

    def verify(self) -> VerifyReport:
        """Re-hash every shard; name each missing or corrupt one instead of stopping at the first."""
        report = VerifyReport(self.name)

        def check(ref: ShardRef) -> tuple[ShardRef, str | None]:
            try:
                fetch_shard(self.store, ref, snapshot=self.name)
                return ref, None
            except MissingShardError:
                return ref, "missing"
            except CorruptShardError:
                return ref, "corrupt"

        with ThreadPoolExecutor(self.threads) as pool:
            for ref, problem in pool.map(check, self.manifest.shards):
                report.shards += 1
                report.bytes += ref.size
                if problem == "missing":
                    report.missing.append(ref.key)
                elif problem == "corrupt":
                    report.corrupt.append(ref.key)
        return report
