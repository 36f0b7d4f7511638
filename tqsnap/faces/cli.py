"""The ``tqsnap`` command.

Exit codes (documented in README.md): 0 success; 1 the operation ran and found a problem
(``verify`` found damage); 2 bad usage or bad input (invalid name, unsafe config, bad policy);
3 not found (repository, snapshot, bucket); 4 store or access failure; 5 a commit conflict or
deadline. Every subcommand that prints data accepts ``--json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

from .. import errors
from ..engine import Repository
from ..engine.copy import copy_snapshot
from ..engine.diff import diff_manifests
from ..engine.reader import load_body
from ..format.config import DEFAULT_GRACE, DEFAULT_MAX_WRITE_DURATION
from ..format.manifest import Manifest
from . import cli_retention, cli_tq

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_STORE, EXIT_CONFLICT = 0, 1, 2, 3, 4, 5

_EXIT_BY_ERROR: list[tuple[type[BaseException], int]] = [
    (errors.RepositoryNotFoundError, EXIT_NOT_FOUND),
    (errors.SnapshotNotFoundError, EXIT_NOT_FOUND),
    (errors.BucketNotFoundError, EXIT_NOT_FOUND),
    (errors.ObjectNotFoundError, EXIT_NOT_FOUND),
    (errors.CommitConflictError, EXIT_CONFLICT),
    (errors.WriteDeadlineExceededError, EXIT_CONFLICT),
    (errors.StoreError, EXIT_STORE),
    (errors.FormatError, EXIT_PROBLEM),
    (errors.TqsnapError, EXIT_USAGE),
    (ValueError, EXIT_USAGE),
    (FileExistsError, EXIT_USAGE),
]


def add_repo_args(
    p: argparse.ArgumentParser, *, stream: bool = False, snapshot: bool = False, json_flag: bool = True
) -> None:
    """Arguments most subcommands share: the URL, store options, and optionally a snapshot."""
    p.add_argument("url", help="repository URL: a path, file://, s3://bucket/prefix, obs://bucket/prefix")
    p.add_argument("--endpoint-url", help="S3 endpoint (default: $AWS_ENDPOINT_URL or AWS)")
    p.add_argument(
        "--single-writer",
        action="store_true",
        help="allow a store without a verified atomic create (you guarantee one writer)",
    )
    if stream:
        p.add_argument("--stream", default="default", help="stream name (default: %(default)s)")
    if snapshot:
        p.add_argument("--snapshot", default="latest", help="latest, a seq number, or tag:<name>")
    if json_flag:
        p.add_argument("--json", action="store_true", help="print machine-readable JSON")


def storage_options(args: argparse.Namespace) -> dict[str, Any]:
    """Store options from the shared flags; empty when none were given."""
    opts: dict[str, Any] = {}
    if getattr(args, "endpoint_url", None):
        opts["endpoint_url"] = args.endpoint_url
    if getattr(args, "single_writer", False):
        opts["single_writer"] = True
    return opts


def open_repository(args: argparse.Namespace, *, create: bool = False) -> Repository:
    return Repository.open(args.url, create=create, storage_options=storage_options(args))


def emit(args: argparse.Namespace, data: Any, text: Callable[[], str]) -> None:
    """Print ``data`` as JSON with ``--json``, else the human text."""
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, default=str))
    else:
        print(text())


def fmt_time(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


# --- core subcommands ------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    repo = Repository.init(
        args.url,
        grace=args.grace,
        max_write_duration=args.max_write_duration,
        storage_options=storage_options(args),
    )
    c = repo.config
    emit(
        args,
        {
            "url": repo.url,
            "repo_id": c.repo_id,
            "grace_seconds": c.grace,
            "max_write_duration_seconds": c.max_write_duration,
        },
        lambda: (
            f"repository {repo.url} (id {c.repo_id}): grace {c.grace:g}s, "
            f"max_write_duration {c.max_write_duration:g}s"
        ),
    )
    return EXIT_OK


def cmd_snapshots(args: argparse.Namespace) -> int:
    repo = open_repository(args)
    infos = repo.snapshots(args.stream)
    rows = [
        [
            i.stream,
            i.seq,
            i.kind,
            fmt_time(i.committed_at),
            str(i.parent or "-"),
            fmt_bytes(i.stats.get("item_bytes", 0)),
            fmt_bytes(i.stats.get("stored_bytes", 0)),
        ]
        for i in infos
    ]
    emit(
        args,
        [i.to_json() for i in infos],
        lambda: table(["stream", "seq", "kind", "committed (UTC)", "parent", "size", "uploaded"], rows),
    )
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    repo = open_repository(args)
    sid = repo.resolve(args.stream, args.snapshot)
    m = load_body(repo.store, repo.load_manifest(sid.stream, sid.seq))
    doc = m.to_json(include_items=False) | {"items": len(m.items)}
    emit(
        args,
        doc,
        lambda: (
            "\n".join(f"{k}: {v}" for k, v in doc.items() if k not in ("shards", "extra"))
            + f"\nshards: {len(m.shards)}"
        ),
    )
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    report = open_repository(args).verify(args.stream, args.snapshot)

    def text() -> str:
        lines = [
            f"{report.snapshot}: {report.shards} shards, {fmt_bytes(report.bytes)}: "
            + ("OK" if report.ok else "DAMAGED")
        ]
        lines += [f"  missing {k}" for k in report.missing] + [f"  corrupt {k}" for k in report.corrupt]
        return "\n".join(lines)

    emit(args, report.to_json(), text)
    return EXIT_OK if report.ok else EXIT_PROBLEM


def cmd_tag(args: argparse.Namespace) -> int:
    tag = open_repository(args).tag(args.name, args.stream, args.snapshot)
    emit(
        args,
        {"name": tag.name, "stream": tag.target.stream, "seq": tag.target.seq},
        lambda: f"tagged {tag.target} as {tag.name}",
    )
    return EXIT_OK


def cmd_copy(args: argparse.Namespace) -> int:
    src = open_repository(args)
    dst_opts = {"endpoint_url": args.dst_endpoint_url} if args.dst_endpoint_url else storage_options(args)
    dst = Repository.open(args.dst, create=True, storage_options=dst_opts)
    info = copy_snapshot(src, dst, args.stream, args.snapshot, dst_stream=args.dst_stream)
    st = info.stats
    emit(
        args,
        info.to_json(),
        lambda: (
            f"copied to {dst.url} as {info.stream}@{info.seq}: {st['new_shards']} shards "
            f"({fmt_bytes(st['stored_bytes'])}) transferred, {st['reused_shards']} already there"
        ),
    )
    return EXIT_OK


def _manifest(repo: Repository, stream: str, snapshot: str) -> Manifest:
    sid = repo.resolve(stream, snapshot)
    return load_body(repo.store, repo.load_manifest(sid.stream, sid.seq))


def cmd_diff(args: argparse.Namespace) -> int:
    repo = open_repository(args)
    a, b = _manifest(repo, args.stream, args.a), _manifest(repo, args.stream, args.b)
    d = diff_manifests(a, b)

    def text() -> str:
        lines = [
            f"{a.id} -> {b.id}: {len(d.added)} added, {len(d.removed)} removed, {len(d.changed)} changed, "
            f"{d.unchanged} unchanged; {fmt_bytes(d.new_shard_bytes)} in new shards, "
            f"{fmt_bytes(d.shared_shard_bytes)} shared"
        ]
        lines += (
            [f"  + {p}" for p in d.added] + [f"  - {p}" for p in d.removed] + [f"  ~ {p}" for p in d.changed]
        )
        return "\n".join(lines)

    emit(args, d.to_json(), text)
    return EXIT_OK


def cmd_stats(args: argparse.Namespace) -> int:
    repo = open_repository(args)
    infos = repo.snapshots(args.stream, include_tombstoned=True)
    shard_objects = shard_bytes = 0
    for info in repo.store.list("shards/"):
        shard_objects += 1
        shard_bytes += info.size
    logical = sum(i.stats.get("item_bytes", 0) for i in infos if not i.tombstoned)
    doc = {
        "url": repo.url,
        "streams": repo.streams(),
        "snapshots": sum(not i.tombstoned for i in infos),
        "tombstoned": sum(i.tombstoned for i in infos),
        "shard_objects": shard_objects,
        "stored_bytes": shard_bytes,
        "logical_bytes": logical,
        "dedup_ratio": round(logical / shard_bytes, 3) if shard_bytes else None,
        "grace_seconds": repo.config.grace,
        "max_write_duration_seconds": repo.config.max_write_duration,
    }
    emit(
        args,
        doc,
        lambda: "\n".join(f"{k}: {fmt_bytes(v) if k.endswith('bytes') else v}" for k, v in doc.items()),
    )
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tqsnap", description="Incremental, atomic snapshots of ML state.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("init", help="create a repository with its gc timings")
    add_repo_args(p)
    p.add_argument(
        "--grace", default=f"{DEFAULT_GRACE:g}s", help="how long garbage must age before gc deletes it"
    )
    p.add_argument(
        "--max-write-duration",
        default=f"{DEFAULT_MAX_WRITE_DURATION:g}s",
        help="a save must commit within this long of starting",
    )
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("snapshots", help="list visible snapshots")
    add_repo_args(p)
    p.add_argument("--stream", default=None, help="only this stream")
    p.set_defaults(func=cmd_snapshots)

    p = sub.add_parser("show", help="print one snapshot's manifest summary")
    add_repo_args(p, stream=True, snapshot=True)
    p.set_defaults(func=cmd_show)

    p = sub.add_parser(
        "verify", help="re-hash every shard of a snapshot; exit 1 if any is missing or corrupt"
    )
    add_repo_args(p, stream=True, snapshot=True)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("tag", help="give a snapshot an immutable name")
    add_repo_args(p, stream=True, snapshot=True)
    p.add_argument("name")
    p.set_defaults(func=cmd_tag)

    p = sub.add_parser("copy", help="copy a snapshot to another repository; only missing shards move")
    add_repo_args(p, stream=True, snapshot=True)
    p.add_argument("dst", help="destination repository URL (created if missing)")
    p.add_argument("--dst-stream", default=None, help="stream name in the destination (default: same)")
    p.add_argument("--dst-endpoint-url", default=None, help="S3 endpoint of the destination, if different")
    p.set_defaults(func=cmd_copy)

    p = sub.add_parser("diff", help="compare two snapshots of a stream item by item")
    add_repo_args(p, stream=True)
    p.add_argument("a", help="older snapshot: seq, latest or tag:<name>")
    p.add_argument("b", help="newer snapshot: seq, latest or tag:<name>")
    p.set_defaults(func=cmd_diff)

    p = sub.add_parser("stats", help="repository totals: snapshots, stored bytes, dedup ratio")
    add_repo_args(p)
    p.add_argument("--stream", default=None, help="only this stream's snapshots")
    p.set_defaults(func=cmd_stats)

    cli_retention.register(sub)
    cli_tq.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # map typed errors to documented exit codes
        for cls, code in _EXIT_BY_ERROR:
            if isinstance(exc, cls):
                print(f"tqsnap: error: {exc}", file=sys.stderr)
                return code
        raise


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
