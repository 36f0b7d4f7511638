"""Many shard jobs in parallel, yielded in order, with a bounded number of bytes in flight.

:meth:`~.shards.Shards.get_many` and :meth:`~.shards.Shards.adopt_many` both run through
:func:`windowed`, so the memory bound and the two-pool layout are written once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from ..errors import FormatError, ObjectNotFoundError
from ..format.manifest import ShardRef
from . import progress

K = TypeVar("K")

#: One shard job: ``fn(key, ref, ranges)``, where ``ranges`` is the pool for a big shard's
#: ranged reads (None when everything runs in the calling thread).
ShardJob = Callable[[K, ShardRef, "ThreadPoolExecutor | None"], Any]


def windowed(
    pairs: list[tuple[K, ShardRef]],
    fn: ShardJob[K],
    *,
    threads: int,
    window_bytes: int,
    return_exceptions: bool,
) -> Generator[tuple[K, Any], None, None]:
    """Run ``fn`` over ``pairs`` on ``threads`` threads, yielding ``(key, result)`` in order.

    At most about ``window_bytes`` of shards are being worked on or wait to be yielded (at
    least one shard, however large). ``threads=0`` runs each job in the calling thread, in
    order (deterministic simulations). Two pools, as shard jobs wait on their range reads:
    one pool could fill up with waiters and deadlock. With ``return_exceptions`` a job's
    :class:`~tqsnap.errors.FormatError` or :class:`~tqsnap.errors.ObjectNotFoundError` is
    yielded as its result; otherwise it stops the run. Closing the generator early cancels
    the jobs not yet started.
    """
    if threads == 0:
        for key, ref in pairs:
            result = _call(fn, key, ref, None, return_exceptions)
            progress.sink().advance(cost(ref))
            yield key, result
        return
    pending: deque[tuple[K, int, Future[Any]]] = deque()
    inflight = 0
    todo = iter(pairs)
    nxt = next(todo, None)
    with (
        ThreadPoolExecutor(threads, "tqsnap-shard") as pool,
        ThreadPoolExecutor(threads, "tqsnap-range") as ranges,
    ):
        try:
            while nxt is not None or pending:
                while nxt is not None and (not pending or inflight + cost(nxt[1]) <= window_bytes):
                    key, ref = nxt
                    pending.append((key, cost(ref), pool.submit(_call, fn, key, ref, ranges, return_exceptions)))
                    inflight += cost(ref)
                    nxt = next(todo, None)
                key, held, fut = pending.popleft()
                inflight -= held
                result = fut.result()
                progress.sink().advance(held)
                yield key, result
        finally:  # a failure or an early close: drop what has not started
            for _, _, fut in pending:
                fut.cancel()


def cost(ref: ShardRef) -> int:
    """Bytes a fetch of ``ref`` holds: the decoded shard (the stored one, when larger)."""
    size = ref.size if type(ref.size) is int else 0
    stored = ref.stored_size if type(ref.stored_size) is int else 0
    return max(size, stored, 1)


def _call(fn: Callable[..., Any], key: Any, ref: ShardRef, ranges: Any, return_exceptions: bool) -> Any:
    try:
        return fn(key, ref, ranges)
    except (FormatError, ObjectNotFoundError) as exc:
        if not return_exceptions:
            raise
        return exc
