"""``tqsnap.job``: one atomic snapshot of a whole training job (docs/job.md).

On the driver::

    job = tqsnap.job.begin(url, stream="run-42")
    # every trainer rank: dcp.save(state, storage_writer=tqsnap.dcp.Writer(url, stream="run-42",
    #                                   stage=job.token, part="trainer"))
    job.add("trainer", staged)                            # the coordinator rank's ``writer.staged``
    job.add("queue", tqsnap.tq.stage(job, part="queue"))  # a live TransferQueue
    job.add("loop", {"step": 1000, "rng": rng_state})     # any state_dict, staged here
    info = job.commit(metadata={"step": 1000})            # ONE manifest, one conditional put

A :class:`JobSnapshot` pickles (to a Ray actor, say) as its URL, options and token; its
``token`` is a short string for processes that only stage. Nothing is visible before
:meth:`JobSnapshot.commit`; a job that is never committed leaves shards that gc collects.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from ..adapters.job_state import stage_state
from ..engine import PackOptions, Repository, SnapshotInfo
from ..engine.job import JobToken, StagedPart, begin_job, check_part, commit_job
from ..engine.job_read import job_parts, load_job
from ..errors import JobError
from ..format.job import validate_part_name
from ..format.manifest import SnapshotId
from .api import RepoLike, open_repo

log = logging.getLogger(__name__)


class JobSnapshot:
    """One job snapshot being assembled: begun, parts added, then committed (or aborted).

    Create with :func:`begin`. ``add`` takes a :class:`~tqsnap.engine.job.StagedPart` made
    elsewhere (a DCP coordinator rank, :func:`tqsnap.tq.stage`) or any nested state, which
    it stages itself. ``commit`` writes one manifest of kind ``job`` naming every part.
    """

    def __init__(
        self,
        url: RepoLike,
        token: JobToken,
        *,
        storage_options: dict[str, Any] | None = None,
        options: PackOptions | None = None,
    ) -> None:
        self.url = url
        self._token = token
        self.storage_options = dict(storage_options or {})
        self.options = options
        self._parts: dict[str, StagedPart] = {}
        self._repo: Repository | None = url if isinstance(url, Repository) else None
        self.state = "open"
        #: The committed snapshot, once :meth:`commit` returned.
        self.info: SnapshotInfo | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if isinstance(self.url, str):
            state["_repo"] = None  # connections do not pickle; the receiver reopens the URL
        return state

    def __repr__(self) -> str:
        return f"JobSnapshot({self.stream!r}, job={self.job_id}, parts={sorted(self._parts)}, {self.state})"

    # --- identity ----------------------------------------------------------------------------

    @property
    def token(self) -> str:
        """A short string naming this job, for ``tqsnap.dcp.Writer(stage=...)`` on any process."""
        return self._token.encode()

    @property
    def job_id(self) -> str:
        return self._token.job_id

    @property
    def stream(self) -> str:
        return self._token.stream

    @property
    def parent(self) -> SnapshotId | None:
        """The snapshot the parts deduplicate against (the stream's latest at :func:`begin`)."""
        return self._token.parent

    @property
    def parts(self) -> Mapping[str, StagedPart]:
        """The parts added so far, by name."""
        return dict(self._parts)

    def repository(self) -> Repository:
        if self._repo is None:
            self._repo = open_repo(self.url, create=True, storage_options=self.storage_options)
        return self._repo

    # --- assembling --------------------------------------------------------------------------

    def add(self, name: str, part: StagedPart | Any, *, allow_pickle: bool = False) -> StagedPart:
        """Add part ``name``: a staged part, or a state (dict of tensors, numbers, ...) staged now."""
        self._check_open(f"add part {name!r}")
        validate_part_name(name)
        if name in self._parts:
            raise JobError(f"job {self.job_id} already has a part {name!r}; each part is added once")
        if isinstance(part, StagedPart):
            check_part(self._token, name, part)
            staged = part
        else:
            staged = stage_state(
                self.repository(), self._token, name, part, allow_pickle=allow_pickle, options=self.options
            )
        self._parts[name] = staged
        return staged

    def stage(self, name: str, state: Any, *, allow_pickle: bool = False) -> StagedPart:
        """Stage a state as part ``name`` without adding it (to add later, or from another process)."""
        self._check_open(f"stage part {name!r}")
        return stage_state(self.repository(), self._token, name, state, allow_pickle=allow_pickle, options=self.options)

    def commit(self, *, metadata: dict[str, Any] | None = None) -> SnapshotInfo:
        """Commit every added part as ONE snapshot; raises with nothing visible on failure.

        Past the writer deadline (the repository's ``max_write_duration`` after the first part
        began staging) it raises :class:`~tqsnap.errors.JobDeadlineExceededError`.
        """
        self._check_open("commit")
        info = commit_job(self.repository(), self._token, self._parts, metadata=metadata)
        self.state, self.info = "committed", info
        return info

    def abort(self) -> None:
        """Give the job up: nothing is committed; its staged shards are gc's after the grace period."""
        if self.state == "open":
            log.info("job %s of %s aborted with parts %s", self.job_id, self.stream, sorted(self._parts))
            self.state = "aborted"

    def _check_open(self, what: str) -> None:
        if self.state != "open":
            raise JobError(f"cannot {what}: job {self.job_id} of stream {self.stream!r} is already {self.state}")


def begin(
    url: RepoLike,
    stream: str = "default",
    *,
    storage_options: dict[str, Any] | None = None,
    parent: SnapshotId | str | None = "latest",
    options: PackOptions | None = None,
) -> JobSnapshot:
    """Begin a job snapshot of ``stream`` (creating the repository with defaults if needed)."""
    repo = open_repo(url, create=True, storage_options=storage_options)
    token = begin_job(repo, stream, parent)
    target: RepoLike = url if isinstance(url, str) else repo
    return JobSnapshot(target, token, storage_options=storage_options, options=options)


def from_token(
    url: RepoLike, token: str, *, storage_options: dict[str, Any] | None = None
) -> JobSnapshot:
    """A handle on a begun job in another process, for staging parts there (``stage``)."""
    return JobSnapshot(url, JobToken.decode(token), storage_options=storage_options)


def parts(
    url: RepoLike,
    stream: str = "default",
    snapshot: str | int = "latest",
    *,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, str]:
    """Part name -> part kind of a job snapshot."""
    return job_parts(open_repo(url, storage_options=storage_options), stream, snapshot)


def resolve(
    url: RepoLike,
    stream: str = "default",
    snapshot: str | int = "latest",
    *,
    storage_options: dict[str, Any] | None = None,
) -> int:
    """The seq ``snapshot`` names now: pin it so every part of one restore comes from one job."""
    manifest, _ = load_job(open_repo(url, storage_options=storage_options), stream, snapshot)
    return manifest.seq


def restore(
    url: RepoLike,
    stream: str = "default",
    snapshot: str | int = "latest",
    *,
    dcp_states: Mapping[str, Any] | None = None,
    queue: bool = True,
    force: bool = False,
    allow_pickle: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Restore every part of one job snapshot in this process; returns part name -> result.

    The snapshot is pinned to one seq first, so every part comes from the same job. A
    ``state_dict`` part returns its state. A ``dcp`` part is loaded in place into
    ``dcp_states[name]`` when given (one process; on many ranks, pass the returned ``"seq"`` to
    ``tqsnap.dcp.Reader(..., snapshot=seq, part=name)`` on each rank instead) and is left out
    otherwise. A ``transferqueue`` part is restored into the attached TransferQueue when
    ``queue`` (any unit count; ``force`` replaces what it holds). ``result["seq"]`` is the seq.
    """
    repo = open_repo(url, storage_options=storage_options)
    manifest, header = load_job(repo, stream, snapshot)
    if header is None:
        raise JobError(f"snapshot {manifest.id} is a {manifest.kind!r} snapshot, not a job; load it with its own API")
    seq = manifest.seq
    out: dict[str, Any] = {"seq": seq}
    for name, part in sorted(header.parts.items()):
        if part.kind == "state_dict":
            from ..adapters.state_dict import load_state

            out[name] = load_state(repo, stream=stream, snapshot=seq, allow_pickle=allow_pickle, part=name)
        elif part.kind == "dcp" and dcp_states is not None and name in dcp_states:
            import torch.distributed.checkpoint as dcp

            from ..adapters.dcp import Reader

            reader = Reader(repo, stream, seq, part=name, allow_pickle=allow_pickle)
            dcp.load(dcp_states[name], storage_reader=reader)
            out[name] = dcp_states[name]
        elif part.kind == "transferqueue" and queue:
            from .tq import restore as restore_queue

            out[name] = restore_queue(
                repo, stream=stream, snapshot=seq, part=name, force=force, allow_pickle=allow_pickle
            )
    return out


__all__ = ["JobSnapshot", "StagedPart", "begin", "from_token", "parts", "resolve", "restore"]
