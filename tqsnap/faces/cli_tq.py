"""Subcommands registered into the `tqsnap` command (see cli.py)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommands to the `tqsnap` parser."""
