"""Errors the DCP adapter raises; they live in :mod:`tqsnap.errors` with every other one."""

from __future__ import annotations

from ...errors import InconsistentSnapshotError, ShapeMismatchError

__all__ = ["InconsistentSnapshotError", "ShapeMismatchError"]
