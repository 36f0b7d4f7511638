"""Move a copy's missing shards with several workers: local threads, or Ray tasks on a cluster.

``copy --all`` of a large repository spends its time reading shards from the source and
putting them at the destination. Each shard is independent, so the work splits like gc's
sweep (:mod:`.fanout`): with threads, one pool of ``workers`` threads in this process; with
Ray, the shards are dealt into ``4 x workers`` pieces and ``workers`` tasks at a time each
adopt one piece (``threads`` shards at a time), reopening both stores from their specs, so the
bytes flow between the stores and the Ray workers, spread over the cluster's nodes, never
through this process.

Every shard is verified before it is uploaded, wherever it runs
(:meth:`~.shards.Shards.adopt`), and the results are the same references in the same order
as with one worker; only the upload ids, fresh for every upload, differ.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from ..format.manifest import ShardRef
from ..store.base import ObjectStore
from . import progress
from .fanout import resolve_executor, run_pieces, split
from .shards import Shards


def copy_executor(executor: str, src: ObjectStore, dst: ObjectStore) -> str:
    """``"threads"`` or ``"ray"``: Ray only when both stores can be reopened in another process.

    ``"ray"`` asked for explicitly with a store that cannot raises
    :class:`~tqsnap.errors.JobError` (:func:`.fanout.resolve_executor`).
    """
    kinds = {resolve_executor(executor, src), resolve_executor(executor, dst)}
    return "ray" if kinds == {"ray"} else "threads"


def adopt_shards(
    src: ObjectStore,
    dst: ObjectStore,
    pairs: Sequence[tuple[int, ShardRef]],
    *,
    snapshot: str,
    threads: int,
    workers: int | None,
    executor: str,
) -> Iterator[tuple[int, ShardRef]]:
    """``(index, new reference at dst)`` for each ``(index, source reference)``, in order."""
    kind = copy_executor(executor, src, dst)
    if kind == "threads":
        n = workers or threads
        source = Shards(src, threads=n)
        yield from Shards(dst, threads=n).adopt_many(source, pairs, snapshot=snapshot)
        return
    n = workers or 4
    pieces = split(list(pairs), n * 4)

    def moved(part: list[tuple[int, ShardRef]]) -> None:  # the tasks' progress, reported here
        for _, ref in part:
            progress.sink().uploaded(ref.stored_size)

    parts = run_pieces(_adopt_piece, pieces, workers=n, executor=kind, shared=(src, dst, threads, snapshot), on_result=moved)
    new = dict(pair for part in parts for pair in part)
    for i, _ in pairs:
        yield i, new[i]


def _adopt_piece(
    src: ObjectStore, dst: ObjectStore, threads: int, snapshot: str, piece: Sequence[tuple[int, ShardRef]]
) -> list[tuple[int, ShardRef]]:
    """One Ray task: verify and upload ``piece``, ``threads`` shards at a time."""
    source = Shards(src, threads=threads)
    return list(Shards(dst, threads=threads).adopt_many(source, piece, snapshot=snapshot))
