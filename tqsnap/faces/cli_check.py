"""``tqsnap check``: every visible snapshot's structure and references, optionally its data.

Exit codes are cli.py's: 0 everything checked is sound; 1 damage found (a missing, wrong-size
or corrupt shard, or a manifest that cannot be read), each bad shard named with the snapshots
and items it breaks; 2 a bad ``--read-data-subset``; 3 no repository; 4 store failure.
"""

from __future__ import annotations

import argparse

from ..engine.check import CheckReport, check_repository, sample_filter
from .cli_common import EXIT_OK, EXIT_PROBLEM, add_repo_args, emit, fmt_bytes, open_repository, terminal_safe
from .cli_fanout import add_fanout_args
from .metrics import add_metrics_arg, job_metrics


def _text(r: CheckReport) -> str:
    lines = [
        f"check of {terminal_safe(r.url)}: {r.snapshots} snapshots, {r.shards_referenced} shards referenced, "
        f"{r.shards_read} read ({fmt_bytes(r.bytes_read)}): " + ("OK" if r.ok else "DAMAGED")
    ]
    for name, why in sorted(r.damaged_snapshots.items()):
        lines.append(f"  damaged snapshot {terminal_safe(name)}: {terminal_safe(why)}")
    for bad in r.bad_shards:
        lines.append(f"  {bad.problem}: {terminal_safe(bad.key)}")
        for snap, paths in bad.items.items():
            shown = ", ".join(paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")
            lines.append(f"    breaks {terminal_safe(snap)}: {terminal_safe(shown or '(manifest body)')}")
    return "\n".join(lines)


def cmd_check(args: argparse.Namespace) -> int:
    subset = args.read_data_subset
    if subset is not None:
        sample_filter(subset)  # bad input: exit 2 before opening anything
    with job_metrics(args, "check") as job:
        progress = None
        if args.read_data or subset is not None:
            from .progress import progress_for

            progress = progress_for(args)
        try:
            report = check_repository(
                open_repository(args),
                read_data=args.read_data,
                subset=subset,
                progress=progress,
                workers=args.workers,
                executor=args.executor,
            )
        finally:
            if progress is not None:
                progress.close()
        job.set("snapshots", report.snapshots, "Visible snapshots checked.")
        job.set("bad_shards", len(report.bad_shards), "Shards missing, of the wrong size or corrupt.")
        job.set("damaged_snapshots", len(report.damaged_snapshots), "Manifests that could not be read.")
        job.set("bytes_read", report.bytes_read, "Shard bytes read and re-hashed.")
    emit(args, report.to_json(), lambda: _text(report))
    return EXIT_OK if report.ok else EXIT_PROBLEM


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``check`` to the ``tqsnap`` parser."""
    p = sub.add_parser(
        "check",
        help="check every snapshot's structure and shard references; --read-data re-hashes shards",
        epilog="exit codes: 0 sound; 1 damage found (each bad shard named with the snapshots and items it "
        "breaks); 2 bad usage; 3 no repository; 4 store failure",
    )
    add_repo_args(p)
    data = p.add_mutually_exclusive_group()
    data.add_argument("--read-data", action="store_true", help="read and re-hash every referenced shard")
    data.add_argument(
        "--read-data-subset",
        metavar="n/m|P%",
        default=None,
        help="read a sample: bucket n of m by shard hash (1/10 ... 10/10 cover everything), or P%% at random",
    )
    add_fanout_args(p)
    add_metrics_arg(p)
    p.set_defaults(func=cmd_check)
