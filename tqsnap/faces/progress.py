"""Live progress on stderr for long commands (bytes, rate, ETA), only where a person watches.

Uses tqdm: one small pure-Python package with no dependencies of its own (rich would bring
markdown-it-py and mdurl for a single bar), whose bar already shows bytes, rate and ETA and
redraws in place. The bar appears only when stderr is a terminal and neither ``-q`` nor
``--json`` was given, so pipes, cron logs and machine output stay clean.

The engine knows nothing of tqdm: it calls ``start(total=..., what=...)``, ``advance(nbytes)``
on whatever reporter it was handed (engine/check.py), and :class:`NullProgress` is the no-op.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import threading
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from ..engine import progress as engine_progress

#: Commands that move shard bytes and get a bar (``check`` drives its own, with a total).
BAR_COMMANDS = frozenset({"verify", "gc", "copy", "restore", "tq-snapshot", "tq-restore", "save", "load"})


class NullProgress:
    """Shows nothing, but counts what this process uploaded (for the Ctrl-C report)."""

    def __init__(self) -> None:
        self.uploaded_bytes = 0
        self._count_lock = threading.Lock()

    def uploaded(self, nbytes: int) -> None:
        with self._count_lock:
            self.uploaded_bytes += nbytes

    def start(self, *, total: int | None, what: str = "") -> None:
        pass

    def advance(self, nbytes: int) -> None:
        pass

    def close(self) -> None:
        pass


class TerminalProgress(NullProgress):
    """A tqdm byte bar on stderr."""

    def __init__(self, stream: Any = None) -> None:
        super().__init__()
        self.stream = stream or sys.stderr
        self.bar: Any = None

    def start(self, *, total: int | None, what: str = "") -> None:
        from tqdm import tqdm

        self.close()
        try:
            columns = os.get_terminal_size(self.stream.fileno()).columns
        except (AttributeError, OSError, ValueError):
            columns = 0
        self.bar = tqdm(
            total=total,
            desc=what,
            unit="iB",  # with unit_divisor 1024, tqdm then prints KiB, MiB, GiB
            unit_scale=True,
            unit_divisor=1024,
            file=self.stream,
            # A terminal that reports no size (0 columns) would get no bar at all from tqdm.
            dynamic_ncols=columns > 0,
            ncols=None if columns > 0 else 80,
            mininterval=0.1,
            leave=False,
        )

    def advance(self, nbytes: int) -> None:
        if self.bar is None:
            self.start(total=None, what="")
        self.bar.update(nbytes)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def wants_progress(args: argparse.Namespace, stream: Any = None) -> bool:
    """A bar only for a person: stderr is a terminal, and neither ``-q`` nor ``--json``."""
    stream = stream or sys.stderr
    if getattr(args, "quiet", False) or getattr(args, "json", False):
        return False
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def progress_for(args: argparse.Namespace) -> NullProgress:
    """The reporter a command hands to the engine."""
    return TerminalProgress() if wants_progress(args) else NullProgress()


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def interrupted_message(args: argparse.Namespace, uploaded: int) -> str:
    """What an interrupted command leaves behind, and when gc may take it."""
    command = getattr(args, "command", "command")
    if not uploaded:
        return f"interrupted: the {command} in progress committed nothing and uploaded nothing"
    when = "once they are older than the repository's grace period"
    try:
        from .cli_common import open_repository

        repo = open_repository(args)
        at = datetime.fromtimestamp(repo.store.now() + repo.config.grace, timezone.utc)
        when = f"after {at:%Y-%m-%d %H:%M:%S} UTC"
    except Exception:  # noqa: BLE001 - the report must not fail the interrupt
        pass
    return (
        f"interrupted: the {command} in progress committed nothing; {_mib(uploaded)} of unreferenced "
        f"shards it uploaded will be collected by gc {when}"
    )


def with_progress(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Run a subcommand with the engine's progress sink installed (a bar only for a person).

    On Ctrl-C the command's upload count is reported on stderr before the interrupt goes on
    to the shell's handler (exit 130, cli.py).
    """

    @functools.wraps(func)
    def run(args: argparse.Namespace) -> int:
        if getattr(args, "command", None) not in BAR_COMMANDS:
            return func(args)
        reporter = progress_for(args)
        previous = engine_progress.install(reporter)
        try:
            return func(args)
        except KeyboardInterrupt:
            reporter.close()
            sys.stderr.write(interrupted_message(args, reporter.uploaded_bytes) + "\n")
            raise
        finally:
            reporter.close()
            engine_progress.install(previous)

    return run
