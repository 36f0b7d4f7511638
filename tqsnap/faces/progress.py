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
import sys
from typing import Any


class NullProgress:
    """Reports nothing: the default everywhere a person is not watching."""

    def start(self, *, total: int | None, what: str = "") -> None:
        pass

    def advance(self, nbytes: int) -> None:
        pass

    def close(self) -> None:
        pass


class TerminalProgress(NullProgress):
    """A tqdm byte bar on stderr."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        self.bar: Any = None

    def start(self, *, total: int | None, what: str = "") -> None:
        from tqdm import tqdm

        self.close()
        self.bar = tqdm(
            total=total,
            desc=what,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            file=self.stream,
            dynamic_ncols=True,
            mininterval=0.1,
            leave=False,
        )

    def advance(self, nbytes: int) -> None:
        if self.bar is not None:
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
