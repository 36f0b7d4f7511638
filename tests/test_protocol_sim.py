"""A deterministic simulation of the commit + forget + gc protocol (docs/protocol.md).

Actors are generators that do one protocol step per ``next()``: writers (the real
:class:`SnapshotWriter` and :class:`ShardPacker`, cut into begin+pack / one PUT per shard /
commit), job writers (the real :class:`~tqsnap.engine.job.PartStager` and
:func:`~tqsnap.engine.job.commit_job`, cut into begin / stage each part / one PUT per shard /
commit, the driver free to stall between stages), ``forget`` (plan, then tombstones) and gc (the real :class:`GarbageCollector`, cut into
its four steps). A seed picks which actor moves next, how far the fake clock jumps, which
writers crash (before any step, or right after their manifest lands) and which lose the reply
to their commit. All actors share one :class:`MemoryStore` whose LastModified comes from the
fake clock; writers and gc read it through small, bounded clock skews.

Invariants, checked after every step and at the end of every schedule:

- no shard referenced by a visible manifest, or by one tombstoned less than ``grace`` ago, is
  missing;
- every visible snapshot restores byte-exact (the writer recorded what it saved);
- the newest manifest of a stream is never tombstoned;
- once everything is quiet and old, gc leaves no unreferenced shard and no finalisable
  manifest behind.

The suite proves its own sensitivity: each protocol rule can be switched off in a
simulation-only :class:`Protocol`, and a test per rule shows that a targeted schedule (and,
where they find it, random schedules) then breaks the invariant.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

import tqsnap.engine.job as job_module
import tqsnap.engine.shards as shards_module
import tqsnap.engine.writer as writer_module
from tqsnap.engine import PackOptions, Repository, ShardPacker, SnapshotReader, SnapshotWriter
from tqsnap.engine.gc import GarbageCollector
from tqsnap.engine.job import PartStager, StagedPart, begin_job, commit_job
from tqsnap.engine.retention import RetentionPolicy, plan_forget
from tqsnap.errors import CommitOutcomeUnknownError, StoreError, WriteDeadlineExceededError
from tqsnap.format.keys import (
    SHARDS_PREFIX,
    SNAPSHOTS_PREFIX,
    TOMBSTONES_PREFIX,
    parse_stream_key,
)
from tqsnap.format.manifest import Manifest, SnapshotId
from tqsnap.store import MemoryStore, ObjectStore
from tqsnap.store.base import Buffer, ObjectInfo

GRACE = 25.0
MAX_WRITE = 10.0
MAX_SKEW = 0.5  # each actor's clock is off by at most this much (the protocol's margin absorbs it)
TINY = PackOptions(
    chunk_size=64, pack_size=64, small_item=32, pack_cut_mask=0x3, codec="raw", upload_threads=1
)
#: Random schedules the main promise runs: 2000, or 500 under ``CI=true`` (seeds 0-499 already
#: exceed every coverage floor of that test, and the rule-removal searches below run in full
#: either way). ``TQSNAP_SIM_SCHEDULES=2000`` restores the full run anywhere.
SCHEDULES = int(
    os.environ.get("TQSNAP_SIM_SCHEDULES") or (500 if os.environ.get("CI", "").lower() == "true" else 2000)
)


# --- the knobs: which protocol rules hold ------------------------------------------------------


@dataclass(frozen=True)
class Protocol:
    """The rules docs/protocol.md needs; a test switches one off to show it is needed."""

    fresh_keys: bool = True  # writers upload to <hash>.<upload-id>, never to a reused key
    deadline: bool = True  # writers refuse to commit after started_at + max_write_duration
    grace_check: bool = True  # gc deletes only shards older than T - grace
    young_tombstones: bool = True  # manifests tombstoned less than grace ago still protect shards
    job_clock_first: bool = True  # J1: a job's clock starts when its FIRST part began staging
    stage_checks_parent: bool = True  # J2: a stage reuses the parent only if it is visible then

    def gc_class(self) -> type[GarbageCollector]:
        return type(
            "SimGarbageCollector",
            (GarbageCollector,),
            {"_require_age": self.grace_check, "_young_tombstones_protect": self.young_tombstones},
        )

    def writer_class(self) -> type[SnapshotWriter]:
        return SnapshotWriter if self.deadline else _NoDeadlineWriter

    def stager_class(self) -> type[PartStager]:
        return PartStager if self.stage_checks_parent else _BlindStager


SAFE = Protocol()


class _NoDeadlineWriter(SnapshotWriter):
    """A writer that ignores its deadline (simulation only)."""

    @property
    def deadline(self) -> float:
        return math.inf


class _BlindStager(PartStager):
    """A stage that reuses the job's parent without checking it is still visible (simulation only)."""

    _check_parent_visible = False


