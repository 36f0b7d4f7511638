"""Run one function over many work items in parallel: local threads, or Ray tasks on a cluster.

Repository maintenance (gc, check) spends its time listing and deleting under the 256
``shards/xx/`` prefixes. Those prefixes partition the shard key space (the fan-out directory
is the hash's first two digits, :func:`~tqsnap.format.keys.shard_prefixes`), so a sweep splits
into independent pieces that several processes, or several Ray nodes, can do at once.

Two executors:

- ``"threads"``: a thread pool of ``workers`` threads in this process. Enough when the store's
  latency, not this process's CPU, bounds the run.
- ``"ray"``: ``workers`` Ray tasks at a time (Ray is the distributed engine tqsnap already runs
  on for TransferQueue). Each task reopens the store from its pickled spec
  (:meth:`~tqsnap.store.base.ObjectStore.__reduce__`), so only the spec travels, never a
  connection. ``"auto"`` picks Ray when this process is already connected to a Ray cluster
  (or ``RAY_ADDRESS`` names one to join) and the store can be reopened elsewhere, threads
  otherwise.

Errors are never swallowed: the first exception of any piece is raised to the caller, with
Ray's wrapper removed so that an :class:`~tqsnap.errors.IncompleteListingError` in a worker
is an ``IncompleteListingError`` here. Pieces still running are cancelled (Ray) or awaited
(threads), and the caller has done nothing irreversible yet: the sweep deletes only after
every listing piece has answered.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any, TypeVar

from ..errors import JobError
from ..store.base import ObjectStore

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

EXECUTORS = ("auto", "threads", "ray")


def resolve_executor(executor: str, store: ObjectStore) -> str:
    """``"threads"`` or ``"ray"``: what ``executor`` means for this store in this process.

    ``"ray"`` asked for explicitly needs a store that another process can reopen (an S3 URL or
    a local path): an in-memory store raises :class:`~tqsnap.errors.JobError` rather than
    silently sweeping something other than the repository.
    """
    if executor not in EXECUTORS:
        raise JobError(f"executor {executor!r}: use one of {', '.join(EXECUTORS)}")
    if executor == "threads":
        return "threads"
    if executor == "auto":
        if not store.shareable_across_processes:
            return "threads"
        # A process that has not imported Ray has not started it: asking would cost Ray's
        # import (1-2 s of CPU) on every gc and check, with the answer known to be no.
        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized():
            return "ray"
        if not os.environ.get("RAY_ADDRESS"):
            return "threads"
        try:
            import ray  # noqa: F401 - a cluster to join: only checks that Ray is installed
        except ImportError:
            return "threads"
        return "ray"
    if not store.shareable_across_processes:
        raise JobError(
            f"executor 'ray' needs a store other processes can open; {store.url} is in-process only. "
            "Use executor 'threads', or a local path or s3:// URL"
        )
    try:
        import ray  # noqa: F401 - only checks that Ray is installed
    except ImportError:
        raise JobError("executor 'ray' needs Ray installed (pip install 'tqsnap[tq]')") from None
    return "ray"


def split(items: Sequence[T], parts: int) -> list[list[T]]:
    """``items`` dealt round-robin into at most ``parts`` non-empty lists.

    Round-robin rather than contiguous: neighbouring shard prefixes are equally full on
    average, but a repository written by one stream may not be, and dealing spreads that out.
    """
    parts = max(1, min(parts, len(items)))
    return [list(items[i::parts]) for i in range(parts)]


def run_pieces(
    fn: Callable[..., R],
    pieces: Sequence[Any],
    *,
    workers: int,
    executor: str,
    shared: tuple[Any, ...] = (),
    on_result: Callable[[R], None] | None = None,
) -> list[R]:
    """``[fn(*shared, piece) for piece in pieces]``, computed in parallel; results in order.

    ``fn`` must be a module-level function (Ray imports it by name in the worker). ``shared``
    arguments are sent once (``ray.put``) however many pieces use them. ``on_result`` runs in
    the calling thread as each piece finishes (progress reporting).
    """
    workers = max(1, workers)
    done = on_result or (lambda _r: None)
    if executor == "ray":
        return _run_ray(fn, pieces, workers, shared, done)
    if workers == 1 or len(pieces) <= 1:
        out = []
        for piece in pieces:
            out.append(fn(*shared, piece))
            done(out[-1])
        return out
    with ThreadPoolExecutor(workers, thread_name_prefix="tqsnap-fanout") as pool:
        futures = [pool.submit(fn, *shared, piece) for piece in pieces]
        try:
            for f in as_completed(futures):
                done(f.result())
            return [f.result() for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()
            raise


def _run_ray(
    fn: Callable[..., R],
    pieces: Sequence[Any],
    workers: int,
    shared: tuple[Any, ...],
    on_result: Callable[[R], None],
) -> list[R]:
    import ray
    from ray.exceptions import RayTaskError

    if not ray.is_initialized():
        # Joins the cluster named by RAY_ADDRESS, or starts a local one: the caller asked for Ray.
        ray.init(ignore_reinit_error=True, log_to_driver=False)
    remote = ray.remote(num_cpus=1, max_retries=0)(fn)
    shared_refs = [ray.put(value) for value in shared]
    results: dict[int, R] = {}
    pending: dict[Any, int] = {}
    next_piece = 0
    limit = workers  # exactly ``workers`` tasks run at once, whatever the cluster's size
    try:
        for _ in range(len(pieces) + 1):  # each pass finishes at least one piece
            while next_piece < len(pieces) and len(pending) < limit:
                pending[remote.remote(*shared_refs, pieces[next_piece])] = next_piece
                next_piece += 1
            if not pending:
                break
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                i = pending.pop(ref)
                results[i] = ray.get(ref)
                on_result(results[i])
    except RayTaskError as exc:
        cause = exc.cause if isinstance(getattr(exc, "cause", None), BaseException) else None
        if cause is not None:
            raise cause from None
        raise
    finally:
        for ref in pending:
            ray.cancel(ref, force=False)
    if len(results) != len(pieces):  # pragma: no cover - the loop bound above makes this unreachable
        raise RuntimeError(f"fan-out finished {len(results)} of {len(pieces)} pieces")
    return [results[i] for i in range(len(pieces))]


__all__ = ["EXECUTORS", "resolve_executor", "run_pieces", "split"]
