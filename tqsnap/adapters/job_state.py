"""Stage a nested state (the loop state of a training job) as a ``state_dict`` part of a job.

The same encoding as :func:`~tqsnap.adapters.state_dict.save_state` (a JSON tree in the header,
tensors and bytes as items), uploaded by a :class:`~tqsnap.engine.job.PartStager` instead of
committed, so ``tqsnap.load(url, stream=..., part="loop")`` reads it back like a plain save.
"""

from __future__ import annotations

from typing import Any

from ..engine import PackOptions, Repository
from ..engine.job import JobToken, PartStager, StagedPart
from .state_dict import KIND, TREE_VERSION, _TreeEncoder


def stage_state(
    repo: Repository,
    token: JobToken | str,
    part: str,
    state: Any,
    *,
    allow_pickle: bool = False,
    options: PackOptions | None = None,
) -> StagedPart:
    """Upload ``state``'s changed shards as part ``part`` of the job; nothing is committed."""
    encoder = _TreeEncoder(allow_pickle)
    tree = encoder.encode(state, [])  # raises before anything is uploaded
    stager = PartStager.begin(repo, token, part, KIND, options=options)
    packer = stager.packer()
    try:
        for path, data, spec in sorted(encoder.items, key=lambda it: it[0]):
            packer.add(
                path, data, kind=spec["kind"], dtype=spec.get("dtype"), shape=spec.get("shape"), meta=spec.get("meta")
            )
        stager.add_result(packer.finish())
    except BaseException:
        packer.abort()
        raise
    return stager.finish({"tree_version": TREE_VERSION, "tree": tree})
