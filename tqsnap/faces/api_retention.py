"""The Python API of retention: ``forget`` (policy -> tombstones) and ``gc`` (the sweep).

Both are safe to run beside live writers and need no lock (docs/protocol.md); a cleanup job
runs ``forget`` then ``gc`` on a schedule (docs/cleanup-job.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..engine.gc import GcReport, collect_garbage
from ..engine.retention import ForgetReport, RetentionPolicy
from ..engine.retention import forget as _forget
from .api import RepoLike, open_repo


def forget(
    url: RepoLike,
    *,
    streams: str | Sequence[str] | None = None,
    keep_last: int = 0,
    keep_hourly: int = 0,
    keep_daily: int = 0,
    keep_weekly: int = 0,
    keep_monthly: int = 0,
    keep_yearly: int = 0,
    keep_within: float | str | None = None,
    keep_tags: Sequence[str] = (),
    timezone: str = "UTC",
    allow_empty_policy: bool = False,
    dry_run: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> ForgetReport:
    """Tombstone every snapshot the policy does not keep, stream by stream (restic semantics).

    ``streams`` limits the policy to the named streams (default: all). The newest snapshot of
    each stream is always kept. A policy with no keep rule raises
    :class:`~tqsnap.errors.PolicyError` unless ``allow_empty_policy=True``. Nothing is deleted:
    :func:`gc` removes forgotten snapshots once their tombstones are older than ``grace``.
    """
    policy = RetentionPolicy(
        keep_last=keep_last,
        keep_hourly=keep_hourly,
        keep_daily=keep_daily,
        keep_weekly=keep_weekly,
        keep_monthly=keep_monthly,
        keep_yearly=keep_yearly,
        keep_within=keep_within,
        keep_tags=tuple(keep_tags),
        timezone=timezone,
    )
    repo = open_repo(url, storage_options=storage_options)
    return _forget(repo, policy, streams=streams, allow_empty_policy=allow_empty_policy, dry_run=dry_run)


def gc(url: RepoLike, *, dry_run: bool = False, storage_options: dict[str, Any] | None = None) -> GcReport:
    """Delete shards no live snapshot references once they are older than ``grace``, and
    finalise snapshots forgotten more than ``grace`` ago.

    ``grace`` and ``max_write_duration`` come from the repository's ``tqsnap.json``; an unsafe
    pair raises :class:`~tqsnap.errors.UnsafeConfigError` before anything is listed.
    """
    return collect_garbage(open_repo(url, storage_options=storage_options), dry_run=dry_run)


__all__ = ["ForgetReport", "GcReport", "RetentionPolicy", "forget", "gc"]
