"""Fetch a snapshot's items through the shard layer (:mod:`.shards`): every shard verified.

Items come back as memoryviews into the shard buffers they were read with, so a tensor can be
rebuilt with ``torch.frombuffer`` and no further copy.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import MissingShardError
from ..format.body_columnar_read import decode_any_body, items_by_path
from ..format.manifest import Item, Manifest, ShardRef
from ..store.base import ObjectStore
from ..store.buffers import writable_buffer
from .shards import Shards

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


def item_view(item: Item, shards: Mapping[int, memoryview] | Sequence[memoryview]) -> memoryview:
    """An item's bytes from its fetched shards: a view when it has one extent, else a joined copy."""
    if len(item.extents) == 1:
        e = item.extents[0]
        return shards[e.shard][e.offset : e.offset + e.length]
    buf = writable_buffer(item.size, f"item {item.path!r}")
    pos = 0
    for e in item.extents:
        buf[pos : pos + e.length] = shards[e.shard][e.offset : e.offset + e.length]
        pos += e.length
    return buf


def iter_items(
    shards: Shards,
    refs: Sequence[ShardRef],
    items: Iterable[Item],
    *,
    window_bytes: int = 256 * MiB,
    verify: bool = True,
    snapshot: str = "",
) -> Iterator[tuple[Item, memoryview]]:
    """Each item with its bytes, in the order given, holding only the shards still needed.

    Shards are fetched in the order the items first use them (at most about
    ``window_bytes`` ahead, :meth:`Shards.get_many`) and dropped after the last item that
    uses them, so a caller that sorts its items by shard holds little more than a window.
    """
    items = list(items)
    first_use = list(dict.fromkeys(e.shard for item in items for e in item.extents))
    uses = Counter(s for item in items for s in {e.shard for e in item.extents})
    fetched = shards.get_many(
        [(i, refs[i]) for i in first_use], window_bytes=window_bytes, verify=verify, snapshot=snapshot
    )
    held: dict[int, memoryview] = {}
    try:
        for item in items:
            for shard in dict.fromkeys(e.shard for e in item.extents):
                while shard not in held:
                    index, view = next(fetched)
                    held[index] = view
            yield item, item_view(item, held)
            for shard in {e.shard for e in item.extents}:
                uses[shard] -= 1
                if uses[shard] == 0:
                    del held[shard]
    finally:
        fetched.close()


def load_body(shards: Shards | ObjectStore, manifest: Manifest) -> Manifest:
    """Fill in ``items`` and ``extra`` from the body shard, if the manifest has one (verified)."""
    if manifest.body_shard is not None and not manifest.items and not manifest.extra:
        shards = shards if isinstance(shards, Shards) else Shards(shards)
        ref = manifest.shards[manifest.body_shard]
        data = shards.get(ref, snapshot=str(manifest.id))
        manifest.items, manifest.extra = decode_any_body(data, ref.key, manifest.body_format)  # type: ignore[assignment]
        manifest.validate(str(manifest.id))
    return manifest


class SnapshotReader:
    """Reads items of one committed manifest.

    ``threads`` parallel requests fetch at most about ``window_bytes`` of shards ahead of
    their use (:mod:`.shards`); ``threads=0`` fetches in the calling thread.
    """

    def __init__(
        self,
        store: ObjectStore | Shards,
        manifest: Manifest,
        *,
        threads: int = 16,
        range_size: int = 32 * MiB,
        window_bytes: int = 256 * MiB,
    ) -> None:
        self.shards = store if isinstance(store, Shards) else Shards(store, threads=threads, range_size=range_size)
        self.store = self.shards.store
        self.manifest = manifest
        self.window_bytes = window_bytes
        self.name = str(manifest.id)
        load_body(self.shards, manifest)
        #: ``{path: Item}``; for a columnar body a view that finds paths by binary search.
        self.items: Mapping[str, Item] = items_by_path(manifest.items)

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

    def iter_items(
        self, items: Iterable[Item], *, verify: bool = True, window_bytes: int | None = None
    ) -> Iterator[tuple[Item, memoryview]]:
        """:func:`iter_items` over this snapshot: bounded memory, for callers that copy items out."""
        return iter_items(
            self.shards,
            self.manifest.shards,
            items,
            window_bytes=self.window_bytes if window_bytes is None else window_bytes,
            verify=verify,
            snapshot=self.name,
        )

    def fetch_shards(self, indexes: Iterable[int], *, verify: bool = True) -> dict[int, memoryview]:
        """Fetch and verify shards by their index in the manifest, in parallel."""
        refs = self.manifest.shards
        return dict(
            self.shards.get_many(
                [(i, refs[i]) for i in indexes], window_bytes=self.window_bytes, verify=verify, snapshot=self.name
            )
        )

    def _item(self, path: str) -> Item:
        try:
            return self.items[path]
        except KeyError:
            raise KeyError(f"snapshot {self.name} has no item {path!r}") from None

    def verify(self) -> VerifyReport:
        """Re-hash every shard; name each missing or corrupt one instead of stopping at the first."""
        report = VerifyReport(self.name)
        fetched = self.shards.get_many(
            list(enumerate(self.manifest.shards)),
            window_bytes=self.window_bytes,
            snapshot=self.name,
            return_exceptions=True,
        )
        for i, outcome in fetched:
            ref = self.manifest.shards[i]
            report.shards += 1
            report.bytes += ref.size
            if isinstance(outcome, MissingShardError):
                report.missing.append(ref.key)
            elif isinstance(outcome, Exception):
                report.corrupt.append(ref.key)
        return report
