"""Errors only the DCP adapter raises.

They derive from :class:`~tqsnap.errors.TqsnapError` like every other tqsnap error, so one
``except TqsnapError`` still catches them; they are meant to move into :mod:`tqsnap.errors`.
"""

from __future__ import annotations

from ...errors import TqsnapError


class ShapeMismatchError(TqsnapError, ValueError):
    """Stored bytes and the tensor DCP asked for disagree in shape (or size in bytes)."""


class InconsistentSnapshotError(TqsnapError):
    """Ranks of one load resolved their snapshot selector to different snapshots."""
