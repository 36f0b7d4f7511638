"""``tqsnap.tq``: snapshots of a running TransferQueue (``snapshot``, ``restore``, ``Snapshotter``).

The code lives in :mod:`tqsnap.faces.tq`; this module keeps the short import path.
"""

from .faces.tq import (
    Snapshotter,
    TQRestoreResult,
    TQSnapshotResult,
    TransferQueueSystem,
    restore,
    snapshot,
    stage,
)

__all__ = [
    "Snapshotter",
    "TQRestoreResult",
    "TQSnapshotResult",
    "TransferQueueSystem",
    "restore",
    "snapshot",
    "stage",
]
