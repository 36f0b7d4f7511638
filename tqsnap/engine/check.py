"""A whole-repository check: structure, references and (a sample of) shard contents.

Like restic's ``check``: every visible snapshot's manifest is parsed, every shard it references
must be listed under ``shards/`` with the stored size the manifest records (one listing of
``shards/`` for the whole repository, never a HEAD per shard), and with ``read_data`` all, or a
sample, of the referenced shards are read and re-hashed. A bad shard is reported once, with every
snapshot and item it breaks, because that is what an operator needs to decide what to restore.

The listing is fanned out (:mod:`.fanout`): only the ``shards/xx/`` prefixes that hold a
referenced shard are listed, several at a time (threads, or Ray tasks on a cluster), and each
piece keeps only the sizes of referenced keys, so memory grows with the references, never with
the garbage or other objects in the bucket. A listing error in any piece stops the check.

The sample is deterministic for ``n/m`` (the shards whose hash falls in bucket ``n`` of ``m``,
so ``1/10`` ... ``10/10`` together read everything once, as restic's ``--read-data-subset``) and
random for ``P%``.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..errors import FormatError, MissingShardError, TqsnapError
from ..format.manifest import Manifest, ShardRef
from ..store.base import ObjectInfo, ObjectStore
from .fanout_sweep import list_prefixes
from .reader import load_body
from .repository import Repository
from .shards import Shards

log = logging.getLogger(__name__)

_FRACTION = re.compile(r"([0-9]{1,6})/([0-9]{1,6})", re.ASCII)
_PERCENT = re.compile(r"([0-9]{1,3}(?:\.[0-9]{1,6})?)%", re.ASCII)


def sample_filter(subset: str | None, *, seed: int | None = None) -> Callable[[ShardRef], bool]:
    """Which shards to read: all (``None``), bucket ``n`` of ``m`` (``"1/10"``), or ``"5%"`` at random."""
    if subset is None:
        return lambda _ref: True
    m = _FRACTION.fullmatch(subset)
    if m:
        n, total = int(m.group(1)), int(m.group(2))
        if not 1 <= n <= total:
            raise ValueError(f"--read-data-subset {subset!r}: write n/m with 1 <= n <= m, e.g. 1/10")
        return lambda ref: int(ref.hash[:8], 16) % total == n - 1
    m = _PERCENT.fullmatch(subset)
    if m:
        share = float(m.group(1)) / 100
        if not 0 < share <= 1:
            raise ValueError(f"--read-data-subset {subset!r}: a percentage in (0, 100]")
        rng = random.Random(seed)
        return lambda _ref: rng.random() < share
    raise ValueError(f"--read-data-subset {subset!r}: use n/m (e.g. 1/10) or a percentage (e.g. 5%)")


@dataclass
class BadShard:
    """One shard that is missing, has the wrong size, or does not hash to its name."""

    key: str
    problem: str
    snapshots: list[str] = field(default_factory=list)
    items: dict[str, list[str]] = field(default_factory=dict)  # snapshot -> item paths

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "problem": self.problem, "snapshots": self.snapshots, "items": self.items}


@dataclass
class CheckReport:
    """What ``check`` looked at and everything it found wrong."""

    url: str
    snapshots: int = 0
    shards_referenced: int = 0
    shards_read: int = 0
    bytes_read: int = 0
    damaged_snapshots: dict[str, str] = field(default_factory=dict)  # snapshot -> why unreadable
    bad_shards: list[BadShard] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.damaged_snapshots and not self.bad_shards

    def to_json(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "ok": self.ok,
            "snapshots": self.snapshots,
            "shards_referenced": self.shards_referenced,
            "shards_read": self.shards_read,
            "bytes_read": self.bytes_read,
            "damaged_snapshots": self.damaged_snapshots,
            "bad_shards": [b.to_json() for b in self.bad_shards],
        }


class _Users:
    """For each shard key: the snapshots and items that use it."""

    def __init__(self) -> None:
        self.refs: dict[str, ShardRef] = {}
        self.by_key: dict[str, dict[str, list[str]]] = {}

    def add(self, m: Manifest) -> None:
        name = str(m.id)
        for ref in m.shards:
            self.refs.setdefault(ref.key, ref)
            self.by_key.setdefault(ref.key, {}).setdefault(name, [])
        for item in m.items:
            for ext in item.extents:
                if 0 <= ext.shard < len(m.shards):
                    paths = self.by_key[m.shards[ext.shard].key][name]
                    if not paths or paths[-1] != item.path:
                        paths.append(item.path)

    def bad(self, key: str, problem: str) -> BadShard:
        users = self.by_key.get(key, {})
        return BadShard(key, problem, sorted(users), {s: p for s, p in sorted(users.items())})


def _prefix_of(key: str) -> str:
    return key.rsplit("/", 1)[0] + "/"


def _wanted_sizes(infos: Iterable[ObjectInfo], wanted: frozenset[str]) -> dict[str, int]:
    """The listed size of each wanted key among ``infos``."""
    return {i.key: i.size for i in infos if i.key in wanted}


def list_referenced(
    store: ObjectStore,
    refs: dict[str, ShardRef],
    *,
    workers: int | None = None,
    executor: str = "auto",
    threads: int = 16,
) -> dict[str, int]:
    """The listed stored size of every referenced key that exists (one listing per prefix).

    Only prefixes that hold a referenced key are listed. Absent keys are absent from the
    result; a listing that cannot see everything raises
    (:class:`~tqsnap.errors.IncompleteListingError`) instead of reporting shards missing.
    """
    by_prefix: dict[str, set[str]] = {}
    for key in refs:
        by_prefix.setdefault(_prefix_of(key), set()).add(key)
    jobs = [(p, frozenset(keys)) for p, keys in sorted(by_prefix.items())]
    return list_prefixes(store, jobs, _wanted_sizes, workers=workers, executor=executor, threads=threads)


def check_repository(
    repo: Repository,
    *,
    read_data: bool = False,
    subset: str | None = None,
    seed: int | None = None,
    progress: Any = None,
    workers: int | None = None,
    executor: str = "auto",
    threads: int = 16,
) -> CheckReport:
    """Check every visible snapshot; with ``read_data`` (or a ``subset``) re-hash shards too.

    ``progress``, if given, gets ``advance(nbytes)`` for each shard read (faces/progress.py).
    ``workers``/``executor``/``threads`` fan the listing out as gc's sweep does
    (:class:`~.gc.GarbageCollector`).
    """
    chosen = sample_filter(subset, seed=seed)  # bad input fails before any request
    report = CheckReport(repo.url)
    users = _Users()
    shards = Shards(repo.store)
    damaged: list[Any] = []
    infos = repo.snapshots(damaged=damaged)
    for sid, exc in damaged:
        report.damaged_snapshots[str(sid)] = str(exc)
    for info in infos:
        try:
            manifest = load_body(shards, repo.load_manifest(info.stream, info.seq))
        except (FormatError, TqsnapError) as exc:
            report.damaged_snapshots[f"{info.stream}@{info.seq}"] = str(exc)
            continue
        report.snapshots += 1
        users.add(manifest)
    report.shards_referenced = len(users.refs)

    listed = list_referenced(repo.store, users.refs, workers=workers, executor=executor, threads=threads)
    present: dict[str, ShardRef] = {}
    for key, ref in users.refs.items():
        if key not in listed:
            report.bad_shards.append(users.bad(key, "missing"))
        elif listed[key] != ref.stored_size:
            report.bad_shards.append(users.bad(key, f"stored size {listed[key]}, manifest says {ref.stored_size}"))
        else:
            present[key] = ref

    if read_data or subset is not None:
        wanted = [(k, r) for k, r in sorted(present.items()) if chosen(r)]
        if progress is not None:
            progress.start(total=sum(r.size for _, r in wanted), what="reading shards")
        for key, outcome in shards.get_many(wanted, return_exceptions=True):
            ref = present[key]
            report.shards_read += 1
            if isinstance(outcome, MissingShardError):
                report.bad_shards.append(users.bad(key, "missing"))
            elif isinstance(outcome, Exception):
                report.bad_shards.append(users.bad(key, f"corrupt: {outcome}"))
            else:
                report.bytes_read += ref.size
            if progress is not None:
                progress.advance(ref.size)
    log.info(
        "check of %s: %d snapshots, %d shards referenced, %d read, %d bad",
        repo.url,
        report.snapshots,
        report.shards_referenced,
        report.shards_read,
        len(report.bad_shards),
    )
    return report
