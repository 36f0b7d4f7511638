"""TransferQueue adapter: snapshot a running TransferQueue and restore it, any unit count."""

from .layout import DEFAULT_BLOCK_SIZE, KIND
from .restore import TQRestoreResult, restore_system
from .snapshot import TQSnapshotResult, snapshot_system
from .system import TransferQueueSystem

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "KIND",
    "TQRestoreResult",
    "TQSnapshotResult",
    "TransferQueueSystem",
    "restore_system",
    "snapshot_system",
]
