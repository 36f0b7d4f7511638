"""Job snapshots: several parts staged anywhere, committed as ONE manifest (docs/job.md).

A training job's state lives in several processes: DCP ranks hold the model and optimizer, a
TransferQueue holds the data, the driver holds the loop state. Each part is *staged* where
it lives: its shards are uploaded through the ordinary packer (deduplicated against the same
part of the parent snapshot) and the stager returns a :class:`StagedPart`, a small picklable
description (references only, never tensor bytes). The driver gathers the parts and
:func:`commit_job` commits them with the ordinary exactly-once commit
(:class:`~tqsnap.engine.commit.Committer`) as one manifest of kind ``job``
(:mod:`tqsnap.format.job`). Until that put lands nothing is visible; a crash anywhere leaves
only unreferenced shards, which gc collects after the grace period.

The protocol (docs/protocol.md, "Staged parts"):

- **J1, the clock.** Every stage reads the server time (``staged_at``) before it checks its
  parent or uploads anything. The job's ``started_at`` is the earliest ``staged_at`` of its
  parts, and :func:`commit_job` refuses past ``started_at + max_write_duration`` with
  :class:`~tqsnap.errors.JobDeadlineExceededError`: the writer deadline covers the whole
  job, from its first staged shard.
- **J2, the parent.** A stage reuses parent shards only if the parent is still visible at
  its own ``staged_at`` (checked after reading the clock), so a parent forgotten between
  ``begin`` and a late stage is not reused; reused keys are confirmed with a HEAD before the
  commit (:mod:`.shard_confirm`), as for any save.
- **J3, the commit.** One put-if-absent of one manifest carrying the job id as its
  ``write_id``, so a lost reply is resolved by reading back, exactly as for a single save.

Only small descriptions travel: a :class:`JobToken` (a short string) to the stagers, a
:class:`StagedPart` back to the driver.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from ..errors import JobDeadlineExceededError, JobError, MissingShardError, SnapshotNotFoundError
from ..format.job import JOB_KIND, JobHeader, JobPart, part_item_path, validate_part_name
from ..format.keys import validate_name
from ..format.manifest import ShardRef, SnapshotId
from .packer import PackOptions, PackResult, ShardPacker, merge_results
from .reader import load_body
from .repository import Repository, SnapshotInfo
from .shard_confirm import unconfirmed
from .writer import SnapshotWriter, resolve_parent

log = logging.getLogger(__name__)

TOKEN_PREFIX = "tqsnap-job-1."
#: A token is a few hundred bytes; anything much longer is not one of ours.
MAX_TOKEN_CHARS = 4096


@dataclass(frozen=True)
class JobToken:
    """What a stager on another process must know of its job: id, stream, parent, begin time.

    Encoded as ``tqsnap-job-1.<base64url(JSON)>`` so it passes through environment variables,
    command lines and Ray calls unchanged. It names no repository and holds no credentials.
    """

    job_id: str
    stream: str
    parent: SnapshotId | None
    began_at: float

    def encode(self) -> str:
        doc = {
            "job": self.job_id,
            "stream": self.stream,
            "parent": self.parent.to_json() if self.parent else None,
            "began_at": self.began_at,
        }
        raw = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()
        return TOKEN_PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str) -> JobToken:
        """Parse a token; anything else is a :class:`~tqsnap.errors.JobError` saying where tokens come from."""
        if isinstance(token, JobToken):
            return token
        hint = "pass job.token from tqsnap.job.begin(...) on the driver"
        if not isinstance(token, str) or not token.startswith(TOKEN_PREFIX) or len(token) > MAX_TOKEN_CHARS:
            raise JobError(f"{str(token)[:60]!r} is not a job token; {hint}")
        body = token[len(TOKEN_PREFIX) :]
        try:
            doc = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
            parent = doc["parent"]
            result = cls(
                str(doc["job"]),
                validate_name(doc["stream"]),
                SnapshotId(validate_name(parent["stream"]), int(parent["seq"])) if parent else None,
                float(doc["began_at"]),
            )
        except (binascii.Error, ValueError, KeyError, TypeError) as exc:
            raise JobError(f"job token {token[:60]!r} is damaged ({exc}); {hint}") from None
        if len(result.job_id) != 32 or any(c not in "0123456789abcdef" for c in result.job_id):
            raise JobError(f"job token {token[:60]!r} has a malformed job id; {hint}")
        return result


def stage_part_name(stage: str | None, part: str | None, stream: str, caller: str) -> str | None:
    """The part name a checkpoint writer (``caller``) stages under, checked when it is built.

    ``stage`` is a job token: it must decode and name ``stream``, so a bad token fails on every
    rank before a save starts; ``part`` defaults to ``"trainer"``. Without ``stage`` there is
    no part (a plain save), and a ``part`` alone is refused rather than ignored.
    """
    if stage is None:
        if part is not None:
            raise JobError(f"{caller}(part=...) needs stage=job.token: a part belongs to a job snapshot")
        return None
    token = JobToken.decode(stage)
    name = validate_part_name(part or "trainer")
    if token.stream != stream:
        raise JobError(
            f"{caller}(stream={stream!r}) was given the token of a job on stream "
            f"{token.stream!r}; give it the job's stream"
        )
    return name


@dataclass
class StagedPart:
    """One part's shards, uploaded but not committed: what a stager hands the driver.

    ``pack`` holds only references (shard keys and item extents); ``reused`` indexes the
    shards taken from the parent, which the commit confirms exist; ``staged_at`` is the
    server time read before the first shard was uploaded (rule J1).
    """

    job_id: str
    part: str
    kind: str
    header: dict[str, Any]
    pack: PackResult
    staged_at: float
    reused: list[int] = field(default_factory=list)
    parent: SnapshotId | None = None
    #: Seconds from the stage's begin to its finish, in the staging process.
    stage_s: float = 0.0
    #: The adapter's own numbers (a queue's unit stalls), kept in the part's stats.
    extra_stats: dict[str, Any] = field(default_factory=dict)

    @property
    def stats(self) -> dict[str, Any]:
        return self.pack.stats.to_json() | dict(self.extra_stats) | {"stage_s": round(self.stage_s, 6)}

    def __repr__(self) -> str:
        s = self.pack.stats
        return (
            f"StagedPart({self.part!r}, kind={self.kind!r}, items={s.items}, "
            f"new_bytes={s.new_bytes}, reused_bytes={s.reused_bytes})"
        )


def begin_job(repo: Repository, stream: str, parent: SnapshotId | str | None = "latest") -> JobToken:
    """Start a job snapshot of ``stream``: a fresh id, the parent to deduplicate against."""
    validate_name(stream)
    began_at = repo.store.now()
    parent_id = resolve_parent(repo, stream, parent)
    token = JobToken(secrets.token_hex(16), stream, parent_id, began_at)
    log.debug("job %s of %s begins, parent %s", token.job_id, stream, parent_id)
    return token


def part_reuse_index(
    repo: Repository, parent: SnapshotId | None, part: str, *, check_visible: bool = True
) -> tuple[dict[str, ShardRef], frozenset[str]]:
    """The parent's shards to deduplicate ``part`` against, and every shard key of the parent.

    A job parent offers the shards of its part of the same name (all of its shards if it has
    no such part); a single-kind parent offers all of its shards. A parent that is no longer
    visible offers nothing (rule J2: call this after reading the stage's clock).
    ``check_visible=False`` skips that check: the protocol simulation's broken variant only.
    """
    if parent is None:
        return {}, frozenset()
    try:
        sid = repo.resolve(parent.stream, parent.seq) if check_visible else parent
        manifest = repo.load_manifest(sid.stream, sid.seq)
    except SnapshotNotFoundError:
        log.warning("parent %s was forgotten before part %r was staged; uploading all of it", parent, part)
        return {}, frozenset()
    if manifest.kind == JOB_KIND:
        load_body(repo.store, manifest)
    keys = frozenset(ref.key for ref in manifest.shards)
    refs = manifest.shards
    if manifest.kind == JOB_KIND and part in JobHeader.from_manifest(manifest).parts:
        prefix = f"{part}/"
        used = {e.shard for item in manifest.items if item.path.startswith(prefix) for e in item.extents}
        refs = [manifest.shards[i] for i in sorted(used)]
    return {ref.hash: ref for ref in refs}, keys


class PartStager:
    """Stage one part of a job in this process: packers in, a :class:`StagedPart` out.

    ``begin`` reads the server clock first (J1), then the parent (J2). Packers made by
    :meth:`packer` may run in other processes too (their :class:`PackResult` comes back
    through :meth:`add_result`); only :meth:`finish` runs here.
    """

    #: Rule J2. The protocol simulation turns it off to show it is needed; nothing else does.
    _check_parent_visible: bool = True

    def __init__(
        self,
        repo: Repository,
        token: JobToken,
        part: str,
        kind: str,
        *,
        staged_at: float,
        reuse_index: dict[str, ShardRef],
        parent_keys: frozenset[str],
        options: PackOptions | None = None,
    ) -> None:
        self.repo = repo
        self.token = token
        self.part = validate_part_name(part)
        self.kind = kind
        self.staged_at = staged_at
        self.reuse_index = reuse_index
        self.parent_keys = parent_keys
        self.options = options or PackOptions()
        self._results: list[PackResult] = []
        self._t0 = time.monotonic()

    @classmethod
    def begin(
        cls,
        repo: Repository,
        token: JobToken | str,
        part: str,
        kind: str,
        *,
        stream: str | None = None,
        options: PackOptions | None = None,
    ) -> PartStager:
        token = JobToken.decode(token)
        validate_part_name(part)
        if kind == JOB_KIND:
            raise JobError(f"part {part!r} cannot be of kind {JOB_KIND!r}: jobs do not nest")
        if stream is not None and stream != token.stream:
            raise JobError(
                f"part {part!r} is staged for stream {stream!r}, but job {token.job_id} snapshots stream "
                f"{token.stream!r}; give the writer the job's stream"
            )
        staged_at = repo.store.now()  # J1: before the parent check and before any upload
        reuse, keys = part_reuse_index(repo, token.parent, part, check_visible=cls._check_parent_visible)
        bad = unconfirmed(repo.store, reuse.values(), repo.config.grace / 2)
        for ref, why in bad:
            log.warning("parent %s: shard %s fails its check (%s); uploading it again", token.parent, ref.key, why)
            reuse.pop(ref.hash, None)
        return cls(
            repo, token, part, kind, staged_at=staged_at, reuse_index=reuse, parent_keys=keys, options=options
        )

    @property
    def deadline(self) -> float:
        """The latest server time at which a job holding this part may commit."""
        return self.staged_at + self.repo.config.max_write_duration

    def packer(self) -> ShardPacker:
        return ShardPacker(self.repo.store, self.reuse_index, self.options)

    def add_result(self, result: PackResult) -> None:
        self._results.append(result)

    def finish(self, header: dict[str, Any], *, stats: dict[str, Any] | None = None) -> StagedPart:
        """The staged part: merged references, the kind header, which shards came from the parent."""
        pack = merge_results(self._results)
        reused = [i for i, ref in enumerate(pack.shards) if ref.key in self.parent_keys]
        staged = StagedPart(
            self.token.job_id,
            self.part,
            self.kind,
            dict(header),
            pack,
            self.staged_at,
            reused,
            self.token.parent if self.parent_keys else None,
            time.monotonic() - self._t0,
            dict(stats or {}),
        )
        log.info(
            "staged part %r of job %s: %d new shards (%d bytes), %d reused",
            self.part,
            self.token.job_id,
            pack.stats.new_shards,
            pack.stats.stored_bytes,
            pack.stats.reused_shards,
        )
        return staged


def check_part(token: JobToken, name: str, staged: StagedPart) -> None:
    """Refuse a staged part of another job or under another name, before anything is committed."""
    if not isinstance(staged, StagedPart):
        raise JobError(f"part {name!r}: expected a StagedPart, got {type(staged).__name__}")
    if staged.job_id != token.job_id:
        raise JobError(
            f"part {name!r} was staged for job {staged.job_id}, not for this job ({token.job_id}); "
            "stage it again with this job's token"
        )
    if staged.part != name:
        raise JobError(f"part staged as {staged.part!r} was added as {name!r}; add it under its own name")


def first_staged(parts: dict[str, StagedPart]) -> str:
    """The part whose staging began first: its ``staged_at`` starts the job's clock (rule J1)."""
    return min(sorted(parts), key=lambda n: parts[n].staged_at)


def commit_job(
    repo: Repository,
    token: JobToken,
    parts: dict[str, StagedPart],
    *,
    metadata: dict[str, Any] | None = None,
    max_attempts: int = 50,
    writer_class: type[SnapshotWriter] = SnapshotWriter,
) -> SnapshotInfo:
    """Commit every staged part as ONE ``job`` manifest (J3), or raise with nothing visible.

    ``writer_class`` is for the protocol simulation, which swaps in a writer without a deadline.
    """
    if not parts:
        raise JobError(f"job {token.job_id} of stream {token.stream!r} has no parts; add at least one before commit")
    for name, staged in parts.items():
        check_part(token, name, staged)
    names = sorted(parts)
    first = first_staged(parts)
    started_at = parts[first].staged_at
    writer = writer_class(
        repo,
        token.stream,
        JOB_KIND,
        parent=token.parent,
        parent_manifest=None,
        started_at=started_at,
        options=PackOptions(),
    )
    now = repo.store.now()
    if now > writer.deadline:
        raise JobDeadlineExceededError(
            f"job {token.job_id} of stream {token.stream!r}: part {first!r} was staged at {started_at:.0f} and "
            f"the job ran past the writer deadline ({repo.config.max_write_duration:g}s, server time now "
            f"{now:.0f}); nothing was committed and the staged shards will be collected by gc. "
            "Take the job snapshot again"
        )
    _confirm_reused(repo, token, parts)
    merged = merge_results([_prefixed(parts[n]) for n in names])
    header = JobHeader(
        token.job_id,
        {
            n: JobPart(n, parts[n].kind, parts[n].header, parts[n].stats, parts[n].staged_at, len(parts[n].pack.items))
            for n in names
        },
    )
    writer.write_id = token.job_id  # a lost reply is resolved by this id (J3)
    writer._t0 = time.monotonic() - max(0.0, now - started_at)  # the job's clock, not this call's
    writer.add_result(merged)
    # stats.parts (name -> kind) lets listings show a job's parts without reading its body.
    parts_stat = {n: parts[n].kind for n in names}
    info = writer.commit(
        extra={"job": header.to_json()}, metadata=metadata, max_attempts=max_attempts, stats={"parts": parts_stat}
    )
    log.info("committed job %s as %s@%d with parts %s", token.job_id, info.stream, info.seq, ", ".join(names))
    return info


def _prefixed(staged: StagedPart) -> PackResult:
    """The part's references with its items renamed ``<part>/<path>``."""
    items = [dataclasses.replace(i, path=part_item_path(staged.part, i.path)) for i in staged.pack.items]
    return PackResult(list(staged.pack.shards), items, staged.pack.stats)


def _confirm_reused(repo: Repository, token: JobToken, parts: dict[str, StagedPart]) -> None:
    """Refuse to commit a reference to a parent shard that is absent or of the wrong size."""
    reused = [s.pack.shards[i] for s in parts.values() for i in s.reused if 0 <= i < len(s.pack.shards)]
    bad = unconfirmed(repo.store, reused, repo.config.grace / 2)
    if bad:
        ref, why = bad[0]
        raise MissingShardError(
            ref.key,
            f"{token.parent}, this job's parent ({why}; {len(bad)} such shards). Nothing was committed: "
            "take the job snapshot again from a full upload (parent=None) and run `tqsnap verify`",
        )
