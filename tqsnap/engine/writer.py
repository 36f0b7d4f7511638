"""Write one snapshot: resolve the parent, pack and upload shards, commit the manifest LAST.

The commit protocol (docs/protocol.md):

1. ``begin``: read the server time (``started_at``), list the stream, pick the latest
   non-tombstoned manifest as parent, and index its shards by hash (the reuse index).
2. Packers hash shards; a shard whose hash the parent references is reused at the parent's key
   with no request. Every other shard goes to a fresh key ``<hash>.<upload-id>``.
3. ``commit``: refuse after ``started_at + max_write_duration`` (server time); put-if-absent the
   manifest at ``seq = max + 1``. On "exists", read it back: our own ``write_id`` means an
   earlier attempt won and its reply was lost; anything else means another writer won, so
   rebase onto the new latest and retry at the next seq. After a request that failed with an
   unknown outcome, retry the same seq, so a late-landing request is recognised as our own.
   Uploaded shards stay valid throughout.
"""

from __future__ import annotations

import logging
import random
import secrets
import time
from typing import Any

from ..errors import (
    AccessDeniedError,
    BucketNotFoundError,
    CommitConflictError,
    ConditionalWriteUnsupportedError,
    StoreError,
    WriteDeadlineExceededError,
)
from ..format.keys import snapshot_key, validate_name
from ..format.manifest import Manifest, ShardRef, SnapshotId, encode_body
from .packer import PackOptions, PackResult, PackStats, ShardPacker, merge_results
from .repository import Repository, SnapshotInfo

log = logging.getLogger(__name__)

#: Bodies (items + extra) larger than this move into a body shard, keeping the manifest one small PUT.
INLINE_BODY_LIMIT = 256 * 1024
_FATAL_STORE_ERRORS = (AccessDeniedError, BucketNotFoundError, ConditionalWriteUnsupportedError)


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
        parent_id: SnapshotId | None
        if parent == "latest":
            visible = repo.visible_seqs(stream)
            parent_id = SnapshotId(stream, visible[-1]) if visible else None
        elif isinstance(parent, SnapshotId):
            parent_id = repo.resolve(parent.stream, parent.seq)
        else:
            parent_id = None
        parent_manifest = repo.load_manifest(parent_id.stream, parent_id.seq) if parent_id else None
        log.debug("begin %s save of %s at %.3f, parent %s", kind, stream, started_at, parent_id)
        return cls(
            repo,
            stream,
            kind,
            parent=parent_id,
            parent_manifest=parent_manifest,
            started_at=started_at,
            options=options or PackOptions(),
        )

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
        encoded_body = encode_body(items, extra)
        if len(encoded_body) > INLINE_BODY_LIMIT:
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
        )
        fork = self.parent is not None and self.parent.stream != self.stream
        seq = self._rebase(manifest, fork, min_seq=1)
        for attempt in range(max_attempts):
            now = store.now()
            if now > self.deadline:
                raise WriteDeadlineExceededError(
                    f"save of stream {self.stream!r} started at {self.started_at:.0f} and ran past its deadline "
                    f"({self.repo.config.max_write_duration:g}s, server time now {now:.0f}); nothing was "
                    "committed and its shards will be collected by gc. Retry the save."
                )
            manifest.seq = seq
            manifest.committed_at = now
            all_stats["duration_s"] = round(time.monotonic() - self._t0, 6)
            key = snapshot_key(self.stream, seq)
            unknown = False  # the request failed: it may or may not have landed
            try:
                created = store.put_if_absent(key, manifest.encode())
            except _FATAL_STORE_ERRORS:
                raise
            except StoreError as exc:
                log.warning("commit of %s failed (%s); checking whether it landed", key, exc)
                created, unknown = False, True
                time.sleep(min(2.0, 0.05 * 2**attempt) * random.random())
            if created or self._is_own_commit(seq):
                info = SnapshotInfo.from_manifest(manifest)
                self.committed = info
                log.info(
                    "committed %s@%d: %d new shards (%d bytes), %d reused",
                    self.stream,
                    seq,
                    all_stats["new_shards"],
                    all_stats["stored_bytes"],
                    all_stats["reused_shards"],
                )
                return info
            # Another writer took this seq: rebase onto the stream's new head and retry after it.
            # After a failed request, retry the same seq: if our request lands late, the retry's
            # "exists" answer carries our write_id, so the snapshot is never committed twice.
            seq = self._rebase(manifest, fork, min_seq=seq if unknown else seq + 1)
            log.info("lost commit race on %s (attempt %d); retrying at seq %d", key, attempt + 1, seq)
        raise CommitConflictError(
            f"gave up committing to stream {self.stream!r} after {max_attempts} lost races; "
            "too many concurrent writers on one stream"
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

    def _is_own_commit(self, seq: int) -> bool:
        """After a lost reply or a 412, is the manifest at ``seq`` the one this writer sent?"""
        try:
            existing = self.repo.load_manifest(self.stream, seq)
        except Exception:  # noqa: BLE001 - absent or unreadable: not ours; the retry decides
            return False
        return existing.write_id == self.write_id

    def _store_body_shard(self, encoded: bytes, shards: list[ShardRef], stats: PackStats) -> int:
        """Move a large body (items + extra) into a content-addressed zstd shard; return its index."""
        options = PackOptions(codec="zstd", small_item=0, chunk_size=max(len(encoded), 1))
        packer = ShardPacker(self.repo.store, self.reuse_index, options)
        packer.add("__body__", encoded)
        result = packer.finish()
        ref = result.shards[0]
        for i, existing in enumerate(shards):
            if existing.hash == ref.hash:
                return i
        shards.append(ref)
        result.stats.items = result.stats.item_bytes = 0
        stats.add(result.stats)
        return len(shards) - 1
