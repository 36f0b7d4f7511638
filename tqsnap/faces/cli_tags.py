"""``tqsnap tag``, ``tqsnap tags`` and ``tqsnap untag``: names for snapshots that can move.

A tag is a chain of put-if-absent versions (engine/tags.py): ``tag`` creates one, ``tag
--move`` points it elsewhere, ``untag`` writes a deletion. ``forget`` keeps tagged snapshots
unless told ``--untag``. Exit codes are cli.py's: 0 done; 2 the tag names another snapshot
(pass ``--move``) or a bad name; 3 no such repository, snapshot or tag.
"""

from __future__ import annotations

import argparse
import re

from ..errors import InvalidNameError
from ..format.manifest import SnapshotId
from .cli_common import EXIT_OK, add_repo_args, emit, fmt_time, open_repository, table, terminal_safe

#: ``STREAM@SEQ``, ``STREAM@latest`` or ``STREAM@tag:<name>`` (the way snapshots are printed).
_AT = re.compile(r"([^@]+)@(.+)", re.ASCII)


def parse_snapshot(text: str) -> tuple[str, str]:
    """``run@12`` -> ``("run", "12")``; a bare stream name means its latest snapshot."""
    m = _AT.fullmatch(text)
    return (m.group(1), m.group(2)) if m else (text, "latest")


def _tag_json(name: str, target: SnapshotId | None, version: int, created_at: float) -> dict[str, object]:
    return {
        "name": name,
        "stream": target.stream if target else None,
        "seq": target.seq if target else None,
        "snapshot": str(target) if target else None,
        "version": version,
        "created_at": created_at,
    }


def cmd_tag(args: argparse.Namespace) -> int:
    if "@" in args.name and "@" not in args.snapshot_ref:
        # `tqsnap tag URL run@2 best`: the two arguments were given the other way round.
        raise InvalidNameError(
            f"invalid tag name {args.name!r:.80}: the tag name comes first, then the snapshot "
            f"(tqsnap tag URL {args.snapshot_ref} {args.name})"
        )
    stream, snapshot = parse_snapshot(args.snapshot_ref)
    repo = open_repository(args)
    tag = repo.tag(args.name, stream, snapshot, move=args.move)
    emit(
        args,
        _tag_json(tag.name, tag.target, tag.version, tag.created_at),
        lambda: f"tag {terminal_safe(tag.name)} -> {terminal_safe(tag.target)} (version {tag.version})",
    )
    return EXIT_OK


def cmd_tags(args: argparse.Namespace) -> int:
    repo = open_repository(args)
    tags = repo.tags()
    visible = {(i.stream, i.seq) for i in repo.snapshots()}
    docs = []
    rows = []
    for t in tags:
        assert t.target is not None  # listings leave deleted tags out
        live = (t.target.stream, t.target.seq) in visible
        docs.append(_tag_json(t.name, t.target, t.version, t.created_at) | {"target_visible": live})
        rows.append([t.name, t.target, t.version, fmt_time(t.created_at), "" if live else "forgotten"])
    emit(args, docs, lambda: table(["tag", "snapshot", "version", "set (UTC)", "note"], rows))
    return EXIT_OK


def cmd_untag(args: argparse.Namespace) -> int:
    repo = open_repository(args)
    old = repo.read_tag(args.name)
    tag = repo.untag(args.name)
    emit(
        args,
        _tag_json(tag.name, None, tag.version, tag.created_at) | {"was": str(old.target)},
        lambda: f"deleted tag {terminal_safe(tag.name)} (it named {terminal_safe(old.target)})",
    )
    return EXIT_OK


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``tag``, ``tags`` and ``untag`` to the ``tqsnap`` parser."""
    p = sub.add_parser(
        "tag",
        help="name a snapshot (STREAM@SEQ); --move points an existing tag elsewhere",
        epilog="exit codes: 0 done; 2 the tag names another snapshot (use --move); 3 not found",
    )
    add_repo_args(p)
    p.add_argument("name", help="tag name")
    p.add_argument(
        "snapshot_ref", metavar="STREAM@SEQ", help="the snapshot: STREAM@SEQ, STREAM@latest or STREAM"
    )
    p.add_argument("--move", action="store_true", help="move the tag if it names another snapshot")
    p.set_defaults(func=cmd_tag)

    p = sub.add_parser("tags", help="list tags and the snapshots they name")
    add_repo_args(p)
    p.set_defaults(func=cmd_tags)

    p = sub.add_parser("untag", help="delete a tag (the snapshot stays; forget may then remove it)")
    add_repo_args(p)
    p.add_argument("name", help="tag name")
    p.set_defaults(func=cmd_untag)
