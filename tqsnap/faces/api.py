"""The Python API: one call per user job, each taking a repository URL.

Every function accepts ``storage_options`` (passed to the store: ``endpoint_url``, credentials,
``conditional_mode``, ...) and an already opened :class:`~tqsnap.engine.Repository` or store in
place of the URL.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..adapters.state_dict import load_state, save_state
from ..engine import PackOptions, Repository, SnapshotInfo, VerifyReport
from ..engine.copy import CopyResult, copy_all, copy_snapshot
from ..format.config import DEFAULT_GRACE, DEFAULT_MAX_WRITE_DURATION
from ..store import ObjectStore

RepoLike = str | ObjectStore | Repository


def open_repo(
    url: RepoLike, *, create: bool = False, storage_options: dict[str, Any] | None = None
) -> Repository:
    """Open the repository at ``url`` (creating it with defaults when ``create``)."""
    if isinstance(url, Repository):
        return url
    return Repository.open(url, create=create, storage_options=storage_options)


def init_repo(
    url: str | ObjectStore,
    *,
    grace: float | str = DEFAULT_GRACE,
    max_write_duration: float | str = DEFAULT_MAX_WRITE_DURATION,
    storage_options: dict[str, Any] | None = None,
    single_writer: bool = False,
) -> Repository:
    """Create a repository with its gc timings fixed (grace must exceed 2 * max_write_duration).

    On an S3 server that accepts a second put-if-absent of one key, creation is refused unless
    ``single_writer`` (recorded in ``tqsnap.json``): then only one process may write at a time.
    """
    return Repository.init(
        url,
        grace=grace,
        max_write_duration=max_write_duration,
        storage_options=storage_options,
        single_writer=single_writer,
    )


def save(
    url: RepoLike,
    state: Any,
    *,
    stream: str = "default",
    metadata: dict[str, Any] | None = None,
    allow_pickle: bool = False,
    storage_options: dict[str, Any] | None = None,
    options: PackOptions | None = None,
) -> SnapshotInfo:
    """Save a nested state (tensors, bytes, JSON values) as the next snapshot of ``stream``.

    A first save creates the repository with default settings.
    """
    repo = open_repo(url, create=True, storage_options=storage_options)
    return save_state(
        repo, state, stream=stream, metadata=metadata, allow_pickle=allow_pickle, options=options
    )


def load(
    url: RepoLike,
    *,
    stream: str = "default",
    snapshot: str | int = "latest",
    allow_pickle: bool = False,
    storage_options: dict[str, Any] | None = None,
    include: Sequence[str] | None = None,
    part: str | None = None,
) -> Any:
    """Load a state saved with :func:`save`; ``snapshot`` is ``latest``, a seq or ``tag:<name>``.

    ``part`` loads that part of a job snapshot (``tqsnap.job``), e.g. its ``loop`` state.

    ``include`` restores chosen items only: glob patterns over item paths (``model/*``; a
    pattern naming a parent, ``model``, takes all below it). Only the shards holding them are
    fetched, and the returned tree holds only those leaves.
    """
    repo = open_repo(url, storage_options=storage_options)
    return load_state(
        repo, stream=stream, snapshot=snapshot, allow_pickle=allow_pickle, include=include, part=part
    )


def snapshots(
    url: RepoLike, stream: str | None = None, *, storage_options: dict[str, Any] | None = None
) -> list[SnapshotInfo]:
    """Visible snapshots of one stream (or all streams), oldest first."""
    return open_repo(url, storage_options=storage_options).snapshots(stream)


def verify(
    url: RepoLike,
    *,
    stream: str = "default",
    snapshot: str | int = "latest",
    storage_options: dict[str, Any] | None = None,
) -> VerifyReport:
    """Re-hash every shard of a snapshot; the report names each missing or corrupt one."""
    return open_repo(url, storage_options=storage_options).verify(stream, snapshot)


def tag(
    url: RepoLike,
    name: str,
    *,
    stream: str = "default",
    snapshot: str | int = "latest",
    storage_options: dict[str, Any] | None = None,
) -> Any:
    """Give a snapshot an immutable name; ``forget --keep-tag`` keeps tagged snapshots."""
    return open_repo(url, storage_options=storage_options).tag(name, stream, snapshot)


def copy(
    src: RepoLike,
    dst: RepoLike,
    *,
    stream: str | None = "default",
    snapshot: str | int = "latest",
    dst_stream: str | None = None,
    tags: bool = False,
    storage_options: dict[str, Any] | None = None,
    dst_storage_options: dict[str, Any] | None = None,
) -> CopyResult:
    """Copy a snapshot into another repository (or stream); only shards the destination lacks move.

    Idempotent and in order (tqsnap/engine/copy.py): a snapshot copied before comes back with
    ``status`` "already present"; one older than what the destination stream holds from the
    same source raises :class:`~tqsnap.errors.CopyOrderError`. ``snapshot="all"`` mirrors every
    visible snapshot of ``stream`` (``stream=None``: of every stream) and returns a list.
    The result reads like the destination's :class:`SnapshotInfo` (``.seq``, ``.stats``).
    """
    source = open_repo(src, storage_options=storage_options)
    target = open_repo(dst, create=True, storage_options=dst_storage_options or storage_options)
    if snapshot == "all":
        return copy_all(source, target, stream, dst_stream=dst_stream, tags=tags)  # type: ignore[return-value]
    return copy_snapshot(source, target, stream or "default", snapshot, dst_stream=dst_stream, tags=tags)
