"""Write one snapshot: resolve the parent, pack and upload shards, commit the manifest LAST.

The commit protocol (docs/protocol.md):

1. ``begin``: read the server time (``started_at``), list the stream, pick the latest
   non-tombstoned manifest as parent, and index its shards by hash (the reuse index). Each of
   the parent's shards is confirmed to exist once per process (:mod:`.shard_confirm`); one that
   is absent or of the wrong size is left out of the index and uploaded again.
2. Packers hash shards; a shard whose hash the parent references is reused at the parent's key
   with no request. Every other shard goes to a fresh key ``<hash>.<upload-id>``.
3. ``commit``: refuse after ``started_at + max_write_duration`` (server time); put-if-absent the
   manifest, which carries the save's random ``write_id``, at ``seq = max + 1``, so that it
   lands exactly once (:class:`.commit.Committer`). Uploaded shards stay valid throughout.
"""

from __future__ import annotations

import logging
import random
import secrets
import time
from typing import Any

from ..errors import MissingShardError
from ..format.body_columnar import encode_columnar
from ..format.keys import validate_name
from ..format.manifest import COLUMNAR_BODY, Manifest, ShardRef, SnapshotId, encode_body
from ..format.version import COLUMNAR_FORMAT_VERSION, FORMAT_VERSION
from .commit import Committer
from .packer import PackOptions, PackResult, PackStats, ShardPacker, merge_results
from .repository import Repository, SnapshotInfo
from .shard_confirm import remember, unconfirmed
from .shards import Shards

log = logging.getLogger(__name__)

#: Bodies (items + extra) larger than this move into a body shard, keeping the manifest one small PUT.
INLINE_BODY_LIMIT = 256 * 1024
#: Snapshots of at least this many items get a columnar body shard (format 2.0, docs/format.md
#: section 6.1), which loads a million items in about a second; smaller ones keep the JSON body
#: that every 1.x reader reads.
COLUMNAR_BODY_MIN_ITEMS = 100_000


def resolve_parent(repo: Repository, stream: str, parent: SnapshotId | str | None) -> SnapshotId | None:
    """The snapshot a save deduplicates against: ``"latest"`` is the stream's newest visible
    one (None for a new stream), a :class:`SnapshotId` must be visible, ``None`` is none."""
    if parent == "latest":
        visible = repo.visible_seqs(stream)
        return SnapshotId(stream, visible[-1]) if visible else None
    if isinstance(parent, SnapshotId):
        return repo.resolve(parent.stream, parent.seq)
    return None


