"""``tqsnap.tq``: snapshots of a running TransferQueue (``snapshot``, ``restore``, ``Snapshotter``).

The code lives in :mod:`tqsnap.faces.tq`; this module keeps the short import path.
"""

from .faces.tq import (
    PendingPart,
    QueueCapture,
    Snapshotter,
    TQRestoreResult,
    TQSnapshotResult,
    TransferQueueSystem,
    capture,
    restore,
    snapshot,
    stage,
    stage_async,
)

__all__ = [
    "PendingPart",
    "QueueCapture",
    "Snapshotter",
    "TQRestoreResult",
    "TQSnapshotResult",
    "TransferQueueSystem",
    "capture",
    "restore",
    "snapshot",
    "stage",
    "stage_async",
]
