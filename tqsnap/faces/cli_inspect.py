"""``tqsnap ls`` and ``tqsnap restore``: look inside a snapshot and take it out as ordinary files.

``ls URL SNAPSHOT`` prints one row per item (path, kind, dtype, shape, size), the paths that
``--include`` patterns match. ``restore URL SNAPSHOT --to FILE.pt|FILE.safetensors|DIR``
writes the snapshot as a file or DCP directory that loads without tqsnap (faces/export.py).
SNAPSHOT is ``stream@seq``, ``stream@latest``, ``stream@tag:NAME``, or a seq / ``latest`` /
``tag:NAME`` of ``--stream``. Exit codes are cli.py's: 0 done; 2 bad target or a value the
target format cannot hold (nothing written); 3 no such repository, snapshot or matching item.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone
from typing import Any

from ..engine.reader import load_body
from ..format.manifest import Manifest
from .cli_common import (
    EXIT_OK,
    SNAPSHOT_HELP,
    add_repo_args,
    emit,
    fmt_bytes,
    fmt_time,
    open_repository,
    split_snapshot,
    table,
    terminal_safe,
)
from .cli_job import part_rows
from .export import export_snapshot


def _snapshot_arg(args: argparse.Namespace) -> tuple[str, str]:
    stream, snapshot = split_snapshot(args.snapshot, args.stream)
    return stream or "default", snapshot


def _manifest(args: argparse.Namespace) -> tuple[Any, Manifest]:
    repo = open_repository(args)
    sid = repo.resolve(*_snapshot_arg(args))
    return repo, load_body(repo.store, repo.load_manifest(sid.stream, sid.seq))


# --- show ----------------------------------------------------------------------------------------


def _ago(ts: Any) -> str:
    if not isinstance(ts, int | float) or isinstance(ts, bool):
        return ""
    try:
        seconds = datetime.now(timezone.utc).timestamp() - float(ts)
    except (OverflowError, ValueError):
        return ""
    if not -1e12 < seconds < 1e12:
        return ""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if abs(seconds) >= size:
            n = int(abs(seconds) // size)
            return f" ({n} {unit}{'s' if n != 1 else ''} {'ago' if seconds >= 0 else 'from now'})"
    return " (just now)"


def _stat_value(key: str, value: Any) -> str:
    return fmt_bytes(value) if key.endswith("bytes") else terminal_safe(value)


def show_text(m: Manifest) -> str:
    """A human summary of one manifest: UTC times with their age, sizes in KiB/MiB, no reprs."""
    item_bytes = sum(i.size for i in m.items)
    stored = sum(s.stored_size for s in m.shards)
    rows = [
        ("snapshot", f"{m.stream}@{m.seq}"),
        ("kind", m.kind),
        ("committed", f"{fmt_time(m.committed_at)} UTC{_ago(m.committed_at)}"),
        ("started", f"{fmt_time(m.started_at)} UTC"),
        ("parent", str(m.parent) if m.parent else "-"),
        ("write id", m.write_id),
        ("items", f"{len(m.items)} ({fmt_bytes(item_bytes)})"),
        ("shards", f"{len(m.shards)} ({fmt_bytes(stored)} stored)"),
        ("format", m.format_version),
    ]
    rows += part_rows(m)
    rows += [(f"stats.{k}", _stat_value(k, v)) for k, v in sorted(m.stats.items())]
    rows += [
        (f"metadata.{k}", v if isinstance(v, str) else json.dumps(v, default=str)) for k, v in m.metadata.items()
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{terminal_safe(k).ljust(width)}  {terminal_safe(v)}" for k, v in rows)


# --- ls -------------------------------------------------------------------------------------------


def cmd_ls(args: argparse.Namespace) -> int:
    _, m = _manifest(args)
    items = sorted(m.items, key=lambda i: i.path)
    docs = [
        {
            "snapshot": str(m.id),
            "path": i.path,
            "kind": i.kind,
            "dtype": i.dtype,
            "shape": i.shape,
            "size": i.size,
        }
        for i in items
    ]
    rows = [
        [i.path, i.kind, i.dtype or "-", "x".join(map(str, i.shape)) if i.shape is not None else "-", fmt_bytes(i.size)]
        for i in items
    ]
    emit(
        args,
        docs,
        lambda: table(["path", "kind", "dtype", "shape", "size"], rows)
        + f"\n{len(items)} items, {fmt_bytes(sum(i.size for i in items))} in {terminal_safe(m.id)}",
    )
    return EXIT_OK


# --- restore ----------------------------------------------------------------------------------------


def cmd_restore(args: argparse.Namespace) -> int:
    repo = open_repository(args)
    stream, snapshot = _snapshot_arg(args)
    report = export_snapshot(
        repo, stream, snapshot, args.to, include=args.include, force=args.force, part=args.part
    )

    def text() -> str:
        line = (
            f"restored {terminal_safe(report.snapshot)} to {terminal_safe(report.target)} ({report.format}): "
            f"{report.tensors} tensors ({fmt_bytes(report.bytes)}), {report.values} other values"
        )
        if report.skipped:
            line += f"; skipped (not tensors): {terminal_safe(', '.join(report.skipped))}"
        return line

    emit(args, report.to_json(), text)
    return EXIT_OK


def register(sub: Any) -> None:
    """Add ``ls`` and ``restore`` to the ``tqsnap`` parser."""
    p = sub.add_parser("ls", help="list a snapshot's items: path, kind, dtype, shape, size")
    add_repo_args(p)
    p.add_argument("snapshot", metavar="SNAPSHOT", help=SNAPSHOT_HELP)
    p.add_argument("--stream", default="default", help="stream of a SNAPSHOT without one (default: %(default)s)")
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser(
        "restore",
        help="write a snapshot to FILE.pt, FILE.safetensors or a DCP directory, loadable without tqsnap",
        epilog="exit codes: 0 written; 2 bad target or a value the format cannot hold (nothing written); "
        "3 no such repository, snapshot or matching item; 4 store failure",
    )
    add_repo_args(p)
    p.add_argument("snapshot", metavar="SNAPSHOT", help=SNAPSHOT_HELP)
    p.add_argument("--stream", default="default", help="stream of a SNAPSHOT without one (default: %(default)s)")
    p.add_argument(
        "--to",
        required=True,
        metavar="TARGET",
        help="FILE.pt (torch.save, weights_only-loadable), FILE.safetensors (tensors), or DIR (DCP checkpoint)",
    )
    p.add_argument(
        "--include",
        action="append",
        metavar="GLOB",
        help="only items matching GLOB (item path, or a parent of it; repeatable); only their shards are read",
    )
    p.add_argument("--part", metavar="NAME", help="the part of a job snapshot to write (trainer, loop, ...)")
    p.add_argument("--force", action="store_true", help="replace an existing target")
    p.set_defaults(func=cmd_restore)
