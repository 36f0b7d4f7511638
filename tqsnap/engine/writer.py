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
   lands exactly once (:class:`_Committer`). Uploaded shards stay valid throughout.
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
    CommitOutcomeUnknownError,
    ConditionalWriteUnsupportedError,
    InvalidKeyError,
    ManifestError,
    MissingShardError,
    SnapshotNotFoundError,
    StoreError,
    WriteDeadlineExceededError,
)
from ..format.keys import snapshot_key, validate_name
from ..format.manifest import Manifest, ShardRef, SnapshotId, encode_body
from .create_once import Outcome
from .packer import PackOptions, PackResult, PackStats, ShardPacker, merge_results
from .repository import Repository, SnapshotInfo
from .shard_confirm import remember, unconfirmed
from .shards import Shards

log = logging.getLogger(__name__)

#: Bodies (items + extra) larger than this move into a body shard, keeping the manifest one small PUT.
INLINE_BODY_LIMIT = 256 * 1024
_FATAL_STORE_ERRORS = (AccessDeniedError, BucketNotFoundError, ConditionalWriteUnsupportedError, InvalidKeyError)
#: Rounds of the commit loop in all (attempts, read-backs, listings); the deadline usually ends it first.
_MAX_ROUNDS = 5000


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
        bad = unconfirmed(self.repo.store, self.reuse_index.values())
        for ref, why in bad:
            log.warning(
                "parent %s references shard %s, which fails its check (%s); uploading that content again",
                self.parent,
                ref.key,
                why,
            )
            self.reuse_index.pop(ref.hash, None)

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
        self._confirm_reused(manifest.shards)
        info = _Committer(self, manifest, max_attempts).commit()
        self.committed = info
        remember(store, manifest.shards)  # the next save in this process reuses them for free
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
        bad = unconfirmed(self.repo.store, reused)
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


