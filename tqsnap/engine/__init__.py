"""Engine layer: writer (pack, dedup, upload, commit), reader, repository, retention, gc.

The vocabulary, used with these meanings in the code and in docs/format.md and
docs/protocol.md (the classes are in ``tqsnap.format.manifest``):

Stream
    A named, append-only history of snapshots (``run-42``): every Manifest under
    ``snapshots/<stream>/``. One job usually writes one stream; streams share shards.

Seq
    A snapshot's number within its stream: 1, 2, 3, ... A writer claims the next seq by
    creating its Manifest with put-if-absent, so racing writers end up in one linear history.
    ``SnapshotId`` is the (stream, seq) pair, printed ``stream@seq``.

Manifest
    One committed snapshot: its kind, parent, metadata, the Shards it uses and its Items.
    Written once, LAST, with put-if-absent: a snapshot exists exactly when its Manifest does,
    so an interrupted save leaves only unreferenced shards, which gc collects.

Shard
    An immutable object of up to a few MiB under ``shards/``, named by the xxh3-128 of its
    uncompressed bytes plus a fresh random upload id (so no two uploads share a key and gc
    can never delete a shard a live writer has just reused). ``ShardRef`` is a Manifest's
    pointer to one: key, hash, size, stored size and codec. Identical bytes dedup by hash.
    ``Shards`` (:mod:`.shards`) is the only code that writes, reads and verifies them.

Item
    A named value of a snapshot (``model/layers/0/weight``): a tensor, bytes or a pickle,
    whose bytes are the concatenation of its Extents. Large items span several Shards;
    small ones are packed together into one.

Extent
    ``length`` bytes at ``offset`` in the uncompressed bytes of one of the Manifest's Shards.

Tombstone
    An object under ``tombstones/`` written by ``forget``: the snapshot is logically deleted
    (invisible to readers and writers). gc removes the Manifest, then the Tombstone, once it
    is older than the repository's grace; a stream's highest seq stays, tombstoned, so that
    no writer ever reuses its seq.

Tag
    An immutable name for one snapshot (``tag:best``), created with put-if-absent under
    ``tags/``; retention can keep tagged snapshots.
"""

from .gc import GcReport
from .packer import PackOptions, PackResult, ShardPacker
from .reader import SnapshotReader, VerifyReport
from .repository import Repository, SnapshotInfo
from .retention import ForgetReport, RetentionPolicy
from .writer import SnapshotWriter

#: What the adapters and faces import from the package. Everything else (gc, retention,
#: copy, check, the shard layer, ...) is imported from its own module, by the few callers
#: that need it.
__all__ = [
    "ForgetReport",
    "GcReport",
    "PackOptions",
    "PackResult",
    "Repository",
    "RetentionPolicy",
    "ShardPacker",
    "SnapshotInfo",
    "SnapshotReader",
    "SnapshotWriter",
    "VerifyReport",
]
