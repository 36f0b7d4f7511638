"""torch.distributed.checkpoint (DCP) storage on tqsnap: incremental, deduplicated, atomic."""

from ...errors import InconsistentSnapshotError, ShapeMismatchError
from .layout import KIND, CheckpointRef, parse_checkpoint_id
from .reader import Reader
from .writer import Writer

__all__ = [
    "KIND",
    "CheckpointRef",
    "InconsistentSnapshotError",
    "Reader",
    "ShapeMismatchError",
    "Writer",
    "parse_checkpoint_id",
]
