"""``tqsnap copy``: copy one snapshot, or mirror a stream or a whole repository, to another.

The destination may live on another S3 endpoint with other credentials: ``--dst-endpoint-url``
and ``--dst-profile`` (a profile of the AWS config files) replace the source's settings for
the destination; when neither is given the destination uses the source's. Each snapshot gets
one line: copied (bytes moved vs reused), already present, or skipped (older than what the
destination stream holds). With ``--json`` each line is one JSON object (JSON Lines).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..engine import Repository
from ..engine.copy import CopyResult, copy_all, copy_snapshot
from .cli_common import EXIT_OK, add_repo_args, fmt_bytes, storage_options, terminal_safe, write_json_line
from .cli_fanout import add_fanout_args
from .metrics import add_metrics_arg, job_metrics


def source_options(args: argparse.Namespace) -> dict[str, Any]:
    opts = storage_options(args)
    if args.profile:
        opts["profile"] = args.profile
    return opts


def _object_store_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() in ("s3", "obs") if "://" in url else False


def destination_options(args: argparse.Namespace) -> dict[str, Any]:
    """The destination's own flags, or the source's settings when it has none.

    The source's settings are S3 settings: a destination on local disk (or in memory) gets
    none of them, so ``copy s3://... /backup --endpoint-url ...`` works.
    """
    if not (args.dst_endpoint_url or args.dst_profile):
        return source_options(args) if _object_store_url(args.dst) else {}
    opts: dict[str, Any] = {}
    if args.dst_endpoint_url:
        opts["endpoint_url"] = args.dst_endpoint_url
    if args.dst_profile:
        opts["profile"] = args.dst_profile
    return opts


def describe(result: CopyResult) -> str:
    """One human line per snapshot."""
    src = terminal_safe(result.source)
    if result.status == "skipped (older)" or result.info is None:
        return f"{src}: {result.status}: {terminal_safe(result.reason)}"
    dst = terminal_safe(result.info.id)
    if result.status == "already present":
        line = f"{src}: already present as {dst}"
    else:
        resumed = f", {result.resumed_shards} left by an earlier copy" if result.resumed_shards else ""
        line = (
            f"{src}: copied as {dst}: {result.moved_shards} shards moved ({fmt_bytes(result.moved_bytes)}), "
            f"{result.reused_shards} reused ({fmt_bytes(result.reused_bytes)}{resumed})"
        )
    if result.tags_copied:
        line += f"; tags copied: {terminal_safe(', '.join(result.tags_copied))}"
    for name, why in result.tags_skipped.items():
        line += f"; tag {terminal_safe(name)} skipped: {terminal_safe(why)}"
    return line


def cmd_copy(args: argparse.Namespace) -> int:
    src = Repository.open(args.url, storage_options=source_options(args))
    dst = Repository.open(args.dst, create=True, storage_options=destination_options(args))
    with job_metrics(args, "copy") as job:
        if args.all:
            if args.snapshot != "latest":
                raise ValueError("--all copies every snapshot; leave out --snapshot")
            results = copy_all(
                src,
                dst,
                args.stream,
                dst_stream=args.dst_stream,
                tags=args.tags,
                workers=args.workers,
                executor=args.executor,
            )
        else:
            results = [
                copy_snapshot(
                    src,
                    dst,
                    args.stream or "default",
                    args.snapshot,
                    dst_stream=args.dst_stream,
                    tags=args.tags,
                    workers=args.workers,
                    executor=args.executor,
                )
            ]
        job.set("snapshots_copied", sum(r.status == "copied" for r in results), "Snapshots copied by the last run.")
        job.set("bytes_moved", sum(r.moved_bytes for r in results), "Shard bytes sent to the destination.")
    for result in results:
        if args.json:
            write_json_line("copy", {"source_url": src.url, "destination_url": dst.url} | result.to_json())
        else:
            sys.stdout.write(describe(result) + "\n")
    if not args.json and len(results) > 1:
        moved = sum(r.moved_bytes for r in results)
        reused = sum(r.reused_bytes for r in results)
        counts = {s: sum(r.status == s for r in results) for s in ("copied", "already present", "skipped (older)")}
        summary = ", ".join(f"{n} {s}" for s, n in counts.items())
        sys.stdout.write(f"{summary}; {fmt_bytes(moved)} moved, {fmt_bytes(reused)} reused\n")
    return EXIT_OK


def register(sub: Any) -> None:
    p = sub.add_parser(
        "copy",
        help="copy snapshots to another repository or stream, in order and once; only missing shards move",
    )
    add_repo_args(p, snapshot=True)
    p.add_argument("dst", help="destination repository URL (created if missing)")
    p.add_argument("--stream", default=None, help="source stream (default: 'default'; with --all: every stream)")
    p.add_argument("--all", action="store_true", help="every visible snapshot, oldest first; copied ones are skipped")
    p.add_argument("--tags", action="store_true", help="create the source's tags of copied snapshots there too")
    p.add_argument("--dst-stream", default=None, help="stream name in the destination (default: same)")
    p.add_argument("--profile", default=None, help="AWS profile for the source")
    p.add_argument("--dst-endpoint-url", default=None, help="S3 endpoint of the destination")
    p.add_argument("--dst-profile", default=None, help="AWS profile (credentials, region) for the destination")
    add_fanout_args(p)
    add_metrics_arg(p)
    p.set_defaults(func=cmd_copy)
