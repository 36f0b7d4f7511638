"""The commit of one save: put-if-absent its manifest so that it lands exactly once.

docs/protocol.md §3 (W3) states the rule and why it is safe; :class:`Committer` carries it out
for :meth:`.writer.SnapshotWriter.commit`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from ..errors import (
    AccessDeniedError,
    BucketNotFoundError,
    CommitConflictError,
    CommitOutcomeUnknownError,
    ConditionalWriteUnsupportedError,
    InvalidKeyError,
    ManifestError,
    SnapshotNotFoundError,
    StoreError,
    WriteDeadlineExceededError,
)
from ..format.keys import snapshot_key
from ..format.manifest import Manifest
from .create_once import Outcome
from .repository import SnapshotInfo
from .writer_state import SaveState

log = logging.getLogger(__name__)

_FATAL_STORE_ERRORS = (AccessDeniedError, BucketNotFoundError, ConditionalWriteUnsupportedError, InvalidKeyError)
#: Rounds of the commit loop in all (attempts, read-backs, listings); the deadline usually ends it first.
_MAX_ROUNDS = 5000


class Committer:
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

    def __init__(
        self, writer: SaveState, manifest: Manifest, max_attempts: int, backoff: Callable[[int], None]
    ) -> None:
        self.w = writer
        self.backoff = backoff
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
            self.backoff(round_)
        if self.pending is not None:
            raise self._unknown(f"it gave up after {_MAX_ROUNDS} rounds")
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
                self.backoff(round_)
        log.debug("no manifest with write_id %s in %s before seq %d", self.w.write_id, self.w.stream, next_seq)
        return None

    def _scan_once(self) -> tuple[int | None, bool]:
        """One pass of :meth:`_scan_for_own` without retries: (own seq or None, every candidate answered)."""
        try:
            seqs = self.repo.manifest_seqs(self.w.stream)
        except _FATAL_STORE_ERRORS:
            raise
        except StoreError:
            return None, False
        complete = True
        for seq in seqs:
            if seq < self.first_seq or seq in self.theirs:
                continue
            outcome = self._read_back(seq)
            if outcome is Outcome.MINE:
                return seq, True
            complete = complete and outcome is not None
        return None, complete

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
                self.backoff(round_)
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
        if self.pending is not None:
            if self._read_back(self.pending) is Outcome.MINE:
                raise _Found(self.pending)
            raise self._unknown(f"its deadline passed (server time {now:.0f})")
        if self.uncertain:  # every attempt was settled; one last look, without retries
            own, complete = self._scan_once()
            if own is not None:
                raise _Found(own)
            if not complete:
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
        """The commit at ``seq``, as read back when it was (a scan may find it at another seq)."""
        stored = self.mine.get(seq)
        return SnapshotInfo.from_manifest(stored if stored is not None else self.manifest)


class _Found(Exception):
    """Internal: the deadline check found this save's own commit at ``seq``."""

    def __init__(self, seq: int) -> None:
        super().__init__(seq)
        self.seq = seq