class SnapshotWriter:
    """One save of one stream. Create with :meth:`begin`; finish with :meth:`commit`."""

    def __init__(
        self,
        repo: Repository,
        stream: str,
        kind: str,
        *,
        parent: SnapshotId | None,
        parent_manifest: Manifest | None,
        started_at: float,
        options: PackOptions,
    ) -> None:
        self.repo = repo
        self.stream = stream
        self.kind = kind
        self.parent = parent
        self.started_at = started_at
        self.options = options
        self.write_id = secrets.token_hex(16)
        self.reuse_index: dict[str, ShardRef] = (
            {ref.hash: ref for ref in parent_manifest.shards} if parent_manifest else {}
        )
        #: Every shard key of the parent: a reference to one of them is a reuse, checked at commit.
        self._parent_keys = frozenset(ref.key for ref in self.reuse_index.values())
        self._results: list[PackResult] = []
        self._t0 = time.monotonic()
        self.committed: SnapshotInfo | None = None

    @classmethod
    def begin(
        cls,
        repo: Repository,
        stream: str,
        kind: str,
        *,
        parent: SnapshotId | str | None = "latest",
        options: PackOptions | None = None,
    ) -> SnapshotWriter:
        """Start a save. ``parent="latest"`` picks the stream's latest visible snapshot;
        a :class:`SnapshotId` forks from any visible snapshot; ``None`` starts from nothing."""
        validate_name(stream)
        started_at = repo.store.now()
        parent_id = resolve_parent(repo, stream, parent)
        parent_manifest = repo.load_manifest(parent_id.stream, parent_id.seq) if parent_id else None
        log.debug("begin %s save of %s at %.3f, parent %s", kind, stream, started_at, parent_id)
        writer = cls(
            repo,
            stream,
            kind,
            parent=parent_id,
            parent_manifest=parent_manifest,
            started_at=started_at,
            options=options or PackOptions(),
        )
        writer._drop_unconfirmed_reuse()
        return writer

    def _drop_unconfirmed_reuse(self) -> None:
        """Leave out of the reuse index every parent shard that is absent or of the wrong size.

        A planted or damaged parent then costs a re-upload of those shards, never a snapshot
        that cannot be restored (docs/security.md).
        """
        bad = unconfirmed(self.repo.store, self.reuse_index.values(), self._confirm_ttl)
        for ref, why in bad:
            log.warning(
                "parent %s references shard %s, which fails its check (%s); uploading that content again",
                self.parent,
                ref.key,
                why,
            )
            self.reuse_index.pop(ref.hash, None)

    @property
    def _confirm_ttl(self) -> float:
        """How long a confirmed shard stays confirmed: half the grace (see :mod:`.shard_confirm`)."""
        return self.repo.config.grace / 2

    @property
    def deadline(self) -> float:
        return self.started_at + self.repo.config.max_write_duration

    def packer(self) -> ShardPacker:
        """A packer bound to this save's store and reuse index (for in-process use)."""
        return ShardPacker(self.repo.store, self.reuse_index, self.options)

    def add_result(self, result: PackResult) -> None:
        """Hand over a packer's references (from this process or a remote worker)."""
        self._results.append(result)

    def commit(
        self,
        *,
        extra: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        max_attempts: int = 50,
        stats: dict[str, Any] | None = None,
    ) -> SnapshotInfo:
        """Write the manifest with put-if-absent; rebase and retry when another writer wins."""
        merged = merge_results(self._results)
        shards, items, body_shard = merged.shards, merged.items, None
        item_stats = merged.stats
        extra = dict(extra or {})
        columnar = len(items) >= COLUMNAR_BODY_MIN_ITEMS
        encoded_body = encode_columnar(items, extra) if columnar else encode_body(items, extra)
        if columnar or len(encoded_body) > INLINE_BODY_LIMIT:
            body_shard = self._store_body_shard(encoded_body, shards, item_stats)
        store = self.repo.store
        all_stats = item_stats.to_json() | dict(stats or {})
        manifest = Manifest(
            kind=self.kind,
            stream=self.stream,
            seq=0,
            parent=self.parent,
            write_id=self.write_id,
            started_at=self.started_at,
            committed_at=0.0,
            shards=shards,
            items=[] if body_shard is not None else items,
            metadata=dict(metadata or {}),
            extra={} if body_shard is not None else extra,
            stats=all_stats,
            body_shard=body_shard,
            format_version=COLUMNAR_FORMAT_VERSION if columnar else FORMAT_VERSION,
            body_format=COLUMNAR_BODY if columnar else None,
        )
        self._confirm_reused(manifest.shards)
        info = Committer(self, manifest, max_attempts, _backoff).commit()
        self.committed = info
        remember(store, manifest.shards, self._confirm_ttl)  # the next save here reuses them for free
        log.info(
            "committed %s@%d: %d new shards (%d bytes), %d reused",
            self.stream,
            info.seq,
            all_stats["new_shards"],
            all_stats["stored_bytes"],
            all_stats["reused_shards"],
        )
        return info

    def _confirm_reused(self, shards: list[ShardRef]) -> None:
        """Refuse to commit a reference to a parent shard that is absent or of the wrong size.

        Keys this save took from its parent are checked (each once per process, see
        :mod:`.shard_confirm`); a fresh upload's key is never one of them. :meth:`begin` has
        already dropped bad refs from the reuse index, so this fires only for a packer that
        built its own index (a DCP rank) from a damaged or planted parent.
        """
        reused = [ref for ref in shards if ref.key in self._parent_keys]
        bad = unconfirmed(self.repo.store, reused, self._confirm_ttl)
        if bad:
            ref, why = bad[0]
            raise MissingShardError(
                ref.key,
                f"{self.parent}, this save's parent ({why}; {len(bad)} such shards). Nothing was "
                "committed: save again from a full upload (parent=None) and run `tqsnap verify`",
            )

    def _rebase(self, manifest: Manifest, fork: bool, min_seq: int) -> int:
        """Point ``manifest.parent`` at the stream's latest visible snapshot; return the next seq.

        The reuse index keeps the parent read at :meth:`begin`: those shards stay protected
        because that parent was visible when this save started (docs/protocol.md).
        """
        seqs = self.repo.manifest_seqs(self.stream)
        if not fork:
            dead = self.repo.tombstoned_seqs(self.stream)
            visible = [s for s in seqs if s not in dead]
            manifest.parent = SnapshotId(self.stream, visible[-1]) if visible else None
        return max(seqs[-1] + 1 if seqs else 1, min_seq)

    def _store_body_shard(self, encoded: bytes, shards: list[ShardRef], stats: PackStats) -> int:
        """Move a large body (items + extra) into a content-addressed zstd shard; return its index.

        A body identical to one this snapshot or its parent already references is reused.
        """
        body = Shards(self.repo.store).encode([encoded], "zstd")
        for i, existing in enumerate(shards):
            if existing.hash == body.ref.hash:
                return i
        ref = self.reuse_index.get(body.ref.hash)
        if ref is not None:
            stats.reused_shards += 1
            stats.reused_bytes += ref.size
        else:
            ref = Shards(self.repo.store).upload(body)
            stats.new_shards += 1
            stats.new_bytes += ref.size
            stats.stored_bytes += ref.stored_size
        shards.append(ref)
        return len(shards) - 1


def _backoff(round_: int) -> None:
    """A short, growing, random pause between commit rounds (full jitter, 2 s cap).

    Here rather than in :mod:`.commit` so that a simulation can run it on a fake clock."""
    time.sleep(min(2.0, 0.05 * 2 ** min(round_, 10)) * random.random())
