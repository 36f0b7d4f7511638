"""``tqsnap.dcp``: DCP storage that saves each checkpoint as one tqsnap snapshot.

Save::

    import torch.distributed.checkpoint as dcp
    import tqsnap.dcp

    dcp.save(state_dict, storage_writer=tqsnap.dcp.Writer("s3://bucket/ckpt", stream="run-1"))

Load (resharding as DCP does)::

    dcp.load(state_dict, storage_reader=tqsnap.dcp.Reader("s3://bucket/ckpt", stream="run-1"))

See docs/dcp.md.
"""

from .adapters.dcp import (
    KIND,
    CheckpointRef,
    InconsistentSnapshotError,
    Reader,
    ShapeMismatchError,
    Writer,
    parse_checkpoint_id,
)

__all__ = [
    "KIND",
    "CheckpointRef",
    "InconsistentSnapshotError",
    "Reader",
    "ShapeMismatchError",
    "Writer",
    "parse_checkpoint_id",
]
