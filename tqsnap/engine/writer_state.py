"""What the commit needs to know of a save, as a protocol, so the commit sits below the writer."""

from __future__ import annotations

from typing import Protocol

from ..format.manifest import Manifest, SnapshotId
from .repository import Repository


class SaveState(Protocol):
    """The parts of a :class:`~tqsnap.engine.writer.SnapshotWriter` its commit reads."""

    repo: Repository
    stream: str
    parent: SnapshotId | None
    write_id: str
    started_at: float
    _t0: float

    @property
    def deadline(self) -> float: ...

    def _rebase(self, manifest: Manifest, fork: bool, min_seq: int) -> int: ...
