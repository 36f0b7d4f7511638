"""What a :class:`~tqsnap.faces.scheduler.Snapshotter` snapshots: a source with one method.

A source is any object with ``snapshot(repo, stream, *, metadata, allow_pickle, options)``
that writes the next snapshot of ``stream`` and returns a :class:`SourceSnapshot`. Two come
with tqsnap: :class:`StateSource` (whatever a callable returns, saved as a ``state_dict``)
and :class:`TransferQueueSource` (a running TransferQueue). A new kind of state is snapshotted
periodically by writing a source, without touching the scheduler.

Importing this module pulls in neither Ray nor torch: each source imports its adapter when
it first takes a snapshot.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from ..engine import PackOptions, Repository, SnapshotInfo


@dataclass
class SourceSnapshot:
    """What a source reports about the snapshot it just committed."""

    info: SnapshotInfo
    new_bytes: int
    reused_bytes: int
    stored_bytes: int
    detail: Any = None  # the adapter's own result (a TQSnapshotResult for TransferQueue)


@runtime_checkable
class SnapshotSource(Protocol):
    """Anything the scheduler can snapshot."""

    def snapshot(
        self,
        repo: Repository,
        stream: str,
        *,
        metadata: dict[str, Any] | None,
        allow_pickle: bool,
        options: PackOptions | None,
    ) -> SourceSnapshot:
        """Commit the next snapshot of ``stream`` in ``repo``; raise on failure."""
        ...


class StateSource:
    """The state a callable returns (tensors, bytes, JSON values), saved as a ``state_dict``."""

    def __init__(self, state: Callable[[], Any]) -> None:
        self.state = state

    def snapshot(
        self,
        repo: Repository,
        stream: str,
        *,
        metadata: dict[str, Any] | None,
        allow_pickle: bool,
        options: PackOptions | None,
    ) -> SourceSnapshot:
        from ..adapters.state_dict import save_state

        info = save_state(
            repo, self.state(), stream=stream, metadata=metadata, allow_pickle=allow_pickle, options=options
        )
        s = info.stats
        return SourceSnapshot(
            info, int(s.get("new_bytes", 0)), int(s.get("reused_bytes", 0)), int(s.get("stored_bytes", 0))
        )


class TransferQueueSource:
    """A running TransferQueue: the given ``system``, or the one this process is attached to.

    The attached one is looked up on first use and again after a failed snapshot, since
    TransferQueue may have been restarted (its actors are then new).
    """

    def __init__(self, system: Any = None) -> None:
        self._given = system
        self._attached: Any = None

    def snapshot(
        self,
        repo: Repository,
        stream: str,
        *,
        metadata: dict[str, Any] | None,
        allow_pickle: bool,
        options: PackOptions | None,
    ) -> SourceSnapshot:
        from ..adapters.transferqueue import TransferQueueSystem, snapshot_system

        system = self._given
        if system is None:
            system = self._attached = self._attached or TransferQueueSystem.attached()
        try:
            r = snapshot_system(
                system, repo, stream, metadata=metadata, allow_pickle=allow_pickle, options=options
            )
        except BaseException:
            self._attached = None
            raise
        return SourceSnapshot(r.info, r.new_bytes, r.reused_bytes, r.stored_bytes, r)


def as_source(source: Any) -> SnapshotSource:
    """The source for what a user passed to the Snapshotter.

    A :class:`SnapshotSource` is used as is. A TransferQueue is named by the
    ``transfer_queue`` module itself (``Snapshotter(tq, ...)``), ``"transferqueue"``, ``None``
    or a ``TransferQueueSystem``; any other callable returns a state to save.
    """
    if source is None or (isinstance(source, str) and source == "transferqueue"):
        return TransferQueueSource()
    if getattr(source, "__name__", None) == "transfer_queue":  # the module: Snapshotter(tq, ...)
        return TransferQueueSource()
    if isinstance(source, SnapshotSource) and not isinstance(source, type):
        return source
    # An instance of TransferQueueSystem implies its module is loaded: no need to import Ray here.
    tq_adapter = sys.modules.get("tqsnap.adapters.transferqueue.system")
    if tq_adapter is not None and isinstance(source, tq_adapter.TransferQueueSystem):
        return TransferQueueSource(source)
    if callable(source):
        return StateSource(source)
    raise TypeError(
        f"cannot snapshot a {type(source).__name__}: pass a TransferQueue, a callable returning a "
        "state, or an object with a snapshot(repo, stream, ...) method"
    )