@contextmanager
def _job_clock_from_last(enabled: bool) -> Iterator[None]:
    """With ``enabled``, a job's clock starts at its LAST part's staging (simulation only)."""
    if not enabled:
        yield
        return
    original = job_module.first_staged
    job_module.first_staged = lambda parts: max(sorted(parts), key=lambda n: parts[n].staged_at)  # type: ignore[assignment]
    try:
        yield
    finally:
        job_module.first_staged = original


@contextmanager
def _content_keys(enabled: bool) -> Iterator[None]:
    """With ``enabled``, every upload of the same bytes goes to the same key (simulation only)."""
    if not enabled:
        yield
        return
    original = shards_module.secrets
    shards_module.secrets = SimpleNamespace(token_hex=lambda n: "0" * (2 * n))  # type: ignore[assignment]
    try:
        yield
    finally:
        shards_module.secrets = original


@contextmanager
def _writer_waits_in_sim_time(sim: Sim) -> Iterator[None]:
    """A writer's retry backoff passes on the fake clock, with jitter drawn from the seed."""
    original_time, original_random = writer_module.time, writer_module.random
    writer_module.time = SimpleNamespace(sleep=sim.advance, monotonic=time.monotonic)  # type: ignore[assignment]
    writer_module.random = sim.rng  # type: ignore[assignment]
    try:
        yield
    finally:
        writer_module.time, writer_module.random = original_time, original_random


# --- stores and packers the actors see -----------------------------------------------------------


class Crash(BaseException):
    """The actor's process dies here (after the request it was making landed)."""


class ActorStore(ObjectStore):
    """One actor's view of the shared store: a skewed clock and, for writers, commit mishaps.

    ``commit_mishap`` applies to the next manifest put-if-absent: ``"lost"`` (it lands, the reply
    is lost: a StoreError), ``"412"`` (it lands, a retry of the request answers "exists"),
    ``"crash"`` (it lands, then the writer dies) or ``"fail"`` (it never lands: a StoreError).
    """

    def __init__(
        self,
        inner: ObjectStore,
        skew: float,
        rng: random.Random | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.inner, self.skew, self.rng, self.url = inner, skew, rng, inner.url
        self.on_change = on_change or (lambda: None)
        self.commit_mishap: str | None = None

    def get(self, key: str) -> bytes:
        return self.inner.get(key)

    def get_range(self, key: str, start: int, length: int) -> bytes:
        return self.inner.get_range(key, start, length)

    def put(self, key: str, data: Buffer) -> None:
        self.inner.put(key, data)

    def put_if_absent(self, key: str, data: Buffer) -> bool:
        mishap, self.commit_mishap = (
            (self.commit_mishap, None) if key.startswith(SNAPSHOTS_PREFIX) else (None, None)
        )
        if mishap == "fail":
            raise StoreError(f"simulated: the request for {key} was lost")
        created = self.inner.put_if_absent(key, data)
        self.on_change()
        if mishap == "crash" and created:
            raise Crash
        if mishap == "lost" and created:
            raise StoreError(f"simulated: the reply for {key} was lost")
        if mishap == "412":
            return False
        return created

    def head(self, key: str) -> ObjectInfo | None:
        return self.inner.head(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)

    def delete_many(self, keys: Any) -> int:
        self.on_change()
        return self.inner.delete_many(keys)

    def now(self) -> float:
        """The store's time as this actor estimates it: a fixed offset plus per-reading jitter."""
        jitter = self.rng.uniform(-MAX_SKEW / 2, MAX_SKEW / 2) if self.rng else 0.0
        return self.inner.now() + self.skew + jitter


class DeferredStore(ActorStore):
    """Collects a packer's uploads so the simulation can perform them one step at a time."""

    def __init__(self, inner: ObjectStore) -> None:
        super().__init__(inner, 0.0)
        self.queued: list[tuple[str, bytes]] = []

    def put(self, key: str, data: Buffer) -> None:
        self.queued.append((key, bytes(data)))


class _InlineExecutor:
    """Runs submitted work at once: the simulation owns every interleaving."""

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args))
        except Exception as exc:  # noqa: BLE001 - handed to the caller through the future
            future.set_exception(exc)
        return future

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        pass


