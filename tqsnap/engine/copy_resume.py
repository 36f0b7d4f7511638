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
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from ..format.config import RepoConfig
from ..format.keys import SHARDS_PREFIX, parse_shard_key
from ..format.manifest import ShardRef
from ..store.base import ObjectStore

log = logging.getLogger(__name__)


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
) -> dict[str, ShardRef]:
    """hash -> a reference to an existing object at the destination that holds that content.

    ``wanted`` are the source's references; an object qualifies when its key parses as a shard
    of the same hash and codec, its size equals the stored size, and it is young enough
    (:func:`reuse_window`) measured from ``started_at``, which the caller read from the
    destination's clock before this listing. One LIST request per wanted hash.
    """
    refs = {ref.hash: ref for ref in wanted}
    window = reuse_window(config)
    if not refs or window <= 0:
        return {}

    def look(ref: ShardRef) -> ShardRef | None:
        best: tuple[float, str] | None = None
        for info in store.list(f"{SHARDS_PREFIX}{ref.hash[:2]}/{ref.hash}."):
            parsed = parse_shard_key(info.key)
            if parsed is None or parsed[0] != ref.hash or parsed[2] != ref.codec:
                continue
            if info.size != ref.stored_size:
                continue
            age = started_at - info.last_modified
            if age >= window:
                log.debug("not reusing %s: %.0fs old, the copy reuse window is %.0fs", info.key, age, window)
                continue
            if best is None or info.last_modified > best[0]:
                best = (info.last_modified, info.key)
        if best is None:
            return None
        return ShardRef(best[1], ref.hash, ref.size, ref.stored_size, ref.codec)

    found: dict[str, ShardRef] = {}
    items = list(refs.values())
    with ThreadPoolExecutor(max(1, min(threads, len(items))), "tqsnap-orphans") as pool:
        for ref in pool.map(look, items):
            if ref is not None:
                found[ref.hash] = ref
    if found:
        log.info("found %d shards an earlier copy left at %s; reusing them", len(found), store.url)
    return found
