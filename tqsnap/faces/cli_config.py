"""``tqsnap config``: show the repository config, or change grace and write duration safely.

A change writes the next config version with put-if-absent (engine/config_versions.py); it
is refused (exit 2, nothing written) when a writer or gc run that read an older version
could lose data under it (docs/protocol.md, "Changing the config").
"""

from __future__ import annotations

import argparse

from ..engine.config_versions import change_config, config_history
from ..format.config import RepoConfig
from ..format.keys import CONFIG_KEY
from .cli_common import EXIT_OK, add_repo_args, emit, fmt_time, open_repository


def _doc(c: RepoConfig) -> dict[str, object]:
    return {
        "version": c.version,
        "grace_seconds": c.grace,
        "max_write_duration_seconds": c.max_write_duration,
        "in_force_since": c.in_force_since,
        "single_writer": c.single_writer,
    }


def cmd_config(args: argparse.Namespace) -> int:
    repo = open_repository(args)
    store = repo.store
    first = RepoConfig.decode(store.get_range(CONFIG_KEY, 0, 1 << 16), CONFIG_KEY)
    if args.grace is None and args.max_write_duration is None:
        history = config_history(store, first)
        emit(
            args,
            {"url": repo.url, "current": _doc(repo.config), "history": [_doc(c) for c in history]},
            lambda: "\n".join(
                f"version {c.version}: grace {c.grace:g}s, max_write_duration {c.max_write_duration:g}s "
                f"since {fmt_time(c.in_force_since)} UTC"
                for c in history
            ),
        )
        return EXIT_OK
    new = change_config(store, first, grace=args.grace, max_write_duration=args.max_write_duration)
    emit(
        args,
        {"url": repo.url, "current": _doc(new)},
        lambda: f"config of {repo.url} is version {new.version}: grace {new.grace:g}s, "
        f"max_write_duration {new.max_write_duration:g}s",
    )
    return EXIT_OK


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``config`` to the ``tqsnap`` parser."""
    p = sub.add_parser(
        "config",
        help="show the config versions, or change grace / max write duration (a new version)",
        epilog="exit codes: 0 done; 2 the change is unsafe for writers or gc runs still in flight "
        "(nothing written); 5 someone changed the config at the same time",
    )
    add_repo_args(p)
    p.add_argument("--grace", default=None, help="new grace, e.g. 48h")
    p.add_argument("--max-write-duration", default=None, help="new max write duration, e.g. 6h")
    p.set_defaults(func=cmd_config)
