"""``tqsnap forget`` and ``tqsnap gc``: the retention subcommands (registered by cli.py).

Exit codes are cli.py's: 0 done (including a dry run); 2 bad policy, bad timezone or an unsafe
repository config (nothing was deleted); 3 unknown repository or stream; 4 a store or access
failure (a re-run is safe: every step is idempotent); 1 a manifest gc cannot parse (it stops
before deleting anything).
"""

from __future__ import annotations

import argparse

from ..engine.gc import GcReport, collect_garbage
from ..engine.retention import ForgetReport, RetentionPolicy, forget
from .cli_common import EXIT_OK, add_repo_args, emit, fmt_bytes, fmt_time, open_repository, table
from .cli_fanout import add_fanout_args
from .metrics import add_metrics_arg, job_metrics


def _forget_text(report: ForgetReport) -> str:
    rows = [
        [d.stream, d.seq, fmt_time(d.time), "keep" if d.keep else "remove", ", ".join(d.reasons) or "-"]
        for d in report.decisions
    ]
    verb = "would remove" if report.dry_run else "removed"
    summary = (
        f"{len(report.kept)} kept, {len(report.removed)} {verb} "
        f"({report.policy.describe()}; streams: {', '.join(report.streams) or 'none'})"
    )
    if not report.dry_run:
        summary += f"; {report.tombstones_written} tombstones written, run `tqsnap gc` to reclaim space"
    if report.tags_removed:
        summary += f"; tags deleted: {', '.join(report.tags_removed)}"
    return (table(["stream", "seq", "time (UTC)", "action", "reasons"], rows) + "\n" + summary).lstrip()


def _gc_text(r: GcReport) -> str:
    would = "would delete" if r.dry_run else "deleted"
    lines = [
        f"gc of {r.url}{' (dry run)' if r.dry_run else ''}: grace {r.grace:g}s",
        f"  scanned    {r.objects_scanned} objects: {r.shards_scanned} shards "
        f"({fmt_bytes(r.shard_bytes_scanned)}), {r.manifests_scanned} manifests, "
        f"{r.tombstones_scanned} tombstones",
        f"  live       {r.live_manifests} manifests referencing {r.referenced_shards} shards",
        f"  {would:<10} {r.shards_deleted} shards, {fmt_bytes(r.bytes_freed)} freed",
        f"  kept young {r.young_garbage} unreferenced shards ({fmt_bytes(r.young_garbage_bytes)}) "
        "younger than grace",
        f"  finalised  {len(r.manifests_finalised)} forgotten snapshots, {r.tombstones_deleted} tombstones",
        *(
            [f"  later      the young garbage can be deleted by a gc run after {fmt_time(r.young_garbage_deletable_at)} UTC"]
            if r.young_garbage_deletable_at
            else []
        ),
        *(
            [f"  later      forgotten snapshots are reclaimed by a gc run after {fmt_time(r.young_tombstones_due_at)} UTC"]
            if r.young_tombstones_due_at
            else []
        ),
        f"  requests   {r.total_requests} ({', '.join(f'{k} {v}' for k, v in sorted(r.requests.items()))}) "
        f"in {r.duration_s:.2f}s",
    ]
    return "\n".join(lines)


def cmd_forget(args: argparse.Namespace) -> int:
    policy = RetentionPolicy(
        keep_last=args.keep_last,
        keep_hourly=args.keep_hourly,
        keep_daily=args.keep_daily,
        keep_weekly=args.keep_weekly,
        keep_monthly=args.keep_monthly,
        keep_yearly=args.keep_yearly,
        keep_within=args.keep_within,
        keep_tags=tuple(args.keep_tag or ()),
        timezone=args.timezone,
        untag=args.untag,
    )
    repo = open_repository(args)
    with job_metrics(args, "forget") as job:
        report = forget(
            repo, policy, streams=args.stream or None, allow_empty_policy=args.all, dry_run=args.dry_run
        )
        job.set("snapshots_removed", len(report.removed), "Snapshots this run forgot (or would, on a dry run).")
        job.set("snapshots_kept", len(report.kept), "Snapshots the policy keeps.")
    # Space comes back at the first gc run after the new tombstones are older than grace.
    reclaim_after = repo.store.now() + repo.config.grace if report.tombstones_written else None
    emit(
        args,
        report.to_json() | {"space_reclaimable_after": reclaim_after},
        lambda: _forget_text(report)
        + (f"; their space comes back at the first gc after {fmt_time(reclaim_after)} UTC" if reclaim_after else ""),
    )
    return EXIT_OK


