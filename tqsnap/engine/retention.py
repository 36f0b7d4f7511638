"""Retention: turn a policy into keep/remove decisions, and write tombstones for the removed.

``forget`` never deletes anything. It writes a :class:`~tqsnap.format.manifest.Tombstone` per
removed snapshot; readers and writers skip tombstoned snapshots at once, and gc removes the
manifest (and, later, the shards only it used) once the tombstone is older than ``grace``
(docs/protocol.md). Keeping the delete out of ``forget`` is what lets a writer that picked a
snapshot as its parent a moment ago still commit safely.

The policy follows restic's ``forget`` semantics, applied to each stream on its own:

- snapshots are ordered newest first by seq (commit order, which writers' clocks cannot
  reorder); calendar buckets and ``keep_within`` use ``started_at``, the moment the state was
  captured (for a copy, at its origin: ``copied_from`` in docs/format.md);
- ``keep_last`` keeps the N newest; ``keep_hourly`` ... ``keep_yearly`` keep the newest snapshot
  of each of the N newest calendar hours/days/ISO weeks/months/years that have one, in UTC
  unless a timezone is given; when a bucket rule still has counts left at the oldest snapshot,
  that snapshot is kept too (restic's "oldest" rule, which stretches the history kept);
- ``keep_within`` keeps every snapshot taken within that duration of the stream's newest one;
- every tag pins the snapshot it names (reason "pinned by tag <name>") unless ``untag``; then a
  tagged snapshot no rule keeps is forgotten and its tags are deleted
- ``keep_tags`` keeps every snapshot a matching tag (``tags/<name>.json``, glob patterns allowed)
  points at;
- rules are ORed, and the newest snapshot (highest seq) of every stream is always kept, so a
  writer always has a parent and a stream's seq numbers never go backwards.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..errors import PolicyError, SnapshotNotFoundError
from ..format.config import parse_duration
from ..format.keys import validate_name
from ..format.manifest import SnapshotId
from .copy_identity import captured_at
from .repository import Repository, SnapshotInfo

log = logging.getLogger(__name__)

_BUCKETS: tuple[tuple[str, Callable[[datetime], tuple[int, ...]]], ...] = (
    ("hourly", lambda t: (t.year, t.month, t.day, t.hour)),
    ("daily", lambda t: (t.year, t.month, t.day)),
    ("weekly", lambda t: tuple(t.isocalendar())[:2]),
    ("monthly", lambda t: (t.year, t.month)),
    ("yearly", lambda t: (t.year,)),
)
_UNITS = (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1))


def format_duration(seconds: float) -> str:
    """``604800`` -> ``"7d"``: the largest unit that divides evenly, for reasons and reports."""
    for unit, size in _UNITS:
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


@dataclass(frozen=True)
class RetentionPolicy:
    """Which snapshots of a stream to keep; everything no rule keeps is forgotten.

    Counts are how many buckets to fill (0 disables a rule); ``keep_within`` is in seconds (or a
    duration string such as ``"7d"``); ``keep_tags`` are tag names or glob patterns.
    """

    keep_last: int = 0
    keep_hourly: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    keep_yearly: int = 0
    keep_within: float | str | None = None
    keep_tags: tuple[str, ...] = ()
    timezone: str = "UTC"
    #: Tags pin the snapshots they name unless this is set: then a tagged snapshot no rule keeps
    #: is forgotten and its tags are deleted (``forget`` reports them).
    untag: bool = False

    def __post_init__(self) -> None:
        for name in ("keep_last", *(f"keep_{b}" for b, _ in _BUCKETS)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise PolicyError(f"--{name.replace('_', '-')} must be a whole number, not {value!r}")
            if value < 0:
                raise PolicyError(
                    f"--{name.replace('_', '-')} {value} is negative; use 0 to disable the rule "
                    "or a positive count of snapshots to keep"
                )
        if self.keep_within is not None:
            try:
                seconds = parse_duration(self.keep_within)
            except ValueError as exc:
                raise PolicyError(f"--keep-within: {exc}") from None
            object.__setattr__(self, "keep_within", seconds or None)
        tags = (self.keep_tags,) if isinstance(self.keep_tags, str) else tuple(self.keep_tags)
        for tag in tags:
            if not isinstance(tag, str) or not tag:
                raise PolicyError(f"--keep-tag needs a tag name or glob pattern, not {tag!r}")
        object.__setattr__(self, "keep_tags", tags)
        self.zone()  # fail early on an unknown timezone

    def zone(self) -> ZoneInfo | timezone:
        """The timezone calendar buckets are cut in."""
        if self.timezone.upper() == "UTC":
            return timezone.utc
        try:
            return ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise PolicyError(
                f"unknown timezone {self.timezone!r}: use an IANA name such as 'Europe/Berlin' or 'UTC'"
            ) from None

    @property
    def is_empty(self) -> bool:
        """True when no rule keeps anything (only the always-kept newest snapshots would stay)."""
        counts = (self.keep_last, *(getattr(self, f"keep_{b}") for b, _ in _BUCKETS))
        return not any(counts) and not self.keep_within and not self.keep_tags

    def describe(self) -> str:
        """The policy as the flags that would produce it, for tombstone reasons and logs."""
        parts = [f"keep-last {self.keep_last}"] if self.keep_last else []
        parts += [f"keep-{b} {getattr(self, f'keep_{b}')}" for b, _ in _BUCKETS if getattr(self, f"keep_{b}")]
        if self.keep_within:
            parts.append(f"keep-within {format_duration(float(self.keep_within))}")
        parts += [f"keep-tag {t}" for t in self.keep_tags]
        if self.untag:
            parts.append("untag")
        if self.timezone.upper() != "UTC" and any(getattr(self, f"keep_{b}") for b, _ in _BUCKETS):
            parts.append(f"timezone {self.timezone}")
        return ", ".join(parts) or "no keep rule (--all)"

    def to_json(self) -> dict[str, Any]:
        return {
            "keep_last": self.keep_last,
            **{f"keep_{b}": getattr(self, f"keep_{b}") for b, _ in _BUCKETS},
            "keep_within_seconds": self.keep_within,
            "keep_tags": list(self.keep_tags),
            "timezone": self.timezone,
            "untag": self.untag,
        }


@dataclass
class Decision:
    """Whether one snapshot stays, and every rule that keeps it ("daily #3", "tag release")."""

    stream: str
    seq: int
    time: float
    keep: bool
    reasons: list[str] = field(default_factory=list)

    @property
    def id(self) -> SnapshotId:
        return SnapshotId(self.stream, self.seq)

    def to_json(self) -> dict[str, Any]:
        return {
            "stream": self.stream,
            "seq": self.seq,
            "time": self.time,
            "action": "keep" if self.keep else "remove",
            "reasons": self.reasons,
        }


@dataclass
class ForgetReport:
    """What ``forget`` decided for every visible snapshot, and how many tombstones it wrote."""

    policy: RetentionPolicy
    streams: list[str]
    decisions: list[Decision]
    dry_run: bool
    tombstones_written: int = 0
    #: Tags deleted (``untag``) because they named a snapshot this run forgot.
    tags_removed: list[str] = field(default_factory=list)
    #: Snapshots whose manifest cannot be parsed: left alone, neither kept nor removed.
    damaged: list[str] = field(default_factory=list)

    @property
    def kept(self) -> list[Decision]:
        return [d for d in self.decisions if d.keep]

    @property
    def removed(self) -> list[Decision]:
        return [d for d in self.decisions if not d.keep]

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "policy": self.policy.to_json(),
            "streams": self.streams,
            "kept": len(self.kept),
            "removed": len(self.removed),
            "tombstones_written": self.tombstones_written,
            "tags_removed": self.tags_removed,
            "damaged": self.damaged,
            "snapshots": [d.to_json() for d in self.decisions],
        }


def apply_policy(
    snapshots: Iterable[SnapshotInfo],
    policy: RetentionPolicy,
    tags: dict[SnapshotId, list[str]] | None = None,
) -> list[Decision]:
    """Decide keep/remove for the visible snapshots of ONE stream; newest first.

    Pure: reads nothing from the store, so the semantics can be tested with made-up snapshots.
    """
    items = sorted(snapshots, key=lambda s: s.seq, reverse=True)  # commit order; clocks may disagree
    if not items:
        return []
    if len({s.stream for s in items}) != 1:
        raise ValueError("apply_policy takes the snapshots of one stream; group them first")
    tags = tags or {}
    zone = policy.zone()
    newest_seq = max(s.seq for s in items)
    latest_time = max(_captured(s) for s in items)
    remaining = {"last": policy.keep_last} | {b: getattr(policy, f"keep_{b}") for b, _ in _BUCKETS}
    filled = dict.fromkeys(remaining, 0)
    last_value: dict[str, tuple[int, ...] | None] = dict.fromkeys(remaining)
    decisions: list[Decision] = []
    for nr, snap in enumerate(items):
        reasons: list[str] = []
        if snap.seq == newest_seq:
            reasons.append("newest of stream")
        for pattern in policy.keep_tags:
            reasons += [f"tag {name}" for name in tags.get(snap.id, []) if fnmatch.fnmatchcase(name, pattern)]
        if not policy.untag:
            reasons += [f"pinned by tag {n}" for n in tags.get(snap.id, []) if f"tag {n}" not in reasons]
        if policy.keep_within and _captured(snap) > latest_time - float(policy.keep_within):
            reasons.append(f"within {format_duration(float(policy.keep_within))}")
        local = datetime.fromtimestamp(_captured(snap), zone)
        oldest = nr == len(items) - 1
        for name, bucket in (("last", lambda _t, n=nr: (n,)), *_BUCKETS):
            if remaining[name] <= 0:
                continue
            value = bucket(local)
            if value != last_value[name] or oldest:
                suffix = " (oldest)" if value == last_value[name] else ""
                last_value[name] = value
                remaining[name] -= 1
                filled[name] += 1
                reasons.append(f"{name} #{filled[name]}{suffix}")
        decisions.append(Decision(snap.stream, snap.seq, _captured(snap), bool(reasons), reasons))
    return decisions


def _captured(snap: SnapshotInfo) -> float:
    return captured_at(snap.started_at, snap.metadata)


def _tags_by_snapshot(repo: Repository) -> dict[SnapshotId, list[str]]:
    out: dict[SnapshotId, list[str]] = {}
    for tag in repo.tags():
        out.setdefault(tag.target, []).append(tag.name)
    return out


def _choose_streams(repo: Repository, streams: str | Sequence[str] | None) -> list[str]:
    known = repo.streams()
    if streams is None:
        return known
    chosen = [streams] if isinstance(streams, str) else list(dict.fromkeys(streams))
    for name in chosen:
        validate_name(name)
        if name not in known:
            raise SnapshotNotFoundError(
                f"stream {name!r} has no snapshots in {repo.url}; known streams: {', '.join(known) or 'none'}"
            )
    return chosen


def plan_forget(
    repo: Repository,
    policy: RetentionPolicy,
    *,
    streams: str | Sequence[str] | None = None,
    allow_empty_policy: bool = False,
    damaged: list[tuple[SnapshotId, Exception]] | None = None,
) -> tuple[list[str], list[Decision]]:
    """Validate the request and decide for every visible snapshot of the chosen streams.

    With ``damaged`` (a list), a manifest that cannot be parsed is left out of the decisions
    and appended there instead of failing the run. That is safe: a snapshot the policy does
    not see only ever makes it keep more of the others (it fills no keep-last slot or calendar
    bucket, and the newest readable snapshot is kept as the newest), and it is never removed.
    """
    if policy.is_empty and not allow_empty_policy:
        raise PolicyError(
            "the policy has no keep rule, so it would forget every snapshot but the newest of each "
            "stream; give --keep-last/--keep-daily/... or pass --all (allow_empty_policy=True) to mean it"
        )
    chosen = _choose_streams(repo, streams)
    tags = _tags_by_snapshot(repo)
    decisions: list[Decision] = []
    for name in chosen:
        decisions += apply_policy(repo.snapshots(name, damaged=damaged), policy, tags)
    return chosen, decisions


def forget(
    repo: Repository,
    policy: RetentionPolicy,
    *,
    streams: str | Sequence[str] | None = None,
    allow_empty_policy: bool = False,
    dry_run: bool = False,
) -> ForgetReport:
    """Apply ``policy`` and write a tombstone for each snapshot it removes (none on a dry run).

    Safe beside live writers and other ``forget`` runs: tombstones are put-if-absent, and a
    snapshot committed after the listing is simply not considered this time.
    """
    damaged: list[tuple[SnapshotId, Exception]] = []
    chosen, decisions = plan_forget(
        repo, policy, streams=streams, allow_empty_policy=allow_empty_policy, damaged=damaged
    )
    report = ForgetReport(policy, chosen, decisions, dry_run, damaged=sorted(str(sid) for sid, _ in damaged))
    if damaged:
        log.warning(
            "forget left %d damaged manifest(s) alone: %s (forget one by name: tqsnap forget URL STREAM@SEQ)",
            len(damaged),
            ", ".join(report.damaged),
        )
    if dry_run:
        log.info("forget (dry run): would remove %d of %d snapshots", len(report.removed), len(decisions))
        return report
    reason = f"forget: {policy.describe()}"
    for decision in report.removed:
        if repo.write_tombstone(decision.stream, decision.seq, reason):
            report.tombstones_written += 1
    if policy.untag:
        removed = {d.id for d in report.removed}
        for tag in repo.tags():
            if tag.target in removed:
                repo.untag(tag.name)
                report.tags_removed.append(tag.name)
    log.info(
        "forget: kept %d, removed %d snapshots (%d new tombstones) in %s",
        len(report.kept),
        len(report.removed),
        report.tombstones_written,
        repo.url,
    )
    return report
