"""Curating a repository from the command line: forget one named snapshot, live with damage.

``tqsnap forget URL STREAM@SEQ`` forgets one snapshot (a tombstone; ``gc`` reclaims its space
later), under the same rules as a policy ``forget``: the newest snapshot of a stream is kept
(``--force`` forgets it anyway: ``latest`` then names the one before), and a tagged snapshot
is kept unless ``--untag`` (which deletes its tags). It needs only the listing, never the
manifest itself, so a damaged manifest can be forgotten too.

A damaged manifest (one that cannot be parsed) no longer hides the rest of the repository:
``snapshots`` and ``stats`` list it as damaged beside the others and exit 1 (a problem was
found); ``forget`` with a policy leaves it alone and decides for the readable ones (treating
it as absent only ever keeps more). ``gc`` still refuses to delete anything while a manifest
it must read cannot be parsed, because it cannot know which shards that snapshot needs; it
names the manifest and says how to get past it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from ..errors import FormatError, PolicyError
from ..format.manifest import SnapshotId
from .cli_common import (
    EXIT_OK,
    EXIT_PROBLEM,
    emit,
    open_repository,
    split_snapshot,
    terminal_safe,
)
from .cli_errors import describe

Damaged = list[tuple[SnapshotId, Exception]]


def damaged_json(damaged: Damaged) -> list[dict[str, Any]]:
    """One JSON record per damaged manifest, in stream/seq order."""
    return [
        {"stream": sid.stream, "seq": sid.seq, "snapshot": str(sid), "damaged": True, "error": describe(exc)}
        for sid, exc in sorted(damaged, key=lambda d: d[0])
    ]


def report_damaged(damaged: Damaged) -> int:
    """Say on stderr (one line) which manifests are damaged; the exit code for the listing."""
    if not damaged:
        return EXIT_OK
    names = ", ".join(str(sid) for sid, _ in sorted(damaged, key=lambda d: d[0]))
    first = describe(sorted(damaged, key=lambda d: d[0])[0][1])
    sys.stderr.write(
        terminal_safe(
            f"tqsnap: {len(damaged)} damaged manifest(s) listed as DAMAGED: {names} ({first}); "
            "`tqsnap forget URL STREAM@SEQ` removes one"
        )
        + "\n"
    )
    return EXIT_PROBLEM


# --- forget one snapshot -------------------------------------------------------------------------


def cmd_forget_one(args: argparse.Namespace) -> int:
    stream, snapshot = split_snapshot(args.target, None)
    if stream is None:
        raise PolicyError(f"name the snapshot to forget as STREAM@SEQ (for example run@12), not {args.target!r}")
    repo = open_repository(args)
    sid = repo.resolve(stream, snapshot)  # lists and reads tags only: works on a damaged manifest
    newest = repo.visible_seqs(stream)[-1]
    if sid.seq == newest and not args.force:
        raise PolicyError(
            f"{sid} is the newest snapshot of stream {stream!r}; forget always keeps the newest of "
            "every stream. Pass --force to forget it anyway (latest then names the one before)"
        )
    tags = [t.name for t in repo.tags() if t.target == sid]
    if tags and not getattr(args, "untag", False):
        raise PolicyError(
            f"{sid} is tagged ({', '.join(tags)}); a tag keeps its snapshot. Pass --untag to forget it "
            "and delete those tags"
        )
    written = False
    if not args.dry_run:
        written = repo.write_tombstone(sid.stream, sid.seq, f"forget: {sid} by name")
        for name in tags:
            repo.untag(name)
    doc = {
        "dry_run": args.dry_run,
        "snapshot": str(sid),
        "stream": sid.stream,
        "seq": sid.seq,
        "action": "remove",
        "tombstone_written": written,
        "tags_removed": [] if args.dry_run else tags,
    }
    verb = "would forget" if args.dry_run else "forgot"
    emit(
        args,
        doc,
        lambda: f"{verb} {terminal_safe(sid)}"
        + (f" and its tags {terminal_safe(', '.join(tags))}" if tags else "")
        + ("" if args.dry_run else "; run `tqsnap gc` to reclaim its space once grace has passed"),
    )
    return EXIT_OK


_RULES = ("last", "hourly", "daily", "weekly", "monthly", "yearly", "within", "tag")


def _forget_dispatch(policy_forget: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        if args.target is not None:
            rules = [f"--keep-{n}" for n in _RULES if getattr(args, f"keep_{n}", None)]
            if rules or getattr(args, "all", False):
                raise PolicyError(
                    f"give either STREAM@SEQ or a policy ({', '.join(rules) or '--all'}), not both"
                )
            return cmd_forget_one(args)
        if args.force:
            raise PolicyError("--force applies to forgetting one named snapshot (tqsnap forget URL STREAM@SEQ)")
        return policy_forget(args)

    return run


def _gc_with_hint(gc: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return gc(args)
        except FormatError as exc:
            if type(exc) is not FormatError and "manifest" in str(exc):
                exc.args = (
                    f"{exc}. If that snapshot is beyond repair, `tqsnap forget {args.url} STREAM@SEQ` it: "
                    "gc no longer reads a manifest whose tombstone is older than grace",
                )
            raise

    return run


def register(sub: Any) -> None:
    """Extend ``forget`` (registered by cli_retention.py) with a named snapshot; hint on ``gc``."""
    forget = sub.choices["forget"]
    forget.add_argument(
        "target",
        nargs="?",
        metavar="STREAM@SEQ",
        help="forget this one snapshot instead of applying a policy (also STREAM@tag:NAME)",
    )
    forget.add_argument(
        "--force", action="store_true", help="with STREAM@SEQ: forget it even if it is the newest of its stream"
    )
    forget.set_defaults(func=_forget_dispatch(forget.get_default("func")))
    gc = sub.choices["gc"]
    gc.set_defaults(func=_gc_with_hint(gc.get_default("func")))

