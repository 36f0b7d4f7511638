"""tqsnap: incremental, content-addressed, atomically committed snapshots of ML state.

``tqsnap.tq`` (TransferQueue) and ``tqsnap.dcp`` (torch.distributed.checkpoint) are imported
on first use, so ``import tqsnap`` pulls in neither Ray nor torch.
"""

from . import errors
from .engine import PackOptions, Repository, SnapshotInfo, VerifyReport
from .faces.api import init_repo, load, open_repo, save, snapshots, tag, verify
from .format import SnapshotId

__version__ = "0.1.0"

__all__ = [
    "PackOptions",
    "Repository",
    "SnapshotId",
    "SnapshotInfo",
    "VerifyReport",
    "errors",
    "init_repo",
    "load",
    "open_repo",
    "save",
    "snapshots",
    "tag",
    "verify",
]
