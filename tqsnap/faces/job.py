"""``tqsnap.job``: one atomic snapshot of a whole training job (docs/job.md).

On the driver::

    job = tqsnap.job.begin(url, stream="run-42")
    # every trainer rank: dcp.save(state, storage_writer=tqsnap.dcp.Writer(url, stream="run-42",
    #                                   stage=job.token, part="trainer"))
    job.add("trainer", staged)                            # the coordinator rank's ``writer.staged``
    job.add("queue", tqsnap.tq.stage(job, part="queue"))  # a live TransferQueue
    job.add("loop", {"step": 1000, "rng": rng_state})     # any state_dict, staged here
    info = job.commit(metadata={"step": 1000})            # ONE manifest, one conditional put

Asynchronously, the loop waits only for the captures (docs/job.md, "Asynchronous")::

    fut = dcp.async_save(state, storage_writer=writer)    # the trainer's staging copy
    job.add_async("trainer", fut, writer=writer)
    job.add_async("queue", tqsnap.tq.stage_async(job))    # the queue frozen, uploaded later
    job.add_async("loop", {"step": 1000, "rng": rng})     # copied now, uploaded later
    done = job.commit_async(metadata={"step": 1000})      # a Future of the SnapshotInfo

A :class:`JobSnapshot` pickles (to a Ray actor, say) as its URL, options and token; its
``token`` is a short string for processes that only stage. Nothing is visible before
:meth:`JobSnapshot.commit`; a job that is never committed leaves shards that gc collects.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

from ..adapters.job_state import capture_state, stage_captured, stage_state
from ..engine import PackOptions, Repository, SnapshotInfo
from ..engine.job import JobToken, StagedPart, begin_job, check_part, commit_job
from ..engine.job_read import PinnedJobRepository, job_parts, load_job
from ..errors import JobError, JobPartError
from ..format.job import validate_part_name
from ..format.manifest import SnapshotId
from .api import RepoLike, open_repo
from .background import PendingPart, in_background

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
        self._pending: dict[str, Future[StagedPart]] = {}
        #: add_async parts whose upload starts with the commit: name -> (start, what was added).
        self._deferred: dict[str, tuple[Callable[[], StagedPart], Any]] = {}
        self._repo: Repository | None = url if isinstance(url, Repository) else None
        self.state = "open"
        #: The committed snapshot, once :meth:`commit` returned.
        self.info: SnapshotInfo | None = None

    def __getstate__(self) -> dict[str, Any]:
        if self._pending:
            raise JobError(
                f"job {self.job_id} has parts still staging in the background ({sorted(self._pending)}); "
                "call wait_parts() before sending the job to another process"
            )
        state = self.__dict__.copy()
        if isinstance(self.url, str):
            state["_repo"] = None  # connections do not pickle; the receiver reopens the URL
        return state

    def __repr__(self) -> str:
        pending = f", pending={sorted(self._pending)}" if self._pending else ""
        return f"JobSnapshot({self.stream!r}, job={self.job_id}, parts={sorted(self._parts)}{pending}, {self.state})"

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
        """The parts staged so far, by name (a part added with :meth:`add_async` once it is staged)."""
        return dict(self._parts)

    @property
    def pending(self) -> Mapping[str, Future[StagedPart]]:
        """The parts still staging in the background, by name."""
        return dict(self._pending)

    def repository(self) -> Repository:
        if self._repo is None:
            self._repo = open_repo(self.url, create=True, storage_options=self.storage_options)
        return self._repo

    # --- assembling --------------------------------------------------------------------------

    def add(self, name: str, part: StagedPart | Any, *, allow_pickle: bool = False) -> StagedPart:
        """Add part ``name``: a staged part, or a state (dict of tensors, numbers, ...) staged now."""
        self._check_open(f"add part {name!r}")
        self._check_new(name)
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

    def add_async(
        self, name: str, part: Future[Any] | Any, *, writer: Any = None, allow_pickle: bool = False
    ) -> Future[StagedPart]:
        """Add part ``name``, staged in the background: the loop may change its state once this returns.

        ``part`` is one of:

        - a future of a :class:`StagedPart`: :func:`tqsnap.tq.stage_async`, or any stage run
          elsewhere (a Ray call wrapped in a future, a thread);
        - the future ``dcp.async_save`` returned, with ``writer=`` the ``tqsnap.dcp.Writer`` it
          was given (built with ``stage=job.token``; the coordinator rank's): the part is
          ``writer.staged`` once the save is done. ``dcp.async_save`` made the staging copy
          before it returned;
        - a :class:`~tqsnap.tq.QueueCapture` (``tqsnap.tq.capture(job)``): the queue as captured;
        - a state (dict of tensors, numbers, ...): it is encoded and its bytes copied now.

        A capture's and a state's uploads (and the wait for a DCP save, whose upload runs on
        DCP's thread) start with :meth:`commit_async` (or :meth:`wait_parts`), on threads of
        their own, so the step boundary is not slowed by uploads running beside it.
        Returns the part's future. A part that fails makes :meth:`commit` and
        :meth:`commit_async` raise :class:`~tqsnap.errors.JobPartError` with nothing committed.
        """
        self._check_open(f"add part {name!r}")
        self._check_new(name)
        start: Callable[[], StagedPart] | None = None
        if writer is not None:
            if not isinstance(part, Future) and not hasattr(part, "upload_completion"):
                raise JobError(f"part {name!r}: writer= goes with the future dcp.async_save returned")
            start = functools.partial(_dcp_staged, name, part, writer)
        elif isinstance(part, Future):
            self._pending[name] = part
            return part
        elif isinstance(part, StagedPart):
            done: Future[StagedPart] = Future()
            done.set_result(part)
            self._pending[name] = done
            return done
        elif callable(getattr(part, "upload", None)):  # a tqsnap.tq.capture(...)
            start = part.upload
        else:
            captured = capture_state(part, allow_pickle=allow_pickle)  # the copy, at the step boundary
            start = functools.partial(stage_captured, self.repository(), self._token, name, captured, options=self.options)
        # Uploads start with the commit (commit_async, wait_parts), not here: until then the
        # loop's own work at the step boundary has the interpreter to itself.
        placeholder: Future[StagedPart] = PendingPart(name)
        self._deferred[name] = (start, part)
        self._pending[name] = placeholder
        return placeholder

    def _start_deferred(self) -> None:
        """Start the uploads :meth:`add_async` deferred, each on a thread of its own."""
        deferred, self._deferred = self._deferred, {}
        for name, (start, _) in deferred.items():
            in_background(start, self._pending[name], name=f"tqsnap-job-{name}")

    def wait_parts(self, timeout: float | None = None) -> Mapping[str, StagedPart]:
        """Wait until every part added with :meth:`add_async` is staged; returns all parts.

        If one failed, the job is ``failed`` and this raises
        :class:`~tqsnap.errors.JobPartError` (after every part ended): nothing can be committed.
        """
        self._start_deferred()
        failures: list[tuple[str, BaseException]] = []
        for name, fut in sorted(self._pending.items()):
            try:
                staged = fut.result(timeout)
                check_part(self._token, name, staged)
            except TimeoutError:
                raise
            except BaseException as exc:  # noqa: BLE001 - reported below, once every part ended
                failures.append((name, exc))
                continue
            self._parts[name] = staged
            del self._pending[name]
        if failures:
            self.state = "failed"
            self._pending.clear()
            name, exc = failures[0]
            others = f" (and {', '.join(repr(n) for n, _ in failures[1:])})" if len(failures) > 1 else ""
            raise JobPartError(
                f"part {name!r}{others} of job {self.job_id} of stream {self.stream!r} failed while staging: "
                f"{type(exc).__name__}: {exc}. Nothing was committed; the shards it uploaded are collected "
                "by gc after the grace period. Take the job snapshot again"
            ) from exc
        return dict(self._parts)

    def commit(self, *, metadata: dict[str, Any] | None = None) -> SnapshotInfo:
        """Commit every added part as ONE snapshot; raises with nothing visible on failure.

        Waits for the parts still staging in the background first (:meth:`wait_parts`). Past
        the writer deadline (the repository's ``max_write_duration`` after the first part
        began staging) it raises :class:`~tqsnap.errors.JobDeadlineExceededError`.
        """
        self._check_open("commit")
        return self._commit(metadata)

    def commit_async(self, *, metadata: dict[str, Any] | None = None) -> Future[SnapshotInfo]:
        """Commit in the background once every part is staged: a future of the :class:`SnapshotInfo`.

        The future raises :class:`~tqsnap.errors.JobPartError` if a part failed and
        :class:`~tqsnap.errors.JobDeadlineExceededError` past the deadline; then nothing is
        visible. No part can be added once this is called.
        """
        self._check_open("commit")
        self.state = "committing"
        # One thread here (the step boundary pays for one start); it starts the uploads.
        return in_background(lambda: self._commit(metadata, background=True), name=f"tqsnap-job-commit-{self.job_id[:8]}")

    def _commit(self, metadata: dict[str, Any] | None, *, background: bool = False) -> SnapshotInfo:
        try:
            self.wait_parts()  # a failed part leaves the job "failed"
            info = commit_job(self.repository(), self._token, self._parts, metadata=metadata)
        except BaseException:
            if background:
                self.state = "failed"  # a commit in the background is the job's last step
            raise
        self.state, self.info = "committed", info
        return info

    def abort(self) -> None:
        """Give the job up: nothing is committed; its staged shards are gc's after the grace period."""
        if self.state == "open":
            for _, added in self._deferred.values():
                if callable(getattr(added, "discard", None)):
                    added.discard()  # a queue capture: its actors forget the copies
            self._deferred.clear()
            log.info("job %s of %s aborted with parts %s", self.job_id, self.stream, sorted(self._parts))
            self.state = "aborted"

    def _check_new(self, name: str) -> None:
        validate_part_name(name)
        if name in self._parts or name in self._pending:
            raise JobError(f"job {self.job_id} already has a part {name!r}; each part is added once")

    def _check_open(self, what: str) -> None:
        if self.state != "open":
            raise JobError(f"cannot {what}: job {self.job_id} of stream {self.stream!r} is already {self.state}")


def _dcp_staged(name: str, saving: Any, writer: Any) -> StagedPart:
    """The part a ``dcp.async_save`` staged, once its upload is done (its writer's ``staged``)."""
    done = getattr(saving, "upload_completion", saving)  # AsyncSaveResponse, or a plain future
    done.result()
    staged = getattr(writer, "staged", None)
    if staged is None:
        raise JobError(
            f"part {name!r}: the writer holds no staged part; pass the tqsnap.dcp.Writer built with "
            "stage=job.token of the DCP coordinator rank (rank 0)"
        )
    return staged


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
    The parts restore at once, on threads of their own; if one fails, its error is raised once
    every part ended (the queue restore changes nothing unless it succeeds).
    """
    repo = open_repo(url, storage_options=storage_options)
    manifest, header = load_job(repo, stream, snapshot)
    if header is None:
        raise JobError(f"snapshot {manifest.id} is a {manifest.kind!r} snapshot, not a job; load it with its own API")
    seq = manifest.seq
    repo = PinnedJobRepository(repo, manifest)  # every part reads the manifest read here
    loaders: dict[str, Any] = {}
    for name, part in sorted(header.parts.items()):
        if part.kind == "state_dict":
            loaders[name] = functools.partial(_load_state, repo, stream, seq, name, allow_pickle)
        elif part.kind == "dcp" and dcp_states is not None and name in dcp_states:
            loaders[name] = functools.partial(_load_dcp, repo, stream, seq, name, dcp_states[name], allow_pickle)
        elif part.kind == "transferqueue" and queue:
            loaders[name] = functools.partial(_load_queue, repo, stream, seq, name, force, allow_pickle)
    out: dict[str, Any] = {"seq": seq}
    out.update(_run_all(loaders))
    return out


def _run_all(loaders: Mapping[str, Any]) -> dict[str, Any]:
    """Run the part loaders at once (each waits on its own reads); raise the first failure after all end.

    The parts are independent (their own items, shards and targets), so the restore takes as
    long as its slowest part rather than the sum of them.
    """
    if len(loaders) <= 1:
        return {name: fn() for name, fn in loaders.items()}
    with ThreadPoolExecutor(max_workers=len(loaders), thread_name_prefix="tqsnap-job-restore") as pool:
        futures = {name: pool.submit(fn) for name, fn in loaders.items()}
        wait(futures.values())
    for name, fut in futures.items():
        exc = fut.exception()
        if exc is not None:
            log.error("restoring part %r failed: %s", name, exc)
            raise exc
    return {name: fut.result() for name, fut in futures.items()}


def _load_state(repo: Repository, stream: str, seq: int, name: str, allow_pickle: bool) -> Any:
    from ..adapters.state_dict import load_state

    return load_state(repo, stream=stream, snapshot=seq, allow_pickle=allow_pickle, part=name)


def _load_dcp(repo: Repository, stream: str, seq: int, name: str, state: Any, allow_pickle: bool) -> Any:
    import torch.distributed.checkpoint as dcp

    from ..adapters.dcp import Reader

    dcp.load(state, storage_reader=Reader(repo, stream, seq, part=name, allow_pickle=allow_pickle))
    return state


def _load_queue(repo: Repository, stream: str, seq: int, name: str, force: bool, allow_pickle: bool) -> Any:
    from .tq import restore as restore_queue

    return restore_queue(repo, stream=stream, snapshot=seq, part=name, force=force, allow_pickle=allow_pickle)


__all__ = ["JobSnapshot", "StagedPart", "begin", "from_token", "parts", "resolve", "restore"]
