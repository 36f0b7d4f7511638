"""Confirm that the shards a save reuses exist, once per process, before they are committed.

A writer reuses the shards its parent manifest lists without uploading them (docs/protocol.md
§3). Whoever can write a manifest can therefore make the next honest save reference whatever
it names: a crafted manifest at the head of a stream that maps a known hash to a key that does
not exist would make every later save commit a snapshot that cannot be restored. So a save
confirms each reused key with a HEAD (present, and the size the reference declares) before it
trusts it, and remembers the answer in a bounded cache keyed by store URL and key: a job that
saves every few minutes pays one HEAD per parent shard once, then nothing, because the keys it
uploads itself are added to the cache on commit.

An answer is remembered for half the repository's grace period. A key is confirmed while a
visible manifest references it (the parent at ``begin``, or the save's own commit), and gc
cannot delete it until that manifest's tombstone is older than ``grace`` (docs/protocol.md):
so a remembered key cannot have been deleted since, even if a crafted manifest names it later.

A HEAD cannot prove that an object of the right size holds the right bytes; readers verify
every shard against its hash (docs/format.md), so such a planted object is detected at load,
never loaded as data. docs/security.md states the threat model.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from ..format.manifest import ShardRef
from ..store import ObjectStore

log = logging.getLogger(__name__)

#: Keys remembered per process (about 150 bytes each: a few MiB at most).
CACHE_SIZE = 100_000
_HEAD_THREADS = 16


class ConfirmedShards:
    """A bounded, thread-safe set of (store URL, key, stored size) known to exist (LRU), each
    entry valid until its expiry on the monotonic clock."""

    def __init__(self, capacity: int = CACHE_SIZE) -> None:
        self.capacity = capacity
        self._seen: OrderedDict[tuple[str, str, int], float] = OrderedDict()
        self._lock = threading.Lock()

    def __contains__(self, entry: tuple[str, str, int]) -> bool:
        with self._lock:
            expiry = self._seen.get(entry)
            if expiry is None:
                return False
            if expiry < time.monotonic():
                del self._seen[entry]
                return False
            self._seen.move_to_end(entry)
            return True

    def add(self, entries: Iterable[tuple[str, str, int]], ttl_s: float = float("inf")) -> None:
        expiry = time.monotonic() + ttl_s
        with self._lock:
            for entry in entries:
                self._seen[entry] = expiry
                self._seen.move_to_end(entry)
            while len(self._seen) > self.capacity:
                self._seen.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._seen.clear()


#: The process-wide cache every writer shares.
CONFIRMED = ConfirmedShards()


def remember(store: ObjectStore, refs: Iterable[ShardRef], ttl_s: float = float("inf")) -> None:
    """Record shards known to exist (this process uploaded them, or a HEAD saw them), for
    ``ttl_s`` seconds: half the repository's grace keeps the answer true (module doc)."""
    CONFIRMED.add(((store.url, r.key, r.stored_size) for r in refs), ttl_s)


def unconfirmed(
    store: ObjectStore, refs: Iterable[ShardRef], ttl_s: float = float("inf")
) -> list[tuple[ShardRef, str]]:
    """The refs whose key is absent or whose size disagrees, each with the reason.

    Refs already in the cache cost nothing; the rest are checked with HEADs in parallel and
    the good ones are cached. Store errors propagate: an unanswered HEAD confirms nothing.
    """
    todo = list({r.key: r for r in refs if (store.url, r.key, r.stored_size) not in CONFIRMED}.values())
    if not todo:
        return []
    with ThreadPoolExecutor(min(_HEAD_THREADS, len(todo)), thread_name_prefix="tqsnap-head") as pool:
        infos = list(pool.map(lambda r: store.head(r.key), todo))
    bad: list[tuple[ShardRef, str]] = []
    good: list[ShardRef] = []
    for ref, info in zip(todo, infos, strict=True):
        if info is None:
            bad.append((ref, "absent"))
        elif info.size != ref.stored_size:
            bad.append((ref, f"{info.size} bytes stored, {ref.stored_size} declared"))
        else:
            good.append(ref)
    remember(store, good, ttl_s)
    log.debug("confirmed %d reused shards with HEAD; %d failed", len(good), len(bad))
    return bad
