"""Format layer: key layout, shard encoding, manifest schema and repository config."""

from .config import DEFAULT_GRACE, DEFAULT_MAX_WRITE_DURATION, RepoConfig, parse_duration
from .keys import validate_name
from .manifest import Extent, Item, Manifest, ShardRef, SnapshotId, Tag, Tombstone
from .shard import content_hash
from .version import FORMAT_VERSION

__all__ = [
    "DEFAULT_GRACE",
    "DEFAULT_MAX_WRITE_DURATION",
    "FORMAT_VERSION",
    "Extent",
    "Item",
    "Manifest",
    "RepoConfig",
    "ShardRef",
    "SnapshotId",
    "Tag",
    "Tombstone",
    "content_hash",
    "parse_duration",
    "validate_name",
]
