"""Snapshots of a running TransferQueue: ``tqsnap.tq.snapshot`` / ``restore`` / ``Snapshotter``.

Call these from any process attached to the Ray cluster that runs TransferQueue (after
``tq.init()``). Each storage unit hashes and uploads its own data, so a snapshot moves no bulk
data through this process; restore stages every sample on the target units and verifies it
before it changes anything. See docs/transferqueue.md.

Users import it as ``tqsnap.tq`` (a re-export of this module).
"""

from __future__ import annotations

from typing import Any

from ..adapters.transferqueue import (
    DEFAULT_BLOCK_SIZE,
    TQRestoreResult,
    TQSnapshotResult,
    TransferQueueSystem,
    restore_system,
    snapshot_system,
)
from ..adapters.transferqueue.stage_capture import QueueCapture, start_capture
from ..engine import PackOptions, Repository
from ..engine.job import JobToken, StagedPart
from .api import RepoLike, open_repo
from .background import PendingPart, in_background
from .scheduler import Snapshotter


def snapshot(
    url: RepoLike,
    *,
    stream: str,
    metadata: dict[str, Any] | None = None,
    storage_options: dict[str, Any] | None = None,
    allow_pickle: bool = False,
    system: TransferQueueSystem | None = None,
    options: PackOptions | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> TQSnapshotResult:
    """Snapshot the TransferQueue this process is attached to as the next snapshot of ``stream``.

    Only blocks of samples that changed since the stream's latest snapshot are uploaded. A first
    snapshot creates the repository with default settings. ``system`` picks another
    TransferQueue than the attached one.
    """
    repo = open_repo(url, create=True, storage_options=storage_options)
    return snapshot_system(
        system or TransferQueueSystem.attached(),
        repo,
        stream,
        metadata=metadata,
        allow_pickle=allow_pickle,
        options=options,
        block_size=block_size,
    )


def restore(
    url: RepoLike,
    *,
    stream: str,
    snapshot: str | int = "latest",
    force: bool = False,
    allow_pickle: bool = False,
    storage_options: dict[str, Any] | None = None,
    system: TransferQueueSystem | None = None,
    hold_lease_s: float = 60.0,
    part: str | None = None,
) -> TQRestoreResult:
    """Restore a TransferQueue snapshot into the attached TransferQueue (any unit count).

    The target must be empty unless ``force=True``, which replaces all it holds. Everything is
    validated and staged before the target changes, so a failed restore changes nothing.
    Requests that reach the target while the restore installs wait for it (at most
    ``hold_lease_s``, should this process die mid-install) and then see the restored state.
    ``part`` restores that part of a job snapshot (``tqsnap.job``), e.g. ``"queue"``.
    """
    repo: Repository = open_repo(url, storage_options=storage_options)
    return restore_system(
        system or TransferQueueSystem.attached(),
        repo,
        stream,
        snapshot,
        force=force,
        allow_pickle=allow_pickle,
        hold_lease_s=hold_lease_s,
        part=part,
    )


def capture(
    job: Any,
    *,
    part: str = "queue",
    url: RepoLike | None = None,
    storage_options: dict[str, Any] | None = None,
    allow_pickle: bool = False,
    system: TransferQueueSystem | None = None,
    options: PackOptions | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    wait: bool = True,
) -> QueueCapture:
    """Freeze the attached TransferQueue for part ``part`` of a job; ``.upload()`` stages it later.

    The capture is all a training loop must wait for: the controller and every storage unit
    copy their state (pointers, for the units' data) and keep it, in a few milliseconds. The
    returned :class:`QueueCapture`'s ``upload()`` packs and uploads those copies, on any
    thread, and returns the :class:`StagedPart`: what the queue held at the capture, whatever
    happened to it since. ``job`` is a :class:`tqsnap.job.JobSnapshot`, or its ``token`` with ``url``.
    Pass ``system`` (``TransferQueueSystem.attached()``, kept) to skip looking the units up.
    ``wait=False`` returns as soon as the capture is sent: do other work (the trainer's staging
    copy), then call ``.wait()`` before the loop changes the queue. ``job.add_async(part, capture)``
    uploads it with the job's commit.
    """
    if isinstance(job, str | JobToken):
        if url is None:
            raise TypeError("tqsnap.tq.capture(token, ...) needs url= (a JobSnapshot carries its own)")
        repo: Repository = open_repo(url, create=True, storage_options=storage_options)
        token = JobToken.decode(job)
    else:
        repo, token = job.repository(), JobToken.decode(job.token)
    started = start_capture(
        system or TransferQueueSystem.attached(),
        repo,
        token,
        part,
        allow_pickle=allow_pickle,
        options=options,
        block_size=block_size,
    )
    return started.wait() if wait else started


def stage(
    job: Any,
    *,
    part: str = "queue",
    url: RepoLike | None = None,
    storage_options: dict[str, Any] | None = None,
    allow_pickle: bool = False,
    system: TransferQueueSystem | None = None,
    options: PackOptions | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> StagedPart:
    """Stage the attached TransferQueue as part ``part`` of a job snapshot, for ``job.add``.

    :func:`capture` then its upload, here: the same capture and per-unit upload as
    :func:`snapshot`, deduplicated against the same part of the job's parent, but nothing is
    committed: ``job.commit()`` commits every part at once. ``job`` is a
    :class:`tqsnap.job.JobSnapshot`, or its ``token`` with ``url``.
    """
    return capture(
        job,
        part=part,
        url=url,
        storage_options=storage_options,
        allow_pickle=allow_pickle,
        system=system,
        options=options,
        block_size=block_size,
    ).upload()


def stage_async(
    job: Any,
    *,
    part: str = "queue",
    url: RepoLike | None = None,
    storage_options: dict[str, Any] | None = None,
    allow_pickle: bool = False,
    system: TransferQueueSystem | None = None,
    options: PackOptions | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    wait_capture: bool = True,
) -> PendingPart:
    """Capture now, upload in the background: a future of the :class:`StagedPart`, for ``job.add_async``.

    Returns once the queue is captured (:func:`capture`; its errors are raised here). With
    ``wait_capture=False`` it returns at once and the capture runs in the background too:
    wait for ``pending.captured.result()`` before the loop changes the queue (overlap it
    with the trainer's own staging copy, say).
    """
    pending = PendingPart(part)

    started = capture(
        job,
        part=part,
        url=url,
        storage_options=storage_options,
        allow_pickle=allow_pickle,
        system=system,
        options=options,
        block_size=block_size,
        wait=False,
    )

    def run() -> StagedPart:
        try:
            cap = started.wait()
        except BaseException as exc:
            pending.captured.set_exception(exc)
            raise
        pending.captured.set_result(cap.capture_s)
        return cap.upload()

    in_background(run, pending, name=f"tqsnap-stage-{part}")
    if wait_capture:
        pending.captured.result()
    return pending


__all__ = [
    "PendingPart",
    "QueueCapture",
    "Snapshotter",
    "TQRestoreResult",
    "TQSnapshotResult",
    "TransferQueueSystem",
    "restore",
    "capture",
    "snapshot",
    "stage",
    "stage_async",
]
