"""What every checkpoint writer (torch DCP, hyper_parallel) is told, and keeps when pickled.

Each writer subclasses its own framework's ``StorageWriter``, so the settings they share live
in this mixin rather than in a common base of theirs. ``async_save`` may ship a writer to a
persist process: it pickles without its open repository when it was given a URL (that
process reopens it) and never with a save in progress.
"""

from __future__ import annotations

from typing import Any

from ..engine import PackOptions, Repository, SnapshotInfo
from ..engine.job import StagedPart, stage_part_name
from ..format import SnapshotId, validate_name
from .dcp.layout import CheckpointRef
from .dcp.repos import RepoLike, open_repository, repo_url


class CheckpointWriterSettings:
    """Repository, stream, parent, packing and job-part settings of one run's saves."""

    def _settle(
        self,
        url: RepoLike,
        stream: str,
        *,
        storage_options: dict[str, Any] | None,
        options: PackOptions | None,
        metadata: dict[str, Any] | None,
        parent: SnapshotId | str | None,
        create: bool,
        stage: str | None,
        part: str | None,
        caller: str,
    ) -> None:
        self.stage = stage
        self.part = stage_part_name(stage, part, stream, caller)
        #: The staged part of the last save (coordinator rank, with ``stage``); None elsewhere.
        self.staged: StagedPart | None = None
        self.url = url
        self.stream = validate_name(stream)
        self.storage_options = dict(storage_options or {})
        self.options = options or PackOptions()
        self.metadata = dict(metadata or {})
        self.parent = parent
        self.create = create
        self.is_coordinator = False
        self.rank: int | None = None
        #: The snapshot the last save committed (on the coordinator only).
        self.last_snapshot: SnapshotInfo | None = None
        self._repo: Repository | None = url if isinstance(url, Repository) else None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if isinstance(self.url, str):
            state["_repo"] = None  # connections do not pickle; the new process reopens the URL
        for in_progress in ("_begun", "_stager"):
            if in_progress in state:
                state[in_progress] = None
        return state

    @property
    def checkpoint_id(self) -> str:
        """``<url>#<stream>``: where the next save goes (the frameworks log it with every step)."""
        return str(CheckpointRef(repo_url(self.url), self.stream, None))

    def _repository(self) -> Repository:
        if self._repo is None:
            self._repo = open_repository(self.url, self.storage_options, create=self.create)
        return self._repo
