"""Find shards an interrupted copy already uploaded to the destination, and that may be reused.

Shard keys are ``shards/<h2>/<hash>.<upload-id>[.<codec>]``, so a listing of
``shards/<h2>/<hash>.`` finds every earlier upload of one content, including those of a copy
that was killed before its commit. Such an orphan is referenced by no manifest, and gc deletes
it once it is older than ``grace``. Reusing it is safe only if gc cannot delete it before the
copy's commit lands, which docs/protocol.md §3 (W2, "young orphans") bounds:

    age at the copy's ``started_at`` (server time) < grace - 2 * max_write_duration

The commit lands at most ``max_write_duration`` (plus clock error and request time, which
Assumption A keeps below ``max_write_duration``) after ``started_at``, so the orphan is then
still younger than ``grace`` and no gc run can have listed it as old garbage. ``grace >
2 * max_write_duration`` holds in every repository, so the window is never empty. An older
orphan is left alone and the content is uploaded to a fresh key, as any save does.

Two ways to look, with the same answer: one LIST of ``shards/<h2>/<hash>.`` per wanted hash
(cheap for a few shards), or, for a large copy (``copy --all`` of a big repository), one
streamed listing of each ``shards/<h2>/`` prefix that holds a wanted hash, fanned out over
threads or Ray tasks (:mod:`.fanout`): a million wanted shards then cost about
``objects / 1000`` LIST pages instead of a million LISTs.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from ..format.config import RepoConfig
from ..format.keys import SHARDS_PREFIX, parse_shard_key
from ..format.manifest import ShardRef
from ..store.base import ObjectInfo, ObjectStore
from .fanout_sweep import list_prefixes

log = logging.getLogger(__name__)

#: Above this many wanted hashes, whole prefixes are listed instead of one LIST per hash.
SWEEP_ABOVE = 2048


def reuse_window(config: RepoConfig) -> float:
    """The largest age (seconds, server time at the copy's start) of an orphan a copy may reuse."""
    return config.grace - 2 * config.max_write_duration


def find_young_orphans(
    store: ObjectStore,
    config: RepoConfig,
    wanted: Iterable[ShardRef],
    started_at: float,
    *,
    threads: int = 8,
    sweep: bool | None = None,
    workers: int | None = None,
    executor: str = "auto",
) -> dict[str, ShardRef]:
    """hash -> a reference to an existing object at the destination that holds that content.

    ``wanted`` are the source's references; an object qualifies when its key parses as a shard
    of the same hash and codec, its size equals the stored size, and it is young enough
    (:func:`reuse_window`) measured from ``started_at``, which the caller read from the
    destination's clock before this listing. One LIST request per wanted hash, or with
    ``sweep`` (the default above :data:`SWEEP_ABOVE` hashes) one listing per prefix, fanned
    out over ``workers`` threads or Ray tasks.
    """
    refs = {ref.hash: ref for ref in wanted}
    window = reuse_window(config)
    if not refs or window <= 0:
        return {}
    if sweep is None:
        sweep = len(refs) > SWEEP_ABOVE
    if sweep:
        found = _sweep_prefixes(store, refs, (started_at, window), threads, workers, executor)
    else:
        found = {}
        items = list(refs.values())

        def look(ref: ShardRef) -> ShardRef | None:
            listed = store.list(f"{SHARDS_PREFIX}{ref.hash[:2]}/{ref.hash}.")
            return _best(listed, {ref.hash: ref}, (started_at, window)).get(ref.hash)

        with ThreadPoolExecutor(max(1, min(threads, len(items))), "tqsnap-orphans") as pool:
            for ref in pool.map(look, items):
                if ref is not None:
                    found[ref.hash] = ref
    if found:
        log.info("found %d shards an earlier copy left at %s; reusing them", len(found), store.url)
    return found


def _best(infos: Iterable[ObjectInfo], refs: dict[str, ShardRef], when: tuple[float, float]) -> dict[str, ShardRef]:
    """For each wanted hash, the youngest listed object that may stand in for it.

    It must parse as a shard of that hash and codec, have the stored size, and be younger
    than the reuse window at ``started_at`` (``when`` is the pair of both).
    """
    started_at, window = when
    best: dict[str, tuple[float, str]] = {}
    for info in infos:
        parsed = parse_shard_key(info.key)
        ref = refs.get(parsed[0]) if parsed is not None else None
        if ref is None or parsed is None or parsed[2] != ref.codec or info.size != ref.stored_size:
            continue
        age = started_at - info.last_modified
        if age >= window:
            log.debug("not reusing %s: %.0fs old, the copy reuse window is %.0fs", info.key, age, window)
            continue
        if ref.hash not in best or info.last_modified > best[ref.hash][0]:
            best[ref.hash] = (info.last_modified, info.key)
    return {h: ShardRef(key, h, refs[h].size, refs[h].stored_size, refs[h].codec) for h, (_, key) in best.items()}


def _sweep_prefixes(
    store: ObjectStore,
    refs: dict[str, ShardRef],
    when: tuple[float, float],
    threads: int,
    workers: int | None,
    executor: str,
) -> dict[str, ShardRef]:
    by_prefix: dict[str, dict[str, ShardRef]] = {}
    for h, ref in refs.items():
        by_prefix.setdefault(f"{SHARDS_PREFIX}{h[:2]}/", {})[h] = ref
    jobs = sorted(by_prefix.items())
    pick = functools.partial(_best_of_prefix, when)
    return list_prefixes(store, jobs, pick, workers=workers, executor=executor, threads=threads)


def _best_of_prefix(
    when: tuple[float, float], infos: Iterable[ObjectInfo], refs: dict[str, ShardRef]
) -> dict[str, ShardRef]:
    """:func:`_best` with the arguments in the order :func:`.fanout_sweep.list_prefixes` passes them."""
    return _best(infos, refs, when)
