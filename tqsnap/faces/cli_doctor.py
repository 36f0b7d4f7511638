"""``tqsnap doctor URL``: probe a store's promises and print what was found.

Runs the full probe of :mod:`tqsnap.store.probe` (a second put-if-absent is refused, alone and
under concurrent racers, for a small and a > 1 MiB object; ranged GET; the store's clock;
multipart completion; deletes) under a probe prefix it removes afterwards. Usable on a bucket
with or without a repository, any time a proxy, server or setting changes. Exit code 0 when
every required check passed, 1 when one failed (README.md).
"""

from __future__ import annotations

import argparse
from typing import Any

from ..store import open_store
from ..store.probe import probe_store
from .cli_common import EXIT_OK, EXIT_PROBLEM, add_repo_args, emit, storage_options, table


def cmd_doctor(args: argparse.Namespace) -> int:
    store = open_store(args.url, **storage_options(args))
    try:
        result = probe_store(store)
    finally:
        store.close()

    def text() -> str:
        rows = [[f.check, f.status, f.detail] for f in result.findings]
        verdict = (
            "the store keeps every promise tqsnap relies on"
            if result.ok
            else "UNSAFE for several writers: " + ", ".join(f.check for f in result.failed() if f.required)
        )
        return f"{result.url} ({result.seconds:.1f}s)\n" + table(["check", "result", "detail"], rows) + f"\n{verdict}"

    emit(args, result.to_json(), text)
    return EXIT_OK if result.ok else EXIT_PROBLEM


def register(sub: Any) -> None:
    """Add ``doctor`` to the `tqsnap` parser."""
    p = sub.add_parser(
        "doctor", help="probe a store: atomic create, ranged GET, clock, multipart, delete; print a table"
    )
    add_repo_args(p)
    p.set_defaults(func=cmd_doctor)
