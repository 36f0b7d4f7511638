"""What every checkpoint reader (torch DCP, hyper_parallel) is told, and keeps when pickled.

The two frameworks hand a storage reader to every rank, sometimes by pickling it into another
process; each subclasses its own framework's ``StorageReader``, so the settings they share
live in this mixin rather than in a common base of theirs. A reader pickles without its open
repository when it was given a URL (the receiving rank reopens it) and never with a resolved
snapshot, so each rank resolves and checks the snapshot it loads itself.
"""

from __future__ import annotations

from typing import Any

from ..engine import Repository, SnapshotReader
from .dcp.layout import CheckpointRef
from .dcp.repos import RepoLike, repo_url


class CheckpointReaderSettings:
    """Repository, stream, snapshot and fetch settings of one checkpoint load."""

    url: RepoLike
    stream: str
    snapshot: str | int
    _snapshot: SnapshotReader | None

    def _settle(
        self,
        url: RepoLike,
        stream: str,
        snapshot: str | int,
        *,
        storage_options: dict[str, Any] | None,
        threads: int,
        window_bytes: int,
        allow_pickle: bool,
        part: str | None,
    ) -> None:
        self.part = part
        self.url = url
        self.stream = stream
        self.snapshot = snapshot
        self.storage_options = dict(storage_options or {})
        self.threads = threads
        self.window_bytes = window_bytes
        self.allow_pickle = allow_pickle
        self.is_coordinator = False
        self.rank: int | None = None
        self._repo: Repository | None = url if isinstance(url, Repository) else None
        self._snapshot = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if isinstance(self.url, str):
            state["_repo"] = None
        state["_snapshot"] = None
        return state

    @property
    def checkpoint_id(self) -> str:
        """``<url>#<stream>@<snapshot>``; once the metadata is read, the snapshot is the resolved seq."""
        snapshot = self._snapshot.manifest.seq if self._snapshot is not None else self.snapshot
        return str(CheckpointRef(repo_url(self.url), self.stream, str(snapshot)))
