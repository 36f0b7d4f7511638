"""``tqsnap.job``: one atomic snapshot of a whole training job (model, queue, loop state).

The code lives in :mod:`tqsnap.faces.job`; this module keeps the short import path. See docs/job.md.
"""

from .faces.job import JobSnapshot, StagedPart, begin, from_token, parts, resolve, restore
from .faces.job_source import JobSource, PartStage

__all__ = ["JobSnapshot", "JobSource", "PartStage", "StagedPart", "begin", "from_token", "parts", "resolve", "restore"]