def cmd_gc(args: argparse.Namespace) -> int:
    with job_metrics(args, "gc") as job:
        report = collect_garbage(
            open_repository(args), dry_run=args.dry_run, workers=args.workers, executor=args.executor
        )
        job.set("bytes_freed", report.bytes_freed, "Bytes of shards deleted by the last run.")
        job.set("shards_deleted", report.shards_deleted, "Shards deleted by the last run.")
        job.set("young_garbage_bytes", report.young_garbage_bytes, "Unreferenced bytes kept until older than grace.")
    emit(args, report.to_json(), lambda: _gc_text(report))
    return EXIT_OK


def _count(text: str) -> int:
    """argparse type for --keep-*: a whole number (negative ones are refused by the policy)."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``forget`` and ``gc`` to the ``tqsnap`` parser."""
    p = sub.add_parser(
        "forget",
        help="apply a retention policy: tombstone snapshots no rule keeps (gc reclaims them later)",
        description="Rules are ORed and applied to each stream separately; the newest snapshot of "
        "every stream is always kept. Nothing is deleted: run `tqsnap gc` afterwards.",
        epilog="exit codes: 0 done; 2 bad policy; 3 unknown repository or stream; 4 store failure "
        "(re-running is safe)",
    )
    add_repo_args(p)
    p.add_argument(
        "--stream", action="append", metavar="S", help="only this stream (repeatable; default: all streams)"
    )
    for name, what in (
        ("last", "the N newest snapshots"),
        ("hourly", "the newest snapshot of each of the last N hours that have one"),
        ("daily", "the newest snapshot of each of the last N days that have one"),
        ("weekly", "the newest snapshot of each of the last N ISO weeks that have one"),
        ("monthly", "the newest snapshot of each of the last N months that have one"),
        ("yearly", "the newest snapshot of each of the last N years that have one"),
    ):
        p.add_argument(f"--keep-{name}", type=_count, default=0, metavar="N", help=f"keep {what}")
    p.add_argument(
        "--keep-within",
        metavar="DUR",
        help="keep every snapshot within DUR (e.g. 36h, 7d) of the stream's newest one",
    )
    p.add_argument(
        "--keep-tag",
        action="append",
        metavar="T",
        help="keep snapshots a tag named T points at (glob patterns allowed; repeatable)",
    )
    p.add_argument(
        "--timezone",
        default="UTC",
        metavar="TZ",
        help="cut calendar buckets in this IANA timezone (default UTC)",
    )
    p.add_argument(
        "--all",
        action="store_true",
        help="allow a policy with no keep rule: forget everything but the newest snapshot of each stream",
    )
    p.add_argument(
        "--untag",
        action="store_true",
        help="forget tagged snapshots no rule keeps and delete their tags (by default a tag pins its snapshot)",
    )
    p.add_argument("--dry-run", action="store_true", help="list every snapshot with keep/remove and why")
    add_metrics_arg(p)
    p.set_defaults(func=cmd_forget)

    p = sub.add_parser(
        "gc",
        help="delete shards no live snapshot uses once older than grace; safe beside writers, needs no lock",
        description="Deletes shards that no live snapshot references once they are older than the "
        "repository's grace, then finalises snapshots forgotten more than grace ago. Runs beside "
        "live writers with no lock (docs/protocol.md).",
        epilog="exit codes: 0 done; 1 a manifest cannot be parsed (nothing deleted); 2 unsafe grace "
        "(nothing deleted); 3 no repository; 4 store failure (re-running is safe)",
    )
    add_repo_args(p)
    p.add_argument("--dry-run", action="store_true", help="report what would be deleted; delete nothing")
    add_fanout_args(p)
    add_metrics_arg(p)
    p.set_defaults(func=cmd_gc)
