"""The ``tqsnap`` command.

Exit codes (documented in README.md): 0 success; 1 the operation ran and found a problem
(``verify`` found damage, a malformed repository); 2 bad usage or bad input (invalid name,
unsafe config, bad policy); 3 not found (repository, snapshot, bucket); 4 store or access
failure; 5 a commit conflict or deadline; 70 an unexpected internal error; 130 interrupted;
141 the output pipe closed early. No input makes it print a traceback (``-vv`` logs one).
Every subcommand that prints data accepts ``--json``.

A subcommand is a ``cmd_*(args) -> exit code`` function plus a parser entry; a module of
subcommands has a ``register(sub)`` function, called from :func:`build_parser`. Shared
helpers live in cli_common.py, so such modules never import this one.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..engine import Repository
from ..engine.diff import diff_manifests
from ..engine.reader import load_body
from ..format.config import DEFAULT_GRACE, DEFAULT_MAX_WRITE_DURATION
from ..format.manifest import Manifest
from . import cli_copy, cli_doctor, cli_retention, cli_tq
from .cli_common import (  # noqa: F401 - EXIT_* and the helpers stay importable from here
    EXIT_CONFLICT,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_PROBLEM,
    EXIT_STORE,
    EXIT_USAGE,
    add_repo_args,
    as_count,
    emit,
    fmt_bytes,
    fmt_time,
    open_repository,
    storage_options,
    table,
    terminal_safe,
)
from .cli_errors import run_command
from .cli_logging import configure_logging

# --- core subcommands ------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    repo = Repository.init(
        args.url,
        grace=args.grace,
        max_write_duration=args.max_write_duration,
        storage_options=storage_options(args),
        single_writer=args.single_writer,
    )
    c = repo.config
    emit(
        args,
        {
            "url": repo.url,
            "repo_id": c.repo_id,
            "grace_seconds": c.grace,
            "max_write_duration_seconds": c.max_write_duration,
            "single_writer": c.single_writer,
        },
        lambda: (
            f"repository {repo.url} (id {c.repo_id}): grace {c.grace:g}s, "
            f"max_write_duration {c.max_write_duration:g}s" + (", single writer" if c.single_writer else "")
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
            "\n".join(
                f"{terminal_safe(k)}: {terminal_safe(v)}" for k, v in doc.items() if k not in ("shards", "extra")
            )
            + f"\nshards: {len(m.shards)}"
        ),
    )
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    report = open_repository(args).verify(args.stream, args.snapshot)

    def text() -> str:
        lines = [
            f"{terminal_safe(report.snapshot)}: {report.shards} shards, {fmt_bytes(report.bytes)}: "
            + ("OK" if report.ok else "DAMAGED")
        ]
        lines += [f"  missing {terminal_safe(k)}" for k in report.missing]
        lines += [f"  corrupt {terminal_safe(k)}" for k in report.corrupt]
        return "\n".join(lines)

    emit(args, report.to_json(), text)
    return EXIT_OK if report.ok else EXIT_PROBLEM


def cmd_tag(args: argparse.Namespace) -> int:
    tag = open_repository(args).tag(args.name, args.stream, args.snapshot)
    emit(
        args,
        {"name": tag.name, "stream": tag.target.stream, "seq": tag.target.seq},
        lambda: f"tagged {terminal_safe(tag.target)} as {terminal_safe(tag.name)}",
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
            f"{terminal_safe(a.id)} -> {terminal_safe(b.id)}: {len(d.added)} added, {len(d.removed)} removed, "
            f"{len(d.changed)} changed, {d.unchanged} unchanged; {fmt_bytes(d.new_shard_bytes)} in new shards, "
            f"{fmt_bytes(d.shared_shard_bytes)} shared"
        ]
        for sign, paths in (("+", d.added), ("-", d.removed), ("~", d.changed)):
            lines += [f"  {sign} {terminal_safe(p)}" for p in paths]
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
    logical = sum(as_count(i.stats.get("item_bytes", 0)) for i in infos if not i.tombstoned)
    doc = {
        "url": repo.url,
        "streams": repo.streams(),
        "snapshots": sum(not i.tombstoned for i in infos),
        "tombstoned": sum(i.tombstoned for i in infos),
        "shard_objects": shard_objects,
        "stored_bytes": shard_bytes,
        "logical_bytes": logical,
        # logical bytes per stored byte: what dedup and compression save together
        "logical_to_stored_ratio": round(logical / shard_bytes, 3) if shard_bytes else None,
        "grace_seconds": repo.config.grace,
        "max_write_duration_seconds": repo.config.max_write_duration,
    }
    emit(
        args,
        doc,
        lambda: "\n".join(
            f"{k}: {fmt_bytes(v) if k.endswith('bytes') else terminal_safe(v)}" for k, v in doc.items()
        ),
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

    cli_copy.register(sub)

    p = sub.add_parser("diff", help="compare two snapshots of a stream item by item")
    add_repo_args(p, stream=True)
    p.add_argument("a", help="older snapshot: seq, latest or tag:<name>")
    p.add_argument("b", help="newer snapshot: seq, latest or tag:<name>")
    p.set_defaults(func=cmd_diff)

    p = sub.add_parser("stats", help="repository totals: snapshots, stored bytes, logical-to-stored ratio")
    add_repo_args(p)
    p.add_argument("--stream", default=None, help="only this stream's snapshots")
    p.set_defaults(func=cmd_stats)

    cli_retention.register(sub)
    cli_tq.register(sub)
    cli_doctor.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; return its exit code (README.md). No input makes it raise."""
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    return run_command(args.func, args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
