"""What every ``tqsnap`` subcommand shares: exit codes, repository arguments and terminal output.

Subcommand modules (cli.py, cli_retention.py, cli_tq.py, ...) import from here and cli.py
imports them, so the helpers live below both and the imports run one way.

Everything a repository holds (stream, tag and kind names, parents, metadata, error messages
that echo them) is untrusted: whoever can write to a shared bucket chooses it. Human output
therefore passes through :func:`terminal_safe`, which escapes control characters, so a
crafted ``kind`` of ``"\\x1b[2J"`` prints as that text and cannot clear or rewrite the user's
terminal. ``--json`` output is escaped by ``json.dumps`` (``ensure_ascii``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import unicodedata
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

from ..engine import Repository

#: Exit codes, documented in README.md.
EXIT_OK = 0
EXIT_PROBLEM = 1  # the operation ran and found a problem (verify found damage, a malformed repository)
EXIT_USAGE = 2  # bad usage or bad input (invalid name, unsafe config, bad policy)
EXIT_NOT_FOUND = 3  # repository, snapshot or bucket not found
EXIT_STORE = 4  # store or access failure (permission, read-only media, network)
EXIT_CONFLICT = 5  # a commit conflict or write deadline
EXIT_INTERNAL = 70  # an unexpected error inside tqsnap (sysexits' EX_SOFTWARE)
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)
EXIT_BROKEN_PIPE = 141  # the reader of our output went away (128 + SIGPIPE), e.g. `| head`

#: Unicode categories that can move the cursor, reorder text or hide it: control characters
#: (C0, DEL, C1), format characters (bidi overrides, zero-width), line/paragraph separators,
#: lone surrogates and unassigned code points.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})


def _escape_char(ch: str) -> str:
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def terminal_safe(text: object, *, keep_newlines: bool = False) -> str:
    """``str(text)`` with every character a terminal could act on written as a Python escape.

    ``"\x1b[2J"`` becomes the eight characters ``\x1b[2J``. With ``keep_newlines`` a ``\n``
    is kept (for multi-line output assembled by tqsnap itself); every other control character
    is escaped. Backslashes are left alone, so applying it twice changes nothing: layers of
    the command may each make sure without garbling what another already escaped.
    """
    s = str(text)
    if s.isprintable():  # the common case: nothing to do
        return s
    out = []
    for ch in s:
        if ch == "\n" and keep_newlines:
            out.append(ch)
        elif ch.isprintable() and unicodedata.category(ch) not in _UNSAFE_CATEGORIES:
            out.append(ch)
        else:
            out.append(_escape_char(ch))
    return "".join(out)


# --- repository arguments ----------------------------------------------------------------------


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
    if getattr(args, "single_writer", False) and str(getattr(args, "url", "")).startswith(("s3://", "obs://")):
        opts["single_writer"] = True  # an S3 store option; local and memory stores create atomically
    return opts


def open_repository(args: argparse.Namespace, *, create: bool = False) -> Repository:
    """The repository named by ``args.url`` with the shared store flags."""
    return Repository.open(args.url, create=create, storage_options=storage_options(args))


# --- output ------------------------------------------------------------------------------------


def emit(args: argparse.Namespace, data: Any, text: Callable[[], str]) -> None:
    """Print ``data`` as JSON with ``--json``, else the human text.

    The human text is escaped once more as a whole (newlines kept): commands escape each
    untrusted field themselves, and this catches any field one of them forgets.
    """
    if getattr(args, "json", False):
        out = json.dumps(data, indent=2, default=str)
    else:
        out = terminal_safe(text(), keep_newlines=True)
    sys.stdout.write(out + "\n")


def _real(n: Any) -> bool:
    return isinstance(n, int | float) and not isinstance(n, bool) and math.isfinite(n)


def fmt_time(ts: Any) -> str:
    """A UTC time for tables; a time no calendar can show (1e300, NaN, a string) prints as is."""
    if _real(ts):
        try:
            return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        except (OverflowError, OSError, ValueError):
            pass
    return terminal_safe(repr(ts))


def fmt_bytes(n: Any) -> str:
    """``1536`` -> ``1.5 KiB``; a value that is not a finite number prints as its repr."""
    if not _real(n):
        return terminal_safe(repr(n))
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover - the loop always returns


def as_count(n: Any) -> float:
    """A manifest statistic for summing: the number, or 0 when a damaged manifest holds junk."""
    return n if _real(n) else 0


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A left-aligned text table; every cell is escaped with :func:`terminal_safe`."""
    cells = [[terminal_safe(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)
