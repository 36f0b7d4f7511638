"""gc's shard sweep as independent pieces: stream a prefix's listing against the live references.

The mark phase of gc (docs/protocol.md, section 6) reduces every live manifest to a
:class:`ReferenceSet`: the sorted 64-bit xxh3 digests of the referenced shard keys, 8 bytes per
reference in one ``array('Q')`` (8 MB per million referenced shards; 16 MB per million at the
peak while it is sorted, where numpy is installed). The sweep then streams each prefix's listing past that set and
keeps only the garbage it finds, so a shard object that is referenced costs nothing beyond the
listing page it arrives in: memory grows with references and garbage, never with every key.

A digest collision can only make an unreferenced key look referenced, which keeps it: the
error is on the safe side, and with 64-bit digests it happens to about one key in 10^19 / N for
N references (one kept garbage object in ~5,000 gc runs of a 10^8-reference repository).

Each piece is a plain function of picklable arguments, so :mod:`.fanout` can run it in a thread
or a Ray task; the rules it applies are the ones :class:`~.gc.GarbageCollector` holds (the age
rule is passed in, so the protocol simulation's switched-off variant is the code that runs).
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import xxhash

from ..format.keys import parse_shard_key
from ..store.base import ObjectInfo, ObjectStore
from .fanout import resolve_executor, run_pieces, split

K = TypeVar("K")
V = TypeVar("V")
P = TypeVar("P")

#: S3 ListObjectsV2 returns at most this many keys per page; used to count list requests.
LIST_PAGE = 1000


def key_digest(key: str) -> int:
    """The 64-bit digest a :class:`ReferenceSet` stores for a shard key."""
    return xxhash.xxh3_64_intdigest(key.encode())


class ReferenceSet:
    """The shard keys that live manifests reference, as a sorted array of 64-bit digests.

    Supports ``key in refs`` and ``len(refs)``; it cannot list the keys back (it does not hold
    them, which is the point). Picklable, so Ray sends it to every sweep task once.
    """

    __slots__ = ("_digests",)

    def __init__(self, digests: Iterable[int] = ()) -> None:
        self._digests = _sorted_unique(array("Q", digests))

    @classmethod
    def of_keys(cls, keys: Iterable[str]) -> ReferenceSet:
        return cls(key_digest(k) for k in keys)

    @staticmethod
    def digests_of(keys: Iterable[str]) -> array[int]:
        """One manifest's references as an array (8 bytes each), for caching between listings."""
        return array("Q", (key_digest(k) for k in keys))

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        d = key_digest(key)
        i = bisect_left(self._digests, d)
        return i < len(self._digests) and self._digests[i] == d

    def __len__(self) -> int:
        return len(self._digests)

    @property
    def nbytes(self) -> int:
        return self._digests.itemsize * len(self._digests)

    def __reduce__(self) -> tuple[object, ...]:
        return (_from_array, (self._digests,))


def _sorted_unique(digests: array[int]) -> array[int]:
    """Sort and deduplicate in place of Python ints where numpy is installed (it comes with
    torch): 16 bytes per reference at the peak instead of about 90 (a set of Python ints)."""
    try:
        import numpy as np
    except ImportError:
        return array("Q", sorted(set(digests)))
    out = array("Q")
    out.frombytes(np.unique(np.frombuffer(digests, dtype=np.uint64)).tobytes())
    return out


def _from_array(digests: array[int]) -> ReferenceSet:
    refs = ReferenceSet()
    refs._digests = digests  # already sorted and unique
    return refs


@dataclass(frozen=True)
class SweepRules:
    """What decides that a listed shard is garbage, fixed for the whole gc run."""

    cutoff: float  # T - grace: only shards last modified before it may be deleted
    grace: float
    require_age: bool  # False only in the protocol simulation's switched-off variant
    threads: int = 1  # concurrent listings within one piece


@dataclass
class SweepPart:
    """What one piece (or the whole sweep, once merged) found under its prefixes."""

    shards_scanned: int = 0
    shard_bytes_scanned: int = 0
    foreign_keys: int = 0
    young_garbage: int = 0
    young_garbage_bytes: int = 0
    young_garbage_deletable_at: float | None = None
    list_requests: int = 0
    garbage: list[ObjectInfo] = field(default_factory=list)

    def merge(self, other: SweepPart) -> None:
        self.shards_scanned += other.shards_scanned
        self.shard_bytes_scanned += other.shard_bytes_scanned
        self.foreign_keys += other.foreign_keys
        self.young_garbage += other.young_garbage
        self.young_garbage_bytes += other.young_garbage_bytes
        self.list_requests += other.list_requests
        if other.young_garbage_deletable_at is not None and (
            self.young_garbage_deletable_at is None
            or other.young_garbage_deletable_at > self.young_garbage_deletable_at
        ):
            self.young_garbage_deletable_at = other.young_garbage_deletable_at
        self.garbage.extend(other.garbage)