class _Committer:
    """The commit of one save's manifest, so that it lands exactly once.

    Each attempt is resolved by reading the attempted key back and comparing ``write_id``:

    - **created**: committed;
    - **exists** with this save's ``write_id``: an earlier attempt landed and its reply was
      lost: committed at that seq;
    - **exists** with another ``write_id``: a rival holds the seq, so no request of this save
      can ever land there; list the stream and try the next seq;
    - **unknown** (the request failed or its reply was lost, or the read-back did not answer):
      the attempt may still land, even after the client gave up on it. The same key is tried
      and read back until it answers, and the save never moves to another seq before that:
      "could not tell" is never taken for "someone else's".

    Before committing at a later seq after any unknown outcome, the stream is listed and every
    manifest after the parent not yet known to be a rival's is read: one carrying this save's
    ``write_id`` is the commit. When the deadline passes with an outcome still unknown,
    :class:`~tqsnap.errors.CommitOutcomeUnknownError` says so (naming the key and the
    ``write_id``), never the "nothing was committed" of ``WriteDeadlineExceededError``.
    Icechunk (write ids read back after a "spurious" 412) and Delta Lake's put-if-absent log
    resolve lost replies the same way.
    """

    def __init__(self, writer: SnapshotWriter, manifest: Manifest, max_attempts: int) -> None:
        self.w = writer
        self.repo = writer.repo
        self.store = writer.repo.store
        self.manifest = manifest
        self.max_attempts = max_attempts
        self.fork = writer.parent is not None and writer.parent.stream != writer.stream
        self.theirs: set[int] = set()  # seqs read back holding another write_id: never ours
        self.mine: dict[int, Manifest] = {}  # this save's manifest as read back, by seq
        self.pending: int | None = None  # the seq of an attempt whose outcome is not known yet
        self.uncertain = False  # some attempt's outcome was unknown: scan before a later seq
        self.races = 0
        self.first_seq = 0
        self._sent: tuple[int, bytes] | None = None

    def commit(self) -> SnapshotInfo:
        try:
            return self._run()
        except _Found as found:
            return self._committed(found.seq)

    def _run(self) -> SnapshotInfo:
        seq = self.first_seq = self._until_answered(lambda: self.w._rebase(self.manifest, self.fork, 1))
        for round_ in range(_MAX_ROUNDS):
            now = self._check_deadline()
            if self.uncertain and self.pending is None:
                own = self._scan_for_own(seq)
                if own is not None:
                    return self._committed(own)
            key = snapshot_key(self.w.stream, seq)
            try:
                created = self.store.put_if_absent(key, self._encoded(seq, now))
            except _FATAL_STORE_ERRORS:
                raise
            except StoreError as exc:  # CommitOutcomeUnknownError included: it may have landed
                log.warning("commit of %s: outcome unknown (%s); reading it back", key, exc)
                self.pending, self.uncertain, created = seq, True, False
            if created:
                return self._committed(seq)
            outcome = self._read_back(seq)
            if outcome is Outcome.MINE:
                return self._committed(seq)
            if outcome is Outcome.THEIRS:
                self.pending = None
                self.races += 1
                if self.races >= self.max_attempts:
                    break
                seq = self._until_answered(lambda s=seq: self.w._rebase(self.manifest, self.fork, s + 1))
                log.info("lost commit race on %s (race %d); retrying at seq %d", key, self.races, seq)
                continue
            # Absent (not landed yet) or no answer: the same seq again after a pause; a late
            # landing then answers "exists" with this save's write_id.
            if outcome is None:
                self.pending, self.uncertain = seq, True
            _backoff(round_)
        if self.uncertain:
            own = self._scan_for_own(seq)
            if own is not None:
                return self._committed(own)
        raise CommitConflictError(
            f"gave up committing to stream {self.w.stream!r} after {self.races} lost races; "
            "too many concurrent writers on one stream"
        )

    def _encoded(self, seq: int, now: float) -> bytes:
        """The manifest for ``seq``; a retry at the same seq resends the very same bytes."""
        if self._sent is not None and self._sent[0] == seq:
            return self._sent[1]
        self.manifest.seq = seq
        self.manifest.committed_at = now
        self.manifest.stats["duration_s"] = round(time.monotonic() - self.w._t0, 6)
        self._sent = (seq, self.manifest.encode())
        return self._sent[1]

    # --- resolving ---------------------------------------------------------------------------

    def _read_back(self, seq: int) -> Outcome | None:
        """Mine, theirs, absent, or None when the store did not answer (ask again later)."""
        try:
            existing = self.repo.load_manifest(self.w.stream, seq)
        except SnapshotNotFoundError:
            return Outcome.ABSENT
        except ManifestError:
            self.theirs.add(seq)  # this save's manifest parses: an unreadable one is not ours
            return Outcome.THEIRS
        except _FATAL_STORE_ERRORS:
            raise
        except StoreError as exc:
            log.warning("reading back %s@%d failed (%s); asking again", self.w.stream, seq, exc)
            return None
        if existing.write_id == self.w.write_id:
            self.mine[seq] = existing
            return Outcome.MINE
        self.theirs.add(seq)
        return Outcome.THEIRS

    def _scan_for_own(self, next_seq: int) -> int | None:
        """The seq of a manifest after the parent carrying this save's ``write_id``, if any.

        Every candidate not already known to be a rival's is read until it answers (within the
        deadline): one that cannot be read is never assumed to be someone else's.
        """
        parent = self.w.parent
        floor = self.first_seq
        if parent is not None and parent.stream == self.w.stream:
            floor = min(floor, parent.seq + 1)
        for seq in self._until_answered(lambda: self.repo.manifest_seqs(self.w.stream)):
            if seq < floor or seq in self.theirs:
                continue
            for round_ in range(_MAX_ROUNDS):
                outcome = self._read_back(seq)
                if outcome is Outcome.MINE:
                    log.info("found this save's own commit at %s@%d", self.w.stream, seq)
                    return seq
                if outcome is not None:
                    break
                self._check_deadline()
                _backoff(round_)
        log.debug("no manifest with write_id %s in %s before seq %d", self.w.write_id, self.w.stream, next_seq)
        return None

    def _until_answered(self, fn: Any) -> Any:
        """Run a read-only step (a listing) until the store answers, within the deadline."""
        for round_ in range(_MAX_ROUNDS):
            try:
                return fn()
            except _FATAL_STORE_ERRORS:
                raise
            except StoreError as exc:
                log.warning("commit to %s: a listing failed (%s); asking again", self.w.stream, exc)
                self._check_deadline()
                _backoff(round_)
        raise self._unknown("the store stopped answering")

    def _check_deadline(self) -> float:
        """The server time; raises past the deadline, saying "unknown" if an attempt may have landed."""
        try:
            now = self.store.now()
        except _FATAL_STORE_ERRORS:
            raise
        except StoreError:  # the store's clock is unreachable: estimate it from ours
            now = self.w.started_at + (time.monotonic() - self.w._t0)
        if now <= self.w.deadline:
            return now
        if self.uncertain:
            if self.pending is not None and self._read_back(self.pending) is Outcome.MINE:
                raise _Found(self.pending)
            raise self._unknown(f"its deadline passed (server time {now:.0f})")
        raise WriteDeadlineExceededError(
            f"save of stream {self.w.stream!r} started at {self.w.started_at:.0f} and ran past its deadline "
            f"({self.repo.config.max_write_duration:g}s, server time now {now:.0f}); nothing was "
            "committed and its shards will be collected by gc. Retry the save."
        )

    def _unknown(self, why: str) -> CommitOutcomeUnknownError:
        key = snapshot_key(self.w.stream, self.pending if self.pending is not None else self.manifest.seq)
        return CommitOutcomeUnknownError(
            key,
            f"save of stream {self.w.stream!r}: {why} while whether {key!r} was created by this save "
            f"was still unknown. It may have been committed: look for write_id {self.w.write_id} in "
            "`tqsnap snapshots --json` before saving the same state again",
        )

    def _committed(self, seq: int) -> SnapshotInfo:
        stored = self.mine.get(seq)
        if stored is not None and self.manifest.seq != seq:  # found by a scan: report what is stored
            return SnapshotInfo.from_manifest(stored)
        return SnapshotInfo.from_manifest(self.manifest)


class _Found(Exception):
    """Internal: the deadline check found this save's own commit at ``seq``."""

    def __init__(self, seq: int) -> None:
        super().__init__(seq)
        self.seq = seq


def _backoff(round_: int) -> None:
    """A short, growing, random pause between commit rounds (full jitter, 2 s cap)."""
    time.sleep(min(2.0, 0.05 * 2 ** min(round_, 10)) * random.random())
