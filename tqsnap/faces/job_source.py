"""A job snapshot as a :class:`~tqsnap.faces.scheduler.Snapshotter` source: periodic whole-job snapshots.

``Snapshotter(JobSource({...}), url, stream="run-42", every="10m")`` takes, on its schedule,
one job snapshot whose parts are staged from what the mapping names and committed together:

- ``"transferqueue"`` (or a ``TransferQueueSystem``, or the ``transfer_queue`` module): the
  attached TransferQueue, staged where it lives (:func:`tqsnap.tq.stage`);
- :class:`PartStage` ``(fn)``: ``fn(job)`` stages the part itself and returns its
  ``StagedPart``: a DCP save with ``tqsnap.dcp.Writer(stage=job.token, part=name)``, say;
- any other callable: it returns a state (the loop state) staged as a ``state_dict`` part.

A scheduled job snapshot runs on the Snapshotter's thread, beside training: it suits parts
that are consistent on their own (a queue, a state the callable copies under the loop's lock).
A snapshot that must sit exactly on a step boundary belongs in the loop (docs/job.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..engine import PackOptions, Repository
from ..engine.job import StagedPart, begin_job
from ..format.job import validate_part_name
from .job import JobSnapshot
from .sources import SourceSnapshot


@dataclass(frozen=True)
class PartStage:
    """A part that stages itself: ``fn(job)`` returns the part's :class:`StagedPart`."""

    fn: Callable[[JobSnapshot], StagedPart]


def _is_queue(spec: Any) -> bool:
    if isinstance(spec, str):
        return spec == "transferqueue"
    if getattr(spec, "__name__", None) == "transfer_queue":
        return True
    return type(spec).__name__ == "TransferQueueSystem"


class JobSource:
    """What one scheduled job snapshot stages: part name -> where the part comes from."""

    def __init__(self, parts: Mapping[str, Any]) -> None:
        if not parts:
            raise ValueError("JobSource needs at least one part")
        for name, spec in parts.items():
            validate_part_name(name)
            if not (_is_queue(spec) or isinstance(spec, PartStage) or callable(spec)):
                raise TypeError(
                    f"part {name!r}: pass 'transferqueue', a PartStage(fn) or a callable returning a state, "
                    f"not a {type(spec).__name__}"
                )
        self.parts = dict(parts)

    def snapshot(
        self,
        repo: Repository,
        stream: str,
        *,
        metadata: dict[str, Any] | None,
        allow_pickle: bool,
        options: PackOptions | None,
    ) -> SourceSnapshot:
        job = JobSnapshot(repo, begin_job(repo, stream), options=options)
        try:
            for name, spec in sorted(self.parts.items()):
                if _is_queue(spec):
                    from .tq import stage as stage_queue

                    system = spec if type(spec).__name__ == "TransferQueueSystem" else None
                    job.add(name, stage_queue(job, part=name, allow_pickle=allow_pickle, system=system))
                elif isinstance(spec, PartStage):
                    job.add(name, spec.fn(job))
                else:
                    job.add(name, spec(), allow_pickle=allow_pickle)
            info = job.commit(metadata=metadata)
        except BaseException:
            job.abort()
            raise
        parts = {name: p.stats for name, p in job.parts.items()}
        total = {k: sum(int(s.get(k, 0)) for s in parts.values()) for k in ("new_bytes", "reused_bytes", "stored_bytes")}
        return SourceSnapshot(info, total["new_bytes"], total["reused_bytes"], total["stored_bytes"], parts)
