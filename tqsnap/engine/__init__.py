"""Engine layer: writer (pack, dedup, upload, commit), reader, repository, retention, gc."""

from .gc import GarbageCollector, GcReport, collect_garbage
from .packer import PackOptions, PackResult, PackStats, ShardPacker, merge_results
from .reader import SnapshotReader, VerifyReport, fetch_shard
from .repository import Repository, SnapshotInfo
from .retention import ForgetReport, RetentionPolicy, forget
from .writer import SnapshotWriter

__all__ = [
    "ForgetReport",
    "GarbageCollector",
    "GcReport",
    "RetentionPolicy",
    "collect_garbage",
    "forget",
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
