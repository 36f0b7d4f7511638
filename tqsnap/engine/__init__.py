"""Engine layer: writer (pack, dedup, upload, commit), reader, repository, retention, gc."""

from .packer import PackOptions, PackResult, PackStats, ShardPacker, merge_results
from .reader import SnapshotReader, VerifyReport, fetch_shard
from .repository import Repository, SnapshotInfo
from .writer import SnapshotWriter

__all__ = [
    "PackOptions",
    "PackResult",
    "PackStats",
    "Repository",
    "ShardPacker",
    "SnapshotInfo",
    "SnapshotReader",
    "SnapshotWriter",
    "VerifyReport",
    "fetch_shard",
    "merge_results",
]