def classify(infos: Iterable[ObjectInfo], refs: ReferenceSet, rules: SweepRules, part: SweepPart) -> None:
    """Step 3's decision for each listed object, added to ``part``.

    Keys that are not shard names are counted and never deleted; referenced shards are kept;
    unreferenced ones are garbage only when last modified before ``T - grace`` (the age rule
    protects uploads of writers that have not committed yet).
    """
    for info in infos:
        if parse_shard_key(info.key) is None:
            part.foreign_keys += 1  # not ours to judge: never deleted
            continue
        part.shards_scanned += 1
        part.shard_bytes_scanned += info.size
        if info.key in refs:
            continue
        if rules.require_age and not info.last_modified < rules.cutoff:
            part.young_garbage += 1
            part.young_garbage_bytes += info.size
            due = info.last_modified + rules.grace
            if part.young_garbage_deletable_at is None or due > part.young_garbage_deletable_at:
                part.young_garbage_deletable_at = due
            continue
        part.garbage.append(info)


def _sweep_one(store: ObjectStore, refs: ReferenceSet, rules: SweepRules, prefix: str) -> SweepPart:
    part = SweepPart()
    seen = 0

    def counted() -> Iterable[ObjectInfo]:
        nonlocal seen
        for info in store.list(prefix):  # raises IncompleteListingError; never caught here
            seen += 1
            yield info

    classify(counted(), refs, rules, part)
    part.list_requests = max(1, math.ceil(seen / LIST_PAGE))
    return part


def sweep_prefixes(store: ObjectStore, refs: ReferenceSet, rules: SweepRules, prefixes: Sequence[str]) -> SweepPart:
    """One piece of the sweep: list ``prefixes`` (``rules.threads`` at a time) and classify.

    Nothing is deleted here: the caller deletes only after every piece has listed its prefixes
    completely, so an incomplete listing anywhere stops the whole run before any delete.
    """
    total = SweepPart()
    if rules.threads <= 1 or len(prefixes) <= 1:
        parts = [_sweep_one(store, refs, rules, p) for p in prefixes]
    else:
        with ThreadPoolExecutor(min(rules.threads, len(prefixes)), thread_name_prefix="tqsnap-sweep") as pool:
            parts = list(pool.map(lambda p: _sweep_one(store, refs, rules, p), prefixes))
    for part in parts:
        total.merge(part)
    return total


def delete_batches(store: ObjectStore, threads: int, batches: Sequence[Sequence[str]]) -> int:
    """Delete each batch with one DeleteObjects request, ``threads`` at a time; the request count."""
    if threads <= 1 or len(batches) <= 1:
        return sum(store.delete_many(b) for b in batches)
    with ThreadPoolExecutor(min(threads, len(batches)), thread_name_prefix="tqsnap-delete") as pool:
        return sum(pool.map(store.delete_many, batches))


def list_prefixes(
    store: ObjectStore,
    jobs: Sequence[tuple[str, P]],
    pick: Callable[[Iterable[ObjectInfo], P], dict[K, V]],
    *,
    workers: int | None,
    executor: str,
    threads: int,
) -> dict[K, V]:
    """List each ``(prefix, payload)`` of ``jobs`` once; merge ``pick(listing, payload)`` of all.

    The fanned-out listing loop of ``check`` (which referenced keys exist) and of ``copy``
    (which orphans an interrupted copy left): with Ray, the jobs are dealt into ``4 x workers``
    pieces (default 4 workers), each listing ``threads`` prefixes at a time in its task; with
    threads, one job per piece and ``workers`` (default ``threads``) threads. ``pick`` must be
    picklable by reference (a module-level function, or a :func:`functools.partial` of one),
    as must the payloads. A listing that cannot see everything raises
    (:class:`~tqsnap.errors.IncompleteListingError`) and nothing is merged.
    """
    kind = resolve_executor(executor, store)
    if kind == "ray":
        n = workers or 4
        pieces, inner = split(list(jobs), n * 4), threads
    else:
        n = workers or threads
        pieces, inner = [[job] for job in jobs], 1
    found: dict[K, V] = {}
    for part in run_pieces(_list_piece, pieces, workers=n, executor=kind, shared=(store, pick, inner)):
        found.update(part)
    return found


def _list_piece(
    store: ObjectStore,
    pick: Callable[[Iterable[ObjectInfo], P], dict[K, V]],
    threads: int,
    piece: Sequence[tuple[str, P]],
) -> dict[K, V]:
    """One piece of :func:`list_prefixes`: its prefixes, ``threads`` listings at a time."""

    def one(job: tuple[str, P]) -> dict[K, V]:
        return pick(store.list(job[0]), job[1])  # a listing error propagates

    if threads <= 1 or len(piece) <= 1:
        parts = [one(job) for job in piece]
    else:
        with ThreadPoolExecutor(min(threads, len(piece)), thread_name_prefix="tqsnap-list") as pool:
            parts = list(pool.map(one, piece))
    found: dict[K, V] = {}
    for part in parts:
        found.update(part)
    return found


__all__ = [
    "LIST_PAGE",
    "ReferenceSet",
    "SweepPart",
    "SweepRules",
    "classify",
    "delete_batches",
    "key_digest",
    "list_prefixes",
    "sweep_prefixes",
]
