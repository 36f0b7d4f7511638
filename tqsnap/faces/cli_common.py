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
    """Arguments most subcommands share: the URL, store options, and optionally a snapshot.

    The URL may be left out when ``--repo``, ``$TQSNAP_REPO`` or a profile of the config file
    names the repository (cli_shell.py fills it in). ``--json``, ``-v`` and ``-q`` are global
    options that every subcommand accepts (cli_shell.py); ``json_flag`` is kept for callers.
    """
    p.add_argument(
        "url",
        help="repository URL: a path, file://, s3://bucket/prefix, obs://bucket/prefix "
        "(may be left out when --repo, $TQSNAP_REPO or a profile names one)",
    )
    p.add_argument("--endpoint-url", help="S3 endpoint (default: the profile's, $AWS_ENDPOINT_URL or AWS)")
    p.add_argument(
        "--single-writer",
        action="store_true",
        help="allow a store without a verified atomic create (you guarantee one writer)",
    )
    if stream:
        p.add_argument("--stream", default="default", help="stream name (default: %(default)s)")
    if snapshot:
        p.add_argument(
            "--snapshot", default="latest", help="latest, a seq number, tag:<name>, or stream@seq / stream@latest"
        )


#: Help for a positional SNAPSHOT argument, the way snapshots are printed.
SNAPSHOT_HELP = "stream@seq, stream@latest, stream@tag:NAME, or a seq / latest / tag:NAME of --stream"


def split_snapshot(text: str, stream: str | None) -> tuple[str | None, str]:
    """``"run@5"`` -> ``("run", "5")``; ``"5"`` -> ``(stream, "5")``.

    Snapshots print as ``stream@seq``, so they are accepted that way wherever one is named:
    ``run@5``, ``run@latest``, ``run@tag:best``. The stream in the text wins over ``--stream``.
    Stream names cannot hold ``@`` (format/keys.py), so the split is unambiguous.
    """
    if "@" in text:
        name, _, rest = text.partition("@")
        if not name or not rest:
            raise ValueError(f"cannot read snapshot {text!r}: write stream@seq, stream@latest or stream@tag:<name>")
        return name, rest
    return stream, text


#: Hints written for Python callers, and what the command line says instead.
CLI_WORDS = {
    ", or pass create_bucket=True": "",
    " or pass create_bucket=True": "",
    "or pass force=True to": "or pass --force to",
    "pass force=True": "pass --force",
    "Pass allow_pickle=True": "Pass --allow-pickle",
    "pass allow_pickle=True": "pass --allow-pickle",
    " (allow_empty_policy=True)": "",
    " or pass create=True": "",
    "pass single_writer=True": "pass --single-writer",
    " (init_repo(..., single_writer=True))": "",
}


def cli_words(text: str) -> str:
    """``text`` with Python keyword hints ("pass force=True") replaced by the command's flags."""
    for python, flag in CLI_WORDS.items():
        text = text.replace(python, flag)
    return text


def storage_options(args: argparse.Namespace) -> dict[str, Any]:
    """Store options from the profile, then the shared flags (flags win); empty when none."""
    opts: dict[str, Any] = dict(getattr(args, "profile_storage_options", None) or {})
    if getattr(args, "endpoint_url", None):
        opts["endpoint_url"] = args.endpoint_url
    url = str(getattr(args, "url", ""))
    if getattr(args, "single_writer", False) and "://" in url and not url.startswith(("file://", "memory://")):
        opts["single_writer"] = True  # an S3 and fsspec store option; local and memory stores create atomically
    return opts


def open_repository(args: argparse.Namespace, *, create: bool = False) -> Repository:
    """The repository named by ``args.url`` with the shared store flags."""
    return Repository.open(args.url, create=create, storage_options=storage_options(args))


# --- output ------------------------------------------------------------------------------------


#: Version of the ``--json`` documents (docs/cli-json.md); raised when a field changes meaning
#: or disappears, not when one is added.
JSON_SCHEMA = 1

#: Keys whose documents are the user's own (metadata) or the format's (extra): left untouched.
_OPAQUE_KEYS = frozenset({"metadata", "extra", "tree"})


def tqsnap_version() -> str:
    from .. import __version__

    return __version__


def iso_time(ts: Any) -> str | None:
    """Epoch seconds as ISO-8601 UTC (``2026-11-29T08:41:54.123456Z``); None when no calendar can show it."""
    if not _real(ts):
        return None
    try:
        return datetime.fromtimestamp(ts, timezone.utc).isoformat().replace("+00:00", "Z")
    except (OverflowError, OSError, ValueError):
        return None


def _is_time_key(key: str) -> bool:
    return key.endswith(("_at", "_time")) or key in ("time", "last_modified")


def with_iso_times(data: Any) -> Any:
    """``data`` with ``<key>_iso`` beside every epoch-seconds field (``committed_at``, ``time``, ...)."""
    if isinstance(data, list):
        return [with_iso_times(v) for v in data]
    if not isinstance(data, dict):
        return data
    out: dict[str, Any] = {}
    for key, value in data.items():
        out[key] = value if key in _OPAQUE_KEYS else with_iso_times(value)
        if isinstance(key, str) and _is_time_key(key) and _real(value) and f"{key}_iso" not in data:
            out[f"{key}_iso"] = iso_time(value)
    return out


def json_document(command: str, data: dict[str, Any]) -> dict[str, Any]:
    """One ``--json`` document: the envelope (command, version, schema) and the command's fields."""
    envelope = {"command": command, "tqsnap_version": tqsnap_version(), "schema": JSON_SCHEMA}
    return envelope | with_iso_times(data) | envelope


def write_json_line(command: str, data: dict[str, Any]) -> None:
    """Print one JSON Lines record (one line, ASCII only, so no control character reaches a terminal)."""
    sys.stdout.write(json.dumps(json_document(command, data), separators=(",", ":"), default=str) + "\n")


def emit(args: argparse.Namespace, data: Any, text: Callable[[], str]) -> None:
    """Print ``data`` as JSON Lines with ``--json``, else the human text.

    A dict is one line; a list is one line per element (``snapshots`` prints a line per
    snapshot), each with the envelope of :func:`json_document`. The human text is escaped once
    more as a whole (newlines kept): commands escape each untrusted field themselves, and this
    catches any field one of them forgets.
    """
    if getattr(args, "json", False):
        command = str(getattr(args, "command", None) or "tqsnap")
        for doc in data if isinstance(data, list) else [data]:
            write_json_line(command, doc if isinstance(doc, dict) else {"value": doc})
        return
    sys.stdout.write(terminal_safe(text(), keep_newlines=True) + "\n")


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