class InlinePacker(ShardPacker):
    """The real packer (cutting, hashing, reuse, fresh keys) without its upload threads."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pool.shutdown()
        self._pool = _InlineExecutor()  # type: ignore[assignment]


class SequentialReader(SnapshotReader):
    """The real reader (extents, decoding, hash checks) fetching shards in this thread."""

    def __init__(self, store: Any, manifest: Any) -> None:
        super().__init__(store, manifest, threads=0)


# --- the world and its actors --------------------------------------------------------------------


class Violation(AssertionError):
    """An invariant broke; the message carries the schedule that broke it."""


class FakeClock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


Step = Iterator[str]


@dataclass
class Sim:
    """One simulated repository with its actors, driven step by step."""

    protocol: Protocol = SAFE
    seed: int = 0
    #: Also require young-tombstoned snapshots to stay whole; the sensitivity tests turn this off
    #: to show the harm a weakened rule does to snapshots users can see.
    check_young_tombstoned: bool = True
    clock: FakeClock = field(default_factory=FakeClock)
    actors: dict[str, Step] = field(default_factory=dict)
    expected: dict[str, dict[str, bytes]] = field(default_factory=dict)  # write_id -> items
    trace: list[str] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)
    busy: set[str] = field(default_factory=set)  # writers between begin and commit
    dirty: bool = False  # a delete or a conditional create happened since the last check

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.store = MemoryStore(clock=self.clock)
        self.repo = Repository.init(self.store, grace=GRACE, max_write_duration=MAX_WRITE)
        self._decoded: dict[str, tuple[bytes, Manifest]] = {}

    # --- driving ---

    def repo_view(self, skew: float) -> tuple[Repository, ActorStore]:
        view = ActorStore(self.store, skew, self.rng if skew else None, self._changed)
        return Repository(view, self.repo.config), view

    def _changed(self) -> None:
        self.dirty = True

    def spawn(self, name: str, actor: Step) -> None:
        self.actors[name] = actor

    def count(self, what: str) -> None:
        self.stats[what] = self.stats.get(what, 0) + 1

    def advance(self, dt: float) -> None:
        self.clock.t += dt

    def step(self, name: str, dt: float = 0.0) -> bool:
        """Advance the clock by ``dt``, move actor ``name`` one step, check; False when it ended."""
        self.advance(dt)
        actor = self.actors[name]
        try:
            label = next(actor)
        except StopIteration:
            del self.actors[name]
            return False
        self.trace.append(f"t+{self.clock.t - 1_000_000.0:7.2f} {name}: {label}")
        self.check()
        return True

    def crash(self, name: str) -> None:
        self.actors.pop(name).close()
        self.busy.discard(name)
        self.trace.append(f"t+{self.clock.t - 1_000_000.0:7.2f} {name}: CRASH")
        self.count("crashes")

    def run(self, name: str) -> None:
        while self.step(name):
            pass

    # --- invariants ---

    def manifest(self, key: str) -> Manifest | None:
        try:
            raw = self.store.get(key)
        except Exception:  # noqa: BLE001 - finalised meanwhile
            return None
        cached = self._decoded.get(key)
        if cached is None or cached[0] is not raw:
            cached = (raw, Manifest.decode(raw, key))
            self._decoded[key] = cached
        return cached[1]

    def fail(self, what: str) -> None:
        tail = "\n".join(self.trace[-40:])
        raise Violation(f"{what}\nprotocol={self.protocol} seed={self.seed}\nlast steps:\n{tail}")

    def state(self) -> tuple[dict[tuple[str, int], str], dict[tuple[str, int], float], set[str]]:
        """Manifests, tombstones (with LastModified) and shard keys, from one listing."""
        manifests, stones, shards = {}, {}, set()
        for info in self.store.list():
            if info.key.startswith(SHARDS_PREFIX):
                shards.add(info.key)
            elif sid := parse_stream_key(info.key, SNAPSHOTS_PREFIX):
                manifests[sid] = info.key
            elif sid := parse_stream_key(info.key, TOMBSTONES_PREFIX):
                stones[sid] = info.last_modified
        return manifests, stones, shards

    def check(self) -> None:
        """After every step: nothing a visible or young-tombstoned snapshot references is gone.

        Shards vanish only in a delete, and manifests and tombstones appear only by conditional
        create, so a step that did neither cannot break the invariant and is not re-checked.
        """
        if not self.dirty:
            return
        self.dirty = False
        manifests, stones, shards = self.state()
        now = self.clock.t
        newest: dict[str, int] = {}
        for stream, seq in manifests:
            newest[stream] = max(seq, newest.get(stream, 0))
        for sid, key in manifests.items():
            stone = stones.get(sid)
            if stone is not None and (not self.check_young_tombstoned or now - stone >= GRACE - 2 * MAX_SKEW):
                continue  # forgotten long enough ago: gc may reclaim it
            m = self.manifest(key)
            if m is None:
                continue
            missing = [ref.key for ref in m.shards if ref.key not in shards]
            if missing:
                state = "visible" if stone is None else "young-tombstoned"
                self.fail(f"{state} snapshot {sid[0]}@{sid[1]} lost shards {missing}")
            if stone is not None and sid[1] == newest[sid[0]]:
                self.fail(f"the newest snapshot of stream {sid[0]} was tombstoned")

    def check_restores(self) -> None:
        """Every visible snapshot restores byte-exact."""
        manifests, stones, _ = self.state()
        for sid, key in sorted(manifests.items()):
            if sid in stones:
                continue
            m = self.manifest(key)
            assert m is not None
            want = self.expected.get(m.write_id)
            if want is None:
                self.fail(f"visible snapshot {sid} was written by no writer ({m.write_id})")
            try:
                got = {p: bytes(v) for p, v in SequentialReader(self.store, m).read_items().items()}
            except Exception as exc:  # noqa: BLE001 - any failure to restore is the violation
                self.fail(f"visible snapshot {sid[0]}@{sid[1]} does not restore: {exc}")
            if got != want:
                self.fail(f"visible snapshot {sid[0]}@{sid[1]} restores different bytes")
            self.count("restored")

    def check_quiescent_cleanup(self) -> None:
        """With every actor gone and time past grace twice, gc leaves only referenced shards."""
        for _ in range(2):
            self.advance(GRACE + 2 * MAX_SKEW + 1)
            GarbageCollector(self.repo, threads=1, prefixes=[SHARDS_PREFIX]).run()
        manifests, stones, shards = self.state()
        referenced: set[str] = set()
        newest: dict[str, int] = {}
        for stream, seq in manifests:
            newest[stream] = max(seq, newest.get(stream, 0))
        for sid, key in manifests.items():
            if sid in stones and sid[1] != newest[sid[0]]:
                self.fail(f"gc left forgotten snapshot {sid} behind")
            m = self.manifest(key)
            if m is not None and sid not in stones:
                referenced.update(ref.key for ref in m.shards)
        if shards - referenced:
            self.fail(f"gc left {len(shards - referenced)} unreferenced old shards behind")
        if set(stones) - set(manifests):
            self.fail("gc left tombstones without manifests behind")


# --- actors --------------------------------------------------------------------------------------

Content = dict[str, bytes]


def random_content(rng: random.Random, previous: Content | None) -> Content:
    """A few items, most unchanged from the previous save (so shards are reused)."""
    out: Content = {}
    for i in range(rng.randint(2, 5)):
        path = f"item{i}"
        if previous and path in previous and rng.random() < 0.7:
            out[path] = previous[path]
        else:
            out[path] = rng.randbytes(rng.choice((8, 20, 40, 100)))
    return out


def writer(
    sim: Sim,
    name: str,
    stream: str,
    contents: list[Content],
    *,
    fork_from: str | None = None,
    skew: float = 0.0,
    mishaps: dict[int, str] | None = None,
) -> Step:
    """Saves each of ``contents`` to ``stream`` as begin+pack, one step per PUT, then commit."""
    repo, view = sim.repo_view(skew)
    writer_cls = sim.protocol.writer_class()
    for n, content in enumerate(contents):
        parent: Any = "latest"
        if fork_from is not None and not repo.visible_seqs(stream):
            visible = repo.visible_seqs(fork_from)
            parent = SnapshotId(fork_from, visible[-1]) if visible else None
        w = writer_cls.begin(repo, stream, "sim", parent=parent, options=TINY)
        sim.expected[w.write_id] = content
        sim.busy.add(name)
        deferred = DeferredStore(sim.store)
        with _content_keys(not sim.protocol.fresh_keys):
            packer = InlinePacker(deferred, w.reuse_index, TINY)
            for path, data in content.items():
                packer.add(path, data)
            w.add_result(packer.finish())
        yield f"begin save {n} (parent {w.parent}, {len(deferred.queued)} uploads)"
        for key, data in deferred.queued:
            view.put(key, data)
            yield f"put {key}"
        view.commit_mishap = (mishaps or {}).get(n)
        sim.busy.discard(name)
        try:
            with _writer_waits_in_sim_time(sim):
                info = w.commit()
        except WriteDeadlineExceededError:
            sim.count("deadline aborts")
            yield "commit refused: past deadline"
            continue
        except CommitOutcomeUnknownError:  # past the deadline with a lost reply: it may have landed
            sim.count("deadline with unknown outcome")
            yield "commit outcome unknown: past deadline"
            continue
        except Crash:
            sim.count("crash after commit landed")
            return
        sim.count("commits")
        yield f"commit {info.stream}@{info.seq}"


Job = dict[str, Content]  # part name -> that part's items


def job_writer(
    sim: Sim,
    name: str,
    stream: str,
    jobs: list[Job],
    *,
    skew: float = 0.0,
    mishaps: dict[int, str] | None = None,
) -> Step:
    """Each job: begin, then per part a stage step and one step per PUT, then one commit.

    The parts are staged one after another with the driver free to stall between them, as
    when DCP ranks, a TransferQueue and the driver stage in turn.
    """
    repo, view = sim.repo_view(skew)
    stager_cls = sim.protocol.stager_class()
    for n, parts in enumerate(jobs):
        token = begin_job(repo, stream)
        sim.expected[token.job_id] = {f"{p}/{path}": data for p, c in parts.items() for path, data in c.items()}
        sim.busy.add(name)
        yield f"begin job {n} (parent {token.parent})"
        staged: dict[str, StagedPart] = {}
        for part, content in parts.items():
            stager = stager_cls.begin(repo, token, part, "sim", options=TINY)
            deferred = DeferredStore(sim.store)
            with _content_keys(not sim.protocol.fresh_keys):
                packer = InlinePacker(deferred, stager.reuse_index, TINY)
                for path, data in content.items():
                    packer.add(path, data)
                stager.add_result(packer.finish())
            staged[part] = stager.finish({})
            yield f"stage part {part} of job {n} ({len(deferred.queued)} uploads, {len(stager.reuse_index)} reusable)"
            for key, data in deferred.queued:
                view.put(key, data)
                yield f"put {key}"
        view.commit_mishap = (mishaps or {}).get(n)
        sim.busy.discard(name)
        try:
            with _writer_waits_in_sim_time(sim), _job_clock_from_last(not sim.protocol.job_clock_first):
                info = commit_job(repo, token, staged, writer_class=sim.protocol.writer_class())
        except WriteDeadlineExceededError:  # JobDeadlineExceededError included
            sim.count("deadline aborts")
            sim.count("job deadline aborts")
            yield "job commit refused: past deadline"
            continue
        except CommitOutcomeUnknownError:
            sim.count("deadline with unknown outcome")
            yield "job commit outcome unknown: past deadline"
            continue
        except Crash:
            sim.count("crash after commit landed")
            return
        sim.count("commits")
        sim.count("job commits")
        yield f"commit job {info.stream}@{info.seq}"


def forgetter(
    sim: Sim, runs: int, *, skew: float = 0.0, policies: list[RetentionPolicy] | None = None, idle: int = 0
) -> Step:
    """Plans a retention policy, then writes its tombstones in a later step."""
    repo, _ = sim.repo_view(skew)
    for n in range(runs):
        yield from _idle(sim, idle)
        policy = (policies or [])[n] if policies else _random_policy(sim.rng)
        _, decisions = plan_forget(repo, policy)
        yield f"forget plan ({policy.describe()})"
        removed = [d for d in decisions if not d.keep]
        for d in removed:
            repo.write_tombstone(d.stream, d.seq, "sim")
        sim.stats["tombstones"] = sim.stats.get("tombstones", 0) + len(removed)
        yield f"forget tombstoned {[str(d.id) for d in removed]}"


def _idle(sim: Sim, most: int) -> Step:
    """Up to ``most`` steps of doing nothing, so periodic jobs spread over the schedule."""
    for _ in range(sim.rng.randint(0, most) if most else 0):
        yield "idle"


def _random_policy(rng: random.Random) -> RetentionPolicy:
    if rng.random() < 0.3:
        return RetentionPolicy(keep_within=rng.choice((5.0, 20.0, 60.0)))
    return RetentionPolicy(keep_last=rng.randint(1, 3))


def collector(sim: Sim, runs: int, *, skew: float = 0.0, idle: int = 0) -> Step:
    """gc in its four steps, in :meth:`GarbageCollector.run`'s order: list manifests+tombstones,
    list shards past the references, delete shards, finalise."""
    repo, _ = sim.repo_view(skew)
    gc_cls = sim.protocol.gc_class()
    for _ in range(runs):
        yield from _idle(sim, idle)
        gc = gc_cls(repo, threads=1, prefixes=[SHARDS_PREFIX])
        refs = gc.list_references()
        yield f"gc at T={gc.server_time - 1_000_000.0:.2f}: listed manifests: live {[str(s) for s in refs.live]}"
        garbage = gc.sweep(refs)
        yield f"gc listed {gc.report.shards_scanned} shards"
        gc.delete_shards(garbage)
        sim.stats["shards deleted"] = sim.stats.get("shards deleted", 0) + len(garbage)
        yield f"gc deleted {[i.key for i in garbage]}"
        gc.finalise(refs)
        sim.stats["finalised"] = sim.stats.get("finalised", 0) + len(refs.finalised)
        yield f"gc finalised {[str(s) for s in refs.finalised]}"


# --- random schedules ----------------------------------------------------------------------------


def random_schedule(seed: int, protocol: Protocol = SAFE, strict: bool = True) -> Sim:
    """Build actors from the seed and interleave them at random until all have finished."""
    sim = Sim(protocol, seed, check_young_tombstoned=strict)
    rng = sim.rng

    def skew() -> float:
        return rng.uniform(-MAX_SKEW / 2, MAX_SKEW / 2)

    lineage: dict[str, list[Content]] = {}

    def saves(stream: str, n: int) -> list[Content]:
        """Each save mutates an earlier save of the stream, so old bytes come back now and then."""
        pool = lineage.setdefault(stream, [])
        out = []
        for _ in range(n):
            content = random_content(rng, rng.choice(pool) if pool else None)
            pool.append(content)
            out.append(content)
        return out

    def mishaps(n: int) -> dict[int, str]:
        return {i: rng.choice(("lost", "412", "fail", "crash")) for i in range(n) if rng.random() < 0.15}

    sim.spawn("w1", writer(sim, "w1", "a", saves("a", rng.randint(2, 4)), skew=skew(), mishaps=mishaps(4)))
    sim.spawn("w2", writer(sim, "w2", "a", saves("a", rng.randint(1, 3)), skew=skew(), mishaps=mishaps(3)))
    sim.spawn("w3", writer(sim, "w3", "b", saves("b", rng.randint(1, 3)), skew=skew(), mishaps=mishaps(3)))
    if rng.random() < 0.5:
        sim.spawn("w4", writer(sim, "w4", "fork", saves("a", 2), fork_from="a", skew=skew()))
    if rng.random() < 0.5:  # a job writer in half the schedules, so the suite's time stays put
        jobs = [{"trainer": saves("a", 1)[0], "loop": saves("a", 1)[0]} for _ in range(rng.randint(1, 2))]
        sim.spawn("j1", job_writer(sim, "j1", "a", jobs, skew=skew(), mishaps=mishaps(2)))
    sim.spawn("forget", forgetter(sim, rng.randint(1, 3), skew=skew(), idle=12))
    sim.spawn("gc", collector(sim, rng.randint(2, 4), skew=skew(), idle=10))
    crash_p = rng.choice((0.0, 0.02, 0.05))
    while sim.actors:
        name = rng.choice(sorted(sim.actors))
        sim.advance(_random_dt(rng, bool(sim.busy)))
        if name.startswith(("w", "j")) and rng.random() < crash_p:
            sim.crash(name)
            continue
        sim.step(name)
    sim.check_restores()
    sim.check_quiescent_cleanup()
    return sim


def _random_dt(rng: random.Random, saving: bool) -> float:
    """Mostly small steps while a save is in flight (a save usually beats its deadline), with
    rare stalls past it; long pauses when no save is in flight, so tombstones and garbage age."""
    r = rng.random()
    if not saving:
        return rng.uniform(0, GRACE) if r < 0.5 else rng.uniform(0, 0.3)
    if r < 0.987:
        return rng.uniform(0, 0.3)
    return rng.uniform(0, 2 * MAX_WRITE) if r < 0.997 else rng.uniform(GRACE, 2 * GRACE)


def find_violation(protocol: Protocol, seeds: range) -> tuple[int, str] | None:
    """The first seed whose schedule breaks a visible snapshot, with the violation."""
    for seed in seeds:
        try:
            random_schedule(seed, protocol, strict=False)
        except Violation as exc:
            return seed, str(exc)
    return None


# --- the promises --------------------------------------------------------------------------------


def test_every_visible_snapshot_restores_in_thousands_of_random_schedules() -> None:
    totals: dict[str, int] = {}
    for seed in range(SCHEDULES):
        sim = random_schedule(seed)
        for k, v in sim.stats.items():
            totals[k] = totals.get(k, 0) + v
    # The schedules must really exercise the dangerous paths, not just pass vacuously.
    assert totals["commits"] > SCHEDULES * 3
    assert totals["shards deleted"] > SCHEDULES
    assert totals["finalised"] > SCHEDULES / 4
    assert totals["deadline aborts"] > SCHEDULES / 20
    assert totals["crashes"] > SCHEDULES / 20
    assert totals["crash after commit landed"] > 0
    assert totals["restored"] > SCHEDULES * 2
    assert totals["job commits"] > SCHEDULES / 4
    assert totals["job deadline aborts"] > 0


def test_random_schedules_are_reproducible_from_their_seed() -> None:
    a, b = random_schedule(1234), random_schedule(1234)
    assert [line.split(": ", 1)[1] for line in a.trace] != []
    # write ids and upload ids are random, so compare the shape of the schedule, not the names
    assert [line.split(":")[0] for line in a.trace] == [line.split(":")[0] for line in b.trace]
    assert a.stats == b.stats


# --- sensitivity: each rule is needed ------------------------------------------------------------

X, Y, Z, W = (bytes([i]) * 40 for i in (1, 2, 3, 4))


def _schedule_grace_check(protocol: Protocol, strict: bool = True) -> Sim:
    """A writer has uploaded but not committed when gc runs: only the age check saves its shards."""
    sim = Sim(protocol, check_young_tombstoned=strict)
    sim.spawn("w1", writer(sim, "w1", "a", [{"x": X}]))
    sim.spawn("gc", collector(sim, 1))
    sim.step("w1")  # begin + pack
    sim.step("w1", 1.0)  # PUT the shard
    sim.run("gc")  # lists the fresh, unreferenced shard
    sim.run("w1")  # commits, in time
    sim.check_restores()
    return sim


def _schedule_fresh_keys(protocol: Protocol, strict: bool = True) -> Sim:
    """gc lists an old unreferenced shard; a writer re-uploads the same bytes before the delete."""
    sim = Sim(protocol, check_young_tombstoned=strict)
    sim.spawn("w1", writer(sim, "w1", "a", [{"x": X}, {"y": Y}]))
    sim.run("w1")  # a@1 holds X, a@2 does not
    sim.spawn("forget", forgetter(sim, 1, policies=[RetentionPolicy(keep_last=1)]))
    sim.run("forget")  # tombstones a@1
    sim.advance(GRACE + 5)
    sim.spawn("gc", collector(sim, 1))
    sim.step("gc")  # lists X's shard: old
    sim.step("gc")  # a@1's tombstone is old: X is garbage
    sim.spawn("w2", writer(sim, "w2", "a", [{"y": Y, "x": X}]))
    sim.step("w2", 0.5)  # begin: parent a@2 has no X, so X is uploaded
    sim.step("w2", 0.5)  # PUT X: to a fresh key, or over the key gc is about to delete
    sim.run("gc")  # deletes what it listed
    sim.run("w2")  # commits
    sim.check_restores()
    return sim


def _schedule_deadline(protocol: Protocol, strict: bool = True) -> Sim:
    """A writer stalls past grace between its uploads and its commit."""
    sim = Sim(protocol, check_young_tombstoned=strict)
    sim.spawn("w1", writer(sim, "w1", "a", [{"x": X}]))
    sim.spawn("gc", collector(sim, 1))
    sim.step("w1")
    sim.step("w1", 0.5)  # X uploaded
    sim.advance(GRACE + 5)  # the writer hangs (a GC pause, a stuck network)
    sim.run("gc")  # X is old and unreferenced: deleted
    sim.run("w1")  # wakes up and commits, unless its deadline stops it
    sim.check_restores()
    return sim


def _schedule_young_tombstones(protocol: Protocol, strict: bool = True) -> Sim:
    """A writer reuses a shard through a parent that is forgotten and swept while it writes."""
    sim = Sim(protocol, check_young_tombstoned=strict)
    sim.spawn("w1", writer(sim, "w1", "a", [{"x": X}, {"z": Z}]))
    sim.step("w1")
    sim.step("w1")
    sim.step("w1")  # a@1 = {X}
    sim.advance(GRACE + 5)  # X's shard is now old
    sim.spawn("w2", writer(sim, "w2", "a", [{"x": X, "w": W}]))
    sim.step("w2")  # begin with parent a@1: X reused at a@1's key, W to upload
    sim.step("w2", 0.5)  # PUT W
    sim.run("w1")  # a@2 = {Z}: a@1 is no longer the newest
    sim.spawn("forget", forgetter(sim, 1, policies=[RetentionPolicy(keep_last=1)]))
    sim.run("forget")  # tombstones a@1, the parent w2 is building on
    sim.spawn("gc", collector(sim, 1))
    sim.run("gc")  # a@1 tombstoned a moment ago: does it still protect X?
    sim.run("w2")  # commits well within its deadline, referencing X
    sim.check_restores()
    return sim


def _schedule_job_clock_first(protocol: Protocol, strict: bool = True) -> Sim:
    """A job stages one part, its driver stalls past grace, then it stages another and commits.

    The first part's shard is old and unreferenced when gc runs: only a clock that started at
    the first stage (J1) refuses the commit that would reference it.
    """
    sim = Sim(protocol, check_young_tombstoned=strict)
    sim.spawn("j1", job_writer(sim, "j1", "a", [{"trainer": {"x": X}, "loop": {"w": W}}]))
    sim.spawn("gc", collector(sim, 1))
    sim.step("j1")  # begin
    sim.step("j1")  # stage trainer
    sim.step("j1", 0.5)  # PUT X
    sim.advance(GRACE + 5)  # the driver stalls between two stages
    sim.run("gc")  # X is old and unreferenced: deleted
    sim.step("j1")  # stage loop: a fresh clock reading
    sim.run("j1")  # PUT W, then commit, unless the job's clock refuses it
    sim.check_restores()
    return sim


def _schedule_stage_checks_parent(protocol: Protocol, strict: bool = True) -> Sim:
    """A job begins on parent a@1; a@1 is forgotten and swept before the job stages its part.

    Only a stage that checks, after reading its clock, that the parent is still visible (J2)
    uploads X again instead of reusing the key gc is about to delete.
    """
    sim = Sim(protocol, check_young_tombstoned=strict)
    sim.spawn("w1", writer(sim, "w1", "a", [{"x": X}, {"z": Z}]))
    sim.step("w1")
    sim.step("w1")
    sim.step("w1")  # a@1 = {X}
    sim.spawn("j1", job_writer(sim, "j1", "a", [{"trainer": {"x": X, "w": W}}]))
    sim.step("j1")  # begin: the token names parent a@1
    sim.run("w1")  # a@2 = {Z}
    sim.spawn("forget", forgetter(sim, 1, policies=[RetentionPolicy(keep_last=1)]))
    sim.run("forget")  # tombstones a@1
    sim.advance(GRACE + 5)  # the driver stalls before its first stage; a@1's tombstone ages
    sim.spawn("gc", collector(sim, 1))
    sim.step("gc")  # lists references: a@1 is old-tombstoned, X is not protected
    sim.step("gc")  # lists shards: X is garbage
    sim.step("j1")  # stage trainer: reuse X through a@1, or upload it again
    sim.run("gc")  # deletes X's old key, finalises a@1
    sim.run("j1")  # PUTs, then commits well within its deadline
    sim.check_restores()
    return sim


RULES = {
    "grace_check": _schedule_grace_check,
    "fresh_keys": _schedule_fresh_keys,
    "deadline": _schedule_deadline,
    "young_tombstones": _schedule_young_tombstones,
    "job_clock_first": _schedule_job_clock_first,
    "stage_checks_parent": _schedule_stage_checks_parent,
}


@pytest.mark.parametrize("rule", sorted(RULES))
def test_targeted_schedule_is_safe_under_the_full_protocol(rule: str) -> None:
    sim = RULES[rule](SAFE)
    if rule in ("deadline", "job_clock_first"):
        assert sim.stats["deadline aborts"] == 1  # refused to commit: no broken snapshot
        assert "commits" not in sim.stats
    else:
        assert sim.stats["restored"] >= 1


@pytest.mark.parametrize("rule", sorted(RULES))
def test_suite_fails_when_a_rule_is_removed(rule: str) -> None:
    weakened = Protocol(**{rule: False})
    with pytest.raises(
        Violation, match="young-tombstoned snapshot .* lost shards|visible snapshot .* lost shards"
    ):
        RULES[rule](weakened)
    # and the harm reaches a snapshot users can see, not just the checker's stricter invariant
    with pytest.raises(Violation, match="^visible snapshot a@\\d+ lost shards"):
        RULES[rule](weakened, strict=False)


@pytest.mark.parametrize("rule", ["grace_check", "fresh_keys", "deadline", "job_clock_first"])
def test_random_schedules_find_the_violation_when_a_rule_is_removed(rule: str) -> None:
    found = find_violation(Protocol(**{rule: False}), range(3000))
    assert found is not None, f"no random schedule broke the protocol without {rule}"
