"""Stage a running TransferQueue as one part of a job snapshot, in two steps: capture, upload.

:func:`capture_system` is what the training loop waits for: the controller copies its state
between two requests and keeps the copy; then every storage unit makes its pointer copy of the
data it holds and keeps it (:mod:`.held`). Two short round trips; nothing is encoded, hashed or
uploaded. :meth:`QueueCapture.upload` does the rest, on any thread, while training goes on:
the part's clock and parent check (rules J1 and J2, :class:`~tqsnap.engine.job.PartStager`),
the controller's encoding, the plan, each unit packing and uploading its own copy, the
reconcile and the controller items. The snapshot holds the queue as it was at the capture:
puts, gets and clears after it are not in the part (docs/transferqueue.md, "Consistency").

The order is the one of :mod:`.snapshot`: the controller first, then the units, so a put
the controller saw complete before the capture is in the units' copies, whole.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ...engine import PackOptions, Repository
from ...engine.job import JobToken, PartStager, StagedPart
from ...errors import JobError, TqsnapError
from ...format.job import validate_part_name
from .controller_capture import capture_held, drop_held, encode_held
from .layout import DEFAULT_BLOCK_SIZE, KIND
from .snapshot import TQ_PACK_OPTIONS, _check_args, assemble, unit_jobs
from .system import TransferQueueSystem, _ray
from .unit_upload import UnitResult, capture_unit, drop_unit_capture, upload_held

log = logging.getLogger(__name__)


@dataclass
class QueueCapture:
    """A TransferQueue frozen for a job part: copies held in its actors, uploaded by :meth:`upload` once."""

    system: TransferQueueSystem
    repo: Repository
    token: JobToken
    part: str
    capture_id: str
    controller_stall_s: float
    unit_stall_s: list[float]
    #: Seconds the caller waited for the capture (the round trips and the copies).
    capture_s: float
    options: PackOptions
    allow_pickle: bool
    block_size: int
    _state: str = field(default="captured", repr=False)
    _refs: list[Any] = field(default_factory=list, repr=False)
    _t0: float = field(default=0.0, repr=False)
    _sender: threading.Thread | None = field(default=None, repr=False)

    def wait(self) -> QueueCapture:
        """Wait until the controller and every unit hold their copies (raises if one failed)."""
        if self._state != "capturing":
            return self
        if self._sender is not None:
            self._sender.join()
            self._sender = None
        try:
            failed = [r for r in self._refs if isinstance(r, BaseException)]
            if failed:
                raise failed[0]
            if len(self._refs) != 1 + self.system.n_units:
                raise TqsnapError(f"capture {self.capture_id} of part {self.part!r} was not sent to the queue's actors")
            stalls = self.system.collect(self._refs)
        except BaseException:
            self._state = "failed"
            self.discard()
            raise
        self.controller_stall_s, self.unit_stall_s = stalls[0], list(stalls[1:])
        self.capture_s = time.monotonic() - self._t0
        self._state, self._refs = "captured", []
        return self

    def upload(self) -> StagedPart:
        """Pack and upload the captured copies; the part's description, nothing committed."""
        self.wait()
        if self._state != "captured":
            raise JobError(f"capture {self.capture_id} of part {self.part!r} was already {self._state}")
        self._state = "uploading"
        t0 = time.monotonic()
        try:
            stager = PartStager.begin(self.repo, self.token, self.part, KIND, options=self.options)
            captured = self.system.call_controller(encode_held, self.capture_id, self.allow_pickle, self.controller_stall_s)
            reuse = _ray().put(stager.reuse_index)
            jobs = unit_jobs(
                self.repo,
                captured,
                self.system.n_units,
                options=self.options,
                allow_pickle=self.allow_pickle,
                block_size=self.block_size,
            )
            results: list[UnitResult] = self.system.call_units(
                upload_held, [(self.capture_id, job, reuse) for job in jobs]
            )
            taken = assemble(self.system, stager, captured, results, block_size=self.block_size, t_capture=t0)
        except BaseException:
            self._state = "failed"
            self.discard()
            raise
        self._state = "uploaded"
        stats = taken.stats | {"tq_capture_s": round(self.capture_s, 6)}
        staged = stager.finish(taken.extra, stats=stats)
        staged.stage_s += self.capture_s  # the part's time includes its capture
        return staged

    def discard(self) -> None:
        """Let the actors forget copies an upload did not take (a failed or abandoned stage)."""
        try:
            self.system.call_controller(drop_held, self.capture_id)
            self.system.call_units(drop_unit_capture, [(self.capture_id,)] * self.system.n_units)
        except Exception as exc:  # noqa: BLE001 - best effort: an actor that died holds nothing
            log.debug("could not drop capture %s: %s", self.capture_id, exc)
        if self._state == "captured":
            self._state = "discarded"


def start_capture(
    system: TransferQueueSystem,
    repo: Repository,
    token: JobToken | str,
    part: str = "queue",
    *,
    allow_pickle: bool = False,
    options: PackOptions | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> QueueCapture:
    """Start freezing ``system`` for part ``part``; :meth:`QueueCapture.wait` for the copies.

    Returns at once: the controller's capture and every unit's are sent together, the units'
    with the controller's result as an argument, so Ray runs them only after the controller's
    copy is taken (no round trip through this process between the two). The caller can do
    other work meanwhile (the trainer's own staging copy) and wait afterwards.
    """
    _check_args(repo, block_size)
    token = JobToken.decode(token)
    validate_part_name(part)
    t0 = time.monotonic()
    capture_id = f"{token.job_id}.{part}.{secrets.token_hex(4)}"
    refs: list[Any] = []

    def send() -> None:
        try:
            controller_ref = system.start_controller(capture_held, capture_id)
            refs.append(controller_ref)
            refs.extend(system.start_units(capture_unit, [(capture_id, controller_ref)] * system.n_units))
        except BaseException as exc:  # noqa: BLE001 - raised by wait(), in the caller's thread
            refs.append(exc)

    # Submitting a Ray call costs a millisecond or more on a busy host; the calls go out from a
    # thread so that the caller's own staging copy runs meanwhile. wait() joins it first.
    sender = threading.Thread(target=send, name=f"tqsnap-capture-{part}")
    sender.start()
    return QueueCapture(
        system,
        repo,
        token,
        part,
        capture_id,
        0.0,
        [],
        0.0,
        options or TQ_PACK_OPTIONS,
        allow_pickle,
        block_size,
        _state="capturing",
        _refs=refs,
        _t0=t0,
        _sender=sender,
    )


def capture_system(
    system: TransferQueueSystem,
    repo: Repository,
    token: JobToken | str,
    part: str = "queue",
    *,
    allow_pickle: bool = False,
    options: PackOptions | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> QueueCapture:
    """Freeze ``system`` for part ``part`` of a job: the controller's copy, then every unit's."""
    return start_capture(
        system, repo, token, part, allow_pickle=allow_pickle, options=options, block_size=block_size
    ).wait()


def stage_system(
    system: TransferQueueSystem,
    repo: Repository,
    token: JobToken | str,
    part: str = "queue",
    *,
    allow_pickle: bool = False,
    options: PackOptions | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> StagedPart:
    """Stage ``system`` as part ``part`` of a job snapshot: capture and upload, here, no commit.

    The part deduplicates against the same part of the job's parent. Its stats carry the
    controller and unit stalls (``tq_controller_stall_s``, ``tq_unit_stall_s``).
    """
    return capture_system(
        system, repo, token, part, allow_pickle=allow_pickle, options=options, block_size=block_size
    ).upload()
