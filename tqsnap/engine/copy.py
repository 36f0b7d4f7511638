"""Copy snapshots between repositories (or streams), in order, once, moving only missing shards.

Rules, each for a reason:

- **Once.** A copy records its source's identity (:mod:`.copy_identity`) in the destination
  manifest; a snapshot already copied into the destination stream is reported as present, not
  committed again, so re-running a copy (or a mirror job) is free.
- **In order.** The destination stream's ``latest`` never goes backwards: a source snapshot
  older than one the stream already holds from the same source stream is refused with
  :class:`~tqsnap.errors.CopyOrderError` (``copy_all`` skips it and says so). Copying it
  into another destination stream is always allowed.
- **The source's time.** The origin's capture and commit times travel in the record, and
  retention buckets by them, so ``forget --keep-daily`` on a mirror sees the source's history.
- **The same protocol as a save.** The copy is a :class:`~.writer.SnapshotWriter`: shards
  are reused from the destination stream's latest visible snapshot (or, within one
  repository, from the source snapshot itself, a fork, so nothing is uploaded), from young
  orphans an interrupted copy left (:mod:`.copy_resume`), and everything else is verified
  and uploaded to fresh keys (:meth:`~.shards.Shards.adopt_many`).

"Once" is checked by reading the destination before the commit, so two copy jobs of the same
snapshot into the same stream at the same moment can both commit it (each a valid snapshot):
run one mirror job per destination stream.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from ..errors import CopyOrderError, SnapshotNotFoundError
from ..format.keys import validate_name
from ..format.manifest import Manifest, ShardRef, SnapshotId, Tag
from .copy_fanout import adopt_shards
from .copy_identity import COPIED_FROM, SourceIdentity
from .copy_resume import find_young_orphans
from .packer import PackResult, PackStats
from .reader import load_body
from .repository import Repository, SnapshotInfo
from .shard_table import remap_items
from .shards import Shards
from .writer import SnapshotWriter

log = logging.getLogger(__name__)

COPIED, PRESENT, SKIPPED = "copied", "already present", "skipped (older)"


@dataclass
class CopyResult:
    """What one copy did. Attribute access falls through to ``info``, the destination snapshot."""

    status: str
    source: SnapshotId
    info: SnapshotInfo | None = None
    moved_shards: int = 0
    moved_bytes: int = 0
    reused_shards: int = 0
    reused_bytes: int = 0
    #: Of the reused shards, those an earlier interrupted copy had uploaded.
    resumed_shards: int = 0
    reason: str = ""
    tags_copied: list[str] = field(default_factory=list)
    tags_skipped: dict[str, str] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        info = self.__dict__.get("info")
        if info is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(info, name)

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "source": self.source.to_json(),
            "destination": self.info.id.to_json() if self.info else None,
            "moved_shards": self.moved_shards,
            "moved_bytes": self.moved_bytes,
            "reused_shards": self.reused_shards,
            "reused_bytes": self.reused_bytes,
            "resumed_shards": self.resumed_shards,
            "reason": self.reason,
            "tags_copied": self.tags_copied,
            "tags_skipped": self.tags_skipped,
            "snapshot": self.info.to_json() if self.info else None,
        }


class DestinationHistory:
    """The copies a destination stream holds, by source identity (read once, kept up to date)."""

    def __init__(self, stream: str, copies: list[tuple[SourceIdentity, SnapshotInfo]]) -> None:
        self.stream = stream
        self.copies = copies

    @classmethod
    def read(cls, dst: Repository, stream: str) -> DestinationHistory:
        copies = []
        for info in dst.snapshots(stream):
            source = SourceIdentity.from_metadata(info.metadata)
            if source is not None:
                copies.append((source, info))
        return cls(stream, copies)

    def find(self, source: SourceIdentity) -> SnapshotInfo | None:
        return next((info for s, info in self.copies if s.same_snapshot(source)), None)

    def newest_later(self, source: SourceIdentity) -> tuple[SourceIdentity, SnapshotInfo] | None:
        """The copy of the latest source seq above ``source.seq`` from the same source stream."""
        later = [(s, i) for s, i in self.copies if s.same_stream(source) and s.seq > source.seq]
        return max(later, key=lambda pair: pair[0].seq, default=None)

    def add(self, source: SourceIdentity, info: SnapshotInfo) -> None:
        self.copies.append((source, info))


@dataclass(frozen=True)
class _Fanout:
    """How a copy spreads its listing and its shard moves (:mod:`.copy_fanout`)."""

    threads: int
    workers: int | None
    executor: str


def same_repository(a: Repository, b: Repository) -> bool:
    """One repository reached twice (its shards can be referenced, not copied)."""
    return a.config.repo_id == b.config.repo_id and a.url == b.url


def copy_snapshot(
    src: Repository,
    dst: Repository,
    stream: str,
    snapshot: str | int = "latest",
    *,
    dst_stream: str | None = None,
    tags: bool = False,
    threads: int = 8,
    history: DestinationHistory | None = None,
    src_tags: list[Tag] | None = None,
    workers: int | None = None,
    executor: str = "auto",
) -> CopyResult:
    """Copy one visible snapshot of ``src`` to ``dst_stream`` (default: the same name) in ``dst``.

    Returns the existing destination snapshot, with status "already present", when it was
    copied before. Raises :class:`~tqsnap.errors.CopyOrderError` when the destination stream
    already holds a later snapshot of the same source stream.

    ``workers``/``executor`` fan the search for an earlier copy's orphans and the moving of
    shards out as gc's sweep does (threads, or Ray tasks; :mod:`.copy_fanout`).
    """
    sid = src.resolve(stream, snapshot)
    target = validate_name(dst_stream or sid.stream)
    fork = same_repository(src, dst)
    if fork and target == sid.stream:
        raise CopyOrderError(
            f"copying {sid} of {src.url} into its own stream would commit an old state as the newest; "
            "name another destination stream (--dst-stream) to fork it"
        )
    manifest = src.load_manifest(sid.stream, sid.seq)
    source = SourceIdentity.of(src.config.repo_id, src.url, manifest)
    history = history if history is not None else DestinationHistory.read(dst, target)
    existing = history.find(source)
    if existing is not None:
        log.info("%s of %s is already in %s as %s", sid, src.url, dst.url, existing.id)
        result = CopyResult(PRESENT, sid, existing, reason=f"already copied as {existing.id}")
    else:
        later = history.newest_later(source)
        if later is not None:
            raise CopyOrderError(
                f"{dst.url} stream {target!r} already holds {later[1].id}, a copy of the later "
                f"{later[0].stream}@{later[0].seq}; copying {sid} there would make its latest go "
                "backwards. Copy it into another stream (--dst-stream) if you need it"
            )
        result = _transfer(src, dst, manifest, source, target, fork, _Fanout(threads, workers, executor))
        history.add(source, result.info)  # type: ignore[arg-type]
    if tags:
        _follow_tags(dst, sid, result, src.tags() if src_tags is None else src_tags)
    return result


def copy_all(
    src: Repository,
    dst: Repository,
    stream: str | None = None,
    *,
    dst_stream: str | None = None,
    tags: bool = False,
    threads: int = 8,
    workers: int | None = None,
    executor: str = "auto",
) -> list[CopyResult]:
    """Mirror every visible snapshot of ``stream`` (or of every stream), oldest first.

    Incremental: snapshots copied before are reported as present and cost one listing; one
    older than what the destination already holds is skipped with the reason.
    """
    if dst_stream is not None and stream is None:
        raise ValueError("a destination stream name needs one source stream: pass --stream too")
    src_tags = src.tags() if tags else []
    results: list[CopyResult] = []
    for name in [validate_name(stream)] if stream else src.streams():
        target = dst_stream or name
        history = DestinationHistory.read(dst, target)
        for seq in src.visible_seqs(name):
            sid = SnapshotId(name, seq)
            try:
                results.append(
                    copy_snapshot(
                        src, dst, name, seq, dst_stream=target, tags=tags, threads=threads,
                        history=history, src_tags=src_tags, workers=workers, executor=executor,
                    )
                )
            except CopyOrderError as exc:
                log.warning("skipping %s: %s", sid, exc)
                results.append(CopyResult(SKIPPED, sid, reason=str(exc)))
            except SnapshotNotFoundError as exc:  # forgotten since the listing
                results.append(CopyResult(SKIPPED, sid, reason=str(exc)))
    return results


def _transfer(
    src: Repository,
    dst: Repository,
    manifest: Manifest,
    source: SourceIdentity,
    target: str,
    fork: bool,
    fan: _Fanout,
) -> CopyResult:
    """Write the copy: reuse what the destination has, adopt the rest, commit with the record."""
    sid = manifest.id
    # Within one repository the source snapshot is the parent (resolved visible after the
    # writer's start, docs/protocol.md W1), so every shard is reused at its own key.
    writer = SnapshotWriter.begin(dst, target, manifest.kind, parent=sid if fork else "latest")
    manifest = load_body(Shards(src.store, threads=fan.threads), manifest)
    result = CopyResult(COPIED, sid)
    stats = PackStats(items=len(manifest.items), item_bytes=sum(i.size for i in manifest.items))
    refs: list[ShardRef | None] = [None] * len(manifest.shards)
    todo: list[int] = []
    body = manifest.body_shard  # the writer re-derives a body shard if one is still needed
    for i, ref in enumerate(manifest.shards):
        if i != body:
            known = writer.reuse_index.get(ref.hash)
            if known is None:
                todo.append(i)
            else:
                refs[i] = known
    if todo and not fork:
        orphans = find_young_orphans(
            dst.store,
            dst.config,
            [manifest.shards[i] for i in todo],
            writer.started_at,
            threads=fan.threads,
            workers=fan.workers,
            executor=fan.executor,
        )
        still = []
        for i in todo:
            found = orphans.get(manifest.shards[i].hash)
            if found is None:
                still.append(i)
            else:
                refs[i] = found
                result.resumed_shards += 1
        todo = still
    for ref in refs:
        if ref is not None:
            stats.reused_shards += 1
            stats.reused_bytes += ref.size
            result.reused_shards += 1
            result.reused_bytes += ref.stored_size
    # Each shard is verified before it is uploaded, so a damaged one is never spread.
    pairs = [(i, manifest.shards[i]) for i in todo]
    moved = adopt_shards(
        src.store,
        dst.store,
        pairs,
        snapshot=str(sid),
        threads=fan.threads,
        workers=fan.workers,
        executor=fan.executor,
    )
    for i, new_ref in moved:
        refs[i] = new_ref
        stats.new_shards += 1
        stats.new_bytes += new_ref.size
        stats.stored_bytes += new_ref.stored_size
        result.moved_shards += 1
        result.moved_bytes += new_ref.stored_size
    keep = [i for i in range(len(refs)) if i != body]
    shards = [refs[i] for i in keep]
    items = remap_items(manifest.items, {old: new for new, old in enumerate(keep)})
    writer.add_result(PackResult(shards, items, stats))  # type: ignore[arg-type]
    metadata = {k: v for k, v in manifest.metadata.items() if k != COPIED_FROM}
    metadata[COPIED_FROM] = source.to_json()
    result.info = writer.commit(extra=manifest.extra, metadata=metadata)
    log.info(
        "copied %s to %s as %s: %d shards (%d bytes) moved, %d reused (%d left by an earlier copy)",
        sid,
        dst.url,
        result.info.id,
        result.moved_shards,
        result.moved_bytes,
        result.reused_shards,
        result.resumed_shards,
    )
    return result


def _follow_tags(dst: Repository, sid: SnapshotId, result: CopyResult, src_tags: list[Tag]) -> None:
    """Create the source's tags of ``sid`` at the destination; a name taken there is skipped."""
    if result.info is None:
        return
    wanted = [tag for tag in src_tags if tag.target == sid]
    if not wanted:
        return
    there = {tag.name: tag.target for tag in dst.tags()}
    for tag in wanted:
        if there.get(tag.name) == result.info.id:
            continue  # followed by an earlier run
        try:
            dst.tag(tag.name, result.info.stream, result.info.seq)
            result.tags_copied.append(tag.name)
        except FileExistsError as exc:
            log.warning("tag %r not copied: %s", tag.name, exc)
            result.tags_skipped[tag.name] = str(exc)
