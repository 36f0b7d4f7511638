"""The ``tqsnap`` command.

Exit codes (documented in README.md): 0 success; 1 the operation ran and found a problem
(``verify`` found damage, a malformed repository); 2 bad usage or bad input (invalid name,
unsafe config, bad policy); 3 not found (repository, snapshot, bucket); 4 store or access
failure; 5 a commit conflict or deadline; 70 an unexpected internal error; 130 interrupted;
141 the output pipe closed early. No input makes it print a traceback (``-vv`` logs one).
Every subcommand that prints data accepts ``--json`` (JSON Lines, docs/cli-json.md). The
global options, profiles and completion live in cli_shell.py.

A subcommand is a ``cmd_*(args) -> exit code`` function plus a parser entry; a module of
subcommands has a ``register(sub)`` function, called from :func:`build_parser`. Shared
helpers live in cli_common.py, so such modules never import this one.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from ..engine import Repository
from ..engine.diff import diff_manifests
from ..engine.reader import load_body
from ..format.config import DEFAULT_GRACE, DEFAULT_MAX_WRITE_DURATION
from ..format.manifest import Manifest
from . import (
    cli_check,
    cli_config,
    cli_copy,
    cli_curate,
    cli_doctor,
    cli_inspect,
    cli_retention,
    cli_shell,
    cli_stats,
    cli_tags,
    cli_tq,
)
from .cli_common import (  # noqa: F401 - EXIT_* and the helpers stay importable from here
    EXIT_CONFLICT,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_PROBLEM,
    EXIT_STORE,
    EXIT_USAGE,
    SNAPSHOT_HELP,
    add_repo_args,
    as_count,
    emit,
    fmt_bytes,
    fmt_time,
    open_repository,
    split_snapshot,
    storage_options,
    table,
    terminal_safe,
)
from .cli_curate import damaged_json, report_damaged
from .cli_errors import run_command
from .cli_job import kind_label, parts_json
from .cli_logging import configure_logging
from .progress import with_progress

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
    damaged: list = []
    infos = repo.snapshots(args.stream, damaged=damaged)
    tags: dict[tuple[str, int], list[str]] = {}
    for t in repo.tags():
        if t.target is not None:
            tags.setdefault((t.target.stream, t.target.seq), []).append(t.name)
    rows = [
        [
            i.stream,
            i.seq,
            kind_label(i.kind, i.stats),
            fmt_time(i.committed_at),
            str(i.parent or "-"),
            fmt_bytes(i.stats.get("item_bytes", 0)),
            fmt_bytes(i.stats.get("stored_bytes", 0)),
            ",".join(tags.get((i.stream, i.seq), [])) or "-",
        ]
        for i in infos
    ]
    rows += [[sid.stream, sid.seq, "DAMAGED", "-", "-", "-", "-", "-"] for sid, _ in sorted(damaged, key=lambda d: d[0])]
    emit(
        args,
        [i.to_json() | {"tags": tags.get((i.stream, i.seq), []), "damaged": False} for i in infos]
        + damaged_json(damaged),
        lambda: table(["stream", "seq", "kind", "committed (UTC)", "parent", "size", "uploaded", "tags"], rows),
    )
    return report_damaged(damaged)


def cmd_show(args: argparse.Namespace) -> int:
    repo = open_repository(args)
    sid = repo.resolve(args.stream, args.snapshot)
    m = load_body(repo.store, repo.load_manifest(sid.stream, sid.seq))
    doc = m.to_json(include_items=False) | {"items": len(m.items)}
    if (parts := parts_json(m)) is not None:
        doc["parts"] = parts
    emit(args, doc, lambda: cli_inspect.show_text(m))
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


def _manifest(repo: Repository, stream: str, snapshot: str) -> Manifest:
    sid = repo.resolve(stream, snapshot)
    return load_body(repo.store, repo.load_manifest(sid.stream, sid.seq))


def cmd_diff(args: argparse.Namespace) -> int:
    repo = open_repository(args)
    a = _manifest(repo, *split_snapshot(args.a, args.stream))  # type: ignore[arg-type]
    b = _manifest(repo, *split_snapshot(args.b, args.stream))  # type: ignore[arg-type]
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
    if args.stream:
        return cli_stats.cmd_stream_stats(args)
    repo = open_repository(args)
    damaged: list = []
    infos = repo.snapshots(args.stream, include_tombstoned=True, damaged=damaged)
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
        "damaged": damaged_json(damaged),
    }
    emit(
        args,
        doc,
        lambda: "\n".join(
            f"{k}: {fmt_bytes(v) if k.endswith('bytes') else terminal_safe(v)}"
            for k, v in doc.items()
            if k != "damaged"
        )
        + (f"\ndamaged: {', '.join(d['snapshot'] for d in doc['damaged'])}" if damaged else ""),
    )
    return report_damaged(damaged)


def build_parser() -> argparse.ArgumentParser:
    parser = cli_shell.TqsnapArgumentParser(
        prog="tqsnap",
        description="Incremental, atomic snapshots of ML state.",
        epilog="exit codes: 0 ok; 1 a problem found; 2 bad usage; 3 not found; 4 store failure; "
        "5 commit conflict; 70 internal error; 130 interrupted; 141 output pipe closed",
    )
    parser.add_argument("--version", action="version", version=cli_shell.version_line())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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

    p = sub.add_parser("show", help="print one snapshot's summary: times, sizes, items, shards")
    add_repo_args(p, stream=True, snapshot=True)
    p.add_argument("snapshot_ref", nargs="?", metavar="SNAPSHOT", help=SNAPSHOT_HELP)
    p.set_defaults(func=cmd_show)

    p = sub.add_parser(
        "verify", help="re-hash every shard of a snapshot; exit 1 if any is missing or corrupt"
    )
    add_repo_args(p, stream=True, snapshot=True)
    p.add_argument("snapshot_ref", nargs="?", metavar="SNAPSHOT", help=SNAPSHOT_HELP)
    p.set_defaults(func=cmd_verify)

    cli_tags.register(sub)
    cli_config.register(sub)
    cli_check.register(sub)

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
    cli_inspect.register(sub)
    cli_curate.register(sub)
    cli_shell.register(sub)
    cli_shell.add_global_options(parser, sub)  # last: every subcommand gets them
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; return its exit code (README.md). No input makes it raise."""
    parser = build_parser()
    cli_shell.autocomplete(parser)
    argv = list(sys.argv[1:] if argv is None else argv)
    cli_shell.JSON_REQUESTED = "--json" in argv
    try:
        args = cli_shell.parse_args(parser, argv)
    except SystemExit as exc:  # --help, --version, bad usage (already said on stderr)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    handler = configure_logging(max(0, cli_shell.verbosity(args)))
    if cli_shell.verbosity(args) < 0:
        handler.setLevel(logging.ERROR)

    def run(a: argparse.Namespace) -> int | None:
        cli_shell.prepare(a)
        return with_progress(a.func)(a)

    return run_command(cli_shell.with_json_errors(run), args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
