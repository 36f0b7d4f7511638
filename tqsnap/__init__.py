"""tqsnap: incremental, content-addressed, atomically committed snapshots of ML state.

``tqsnap.tq`` (TransferQueue), ``tqsnap.dcp`` (torch.distributed.checkpoint),
``tqsnap.hyper_parallel`` (MindSpore hyper_parallel's checkpoint) and ``tqsnap.job`` (whole-job
snapshots) are imported on first use, so ``import tqsnap`` pulls in neither Ray nor torch.
"""

from . import errors
from .engine import (
    ForgetReport,
    GcReport,
    PackOptions,
    Repository,
    RetentionPolicy,
    SnapshotInfo,
    VerifyReport,
)
from .faces.api import copy, init_repo, load, open_repo, save, snapshots, tag, verify
from .faces.api_retention import forget, gc
from .format import SnapshotId

__version__ = "0.1.0"


def __getattr__(name: str):
    """Import the heavy adapters (``tq`` needs Ray, ``dcp`` needs torch) on first use."""
    if name in ("tq", "dcp", "job", "hyper_parallel"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'tqsnap' has no attribute {name!r}")


__all__ = [
    "ForgetReport",
    "GcReport",
    "RetentionPolicy",
    "PackOptions",
    "Repository",
    "SnapshotId",
    "SnapshotInfo",
    "VerifyReport",
    "copy",
    "errors",
    "forget",
    "gc",
    "init_repo",
    "load",
    "open_repo",
    "save",
    "snapshots",
    "tag",
    "verify",
]
