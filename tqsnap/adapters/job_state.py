"""Stage a nested state (the loop state of a training job) as a ``state_dict`` part of a job.

The same encoding as :func:`~tqsnap.adapters.state_dict.save_state` (a JSON tree in the header,
tensors and bytes as items), uploaded by a :class:`~tqsnap.engine.job.PartStager` instead of
committed, so ``tqsnap.load(url, stream=..., part="loop")`` reads it back like a plain save.

An asynchronous job snapshot splits this in two: :func:`capture_state` encodes the tree and
copies every tensor's and buffer's bytes at the step boundary (so the loop may change its state
right after), and :func:`stage_captured` uploads that copy later, on another thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..engine import PackOptions, Repository
from ..engine.job import JobToken, PartStager, StagedPart
from .state_dict import KIND, TREE_VERSION, _TreeEncoder


@dataclass
class CapturedState:
    """A state's JSON tree and its items' bytes, copied: independent of the live state."""

    tree: Any
    items: list[tuple[str, Any, dict[str, Any]]]
    #: What views in ``items`` point into, when they are views (``copy=False``).
    keepalive: list[Any] | None = None

    @property
    def nbytes(self) -> int:
        return sum(len(data) for _, data, _ in self.items)


def capture_state(state: Any, *, allow_pickle: bool = False, copy: bool = True) -> CapturedState:
    """Encode ``state`` and copy its bytes now; raises (before anything is uploaded) on what it cannot store.

    ``copy=False`` keeps views of the live tensors: for a stage that uploads right away.
    """
    encoder = _TreeEncoder(allow_pickle)
    tree = encoder.encode(state, [])
    if not copy:
        return CapturedState(tree, encoder.items, encoder.keepalive)
    items = [(path, bytes(data), spec) for path, data, spec in encoder.items]  # bytes(): the copy
    return CapturedState(tree, items)


def stage_captured(
    repo: Repository,
    token: JobToken | str,
    part: str,
    captured: CapturedState,
    *,
    options: PackOptions | None = None,
) -> StagedPart:
    """Upload a captured state's changed shards as part ``part`` of the job; nothing is committed."""
    stager = PartStager.begin(repo, token, part, KIND, options=options)
    packer = stager.packer()
    try:
        for path, data, spec in sorted(captured.items, key=lambda it: it[0]):
            packer.add(
                path, data, kind=spec["kind"], dtype=spec.get("dtype"), shape=spec.get("shape"), meta=spec.get("meta")
            )
        stager.add_result(packer.finish())
    except BaseException:
        packer.abort()
        raise
    return stager.finish({"tree_version": TREE_VERSION, "tree": captured.tree})


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
    captured = capture_state(state, allow_pickle=allow_pickle, copy=False)
    return stage_captured(repo, token, part, captured, options=options)
