"""A seeded mix of user operations run through the fault proxy, and the checks that follow it.

The workload is what a training job and its cleanup job do to one repository on a flaky
store: saves (small ones, ones whose shards go up as multipart uploads, and a few large enough
for several parts), loads, verifies, listings, forgets, gcs, copies to a second bucket, and
tags. Every request goes through :class:`faultproxy.FaultProxy` in front of a real S3 server,
which hits about ``rate`` of them with a fault of every kind. The operations run one after
another, as one user's process would, so the expected state of the repository is known after
each of them.

Each save's content is a function of ``(seed, op)`` and carries its own name
(``content_id``), which is also put in the snapshot's metadata: whatever is visible at the end
can be recomputed and compared byte for byte, and a commit made twice shows up as one
``content_id`` in two snapshots.

The server itself, reached without the proxy, is the oracle: it says what a forget really
tombstoned (only snapshots outside the policy may be), and after the run what is visible, what
gc left behind once the grace period has passed, and which multipart uploads are still open.

Goal figures (:meth:`fault_results.WorkloadResult.goal_failures`): every operation
completes; 0 wrong data, 0 lost commits, 0 duplicate commits, 0 wrongly forgotten snapshots, 0
miscounting forget reports, 0 orphan shards and 0 incomplete uploads after the final gc.
"""

from __future__ import annotations

import logging
import random
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fault_results import OPS, Failure, WorkloadResult
from faultproxy import CLASSES, KINDS, FaultProxy, proxied_bucket
from grace_wait import sleep_past_grace

import tqsnap
from tqsnap.engine import PackOptions, Repository
from tqsnap.errors import SnapshotNotFoundError
from tqsnap.format.keys import SHARDS_PREFIX, SNAPSHOTS_PREFIX, parse_stream_key

log = logging.getLogger(__name__)

KiB, MiB = 2**10, 2**20
#: Relative frequency of each operation; a save takes one of four shapes (see ``save_shape``).
OP_WEIGHTS = {"save": 30, "load": 18, "verify": 9, "snapshots": 9, "forget": 6, "gc": 5, "copy": 8, "tag": 7}
#: The first operations, so that even a short run does each kind: three saves, then one of each.
OPENING = ("save", "save", "save", *(k for k in OPS if k != "save"))
#: Small shards, so a save makes several, and the ``shared`` item is one shard a child reuses.
SMALL_PACK = PackOptions(chunk_size=128 * KiB, pack_size=64 * KiB, small_item=16 * KiB, upload_threads=4)
#: One shard per large item, so a large save is one object uploaded in several parts.
LARGE_PACK = PackOptions(chunk_size=16 * MiB, pack_size=64 * KiB, small_item=16 * KiB, upload_threads=4)
#: Store options that send every object of 64 KiB or more up as a multipart upload.
MULTIPART = {"multipart_threshold": 64 * KiB, "multipart_chunk": 5 * MiB}
#: Items of a ``wide`` save: enough for a manifest over 64 KiB, whose commit is then a
#: multipart upload completed with If-None-Match.
WIDE_ITEMS = 1200
#: Request classes that write: shard PUTs, multipart uploads, and the conditional creates
#: (manifests, tombstones, tags) whose lost replies make a commit's outcome unknown.
WRITES = ("put", "multipart", "conditional_put")


@dataclass
class WorkloadConfig:
    """One run: its size, its seed, how often the proxy strikes, and the repository timings.

    ``max_write_duration`` must leave a faulted save time to finish (its retries and backoff
    count against it), and ``grace`` must exceed twice that; the final gc waits ``grace`` out.
    """

    seed: int = 0
    ops: int = 300
    rate: float = 0.05
    streams: tuple[str, ...] = ("alpha", "beta")
    grace: float = 13.0
    max_write_duration: float = 6.0
    multipart_fraction: float = 0.25
    large_fraction: float = 0.02
    wide_fraction: float = 0.03
    latency_s: float = 0.1
    late_s: float = 0.05
    time_limit_s: float = 900.0
    kinds: tuple[str, ...] = KINDS
    #: The request classes the rate applies to (default: all); ``WRITES`` aims it at the commits.
    classes: tuple[str, ...] = CLASSES


def content(seed: int, op: int, size: str) -> dict[str, Any]:
    """The state saved by operation ``op``: derived from ``(seed, op)`` alone, so it can be rebuilt.

    ``shared`` changes only every eight operations, so consecutive saves of a stream reuse its
    shard from their parent (and gc must keep it while any snapshot still uses it).
    """
    rng = random.Random(f"{seed}/{op}")
    state: dict[str, Any] = {
        "content_id": content_id(seed, op),
        "step": op,
        "shared": random.Random(f"{seed}/shared/{op // 8}").randbytes(40 * KiB),
        "fresh": rng.randbytes(rng.randrange(1, 24 * KiB)),
        "notes": [rng.random() for _ in range(rng.randrange(0, 6))],
    }
    if size == "multipart":
        state["block"] = rng.randbytes(rng.randrange(70 * KiB, 160 * KiB))
    elif size == "large":
        state["block"] = rng.randbytes(rng.randrange(5 * MiB + 1, 7 * MiB))
    elif size == "wide":  # so many items that the manifest itself goes up in parts
        state["rows"] = [rng.randbytes(rng.randrange(1, 64)) for _ in range(WIDE_ITEMS)]
    return state


def content_id(seed: int, op: int) -> str:
    """The name a save's content carries in its state and in its snapshot's metadata."""
    return f"s{seed}-op{op}"


def parse_content_id(cid: object) -> tuple[int, int] | None:
    if not isinstance(cid, str) or not cid.startswith("s") or "-op" not in cid:
        return None
    seed, _, op = cid[1:].partition("-op")
    return (int(seed), int(op)) if seed.isdigit() and op.isdigit() else None


@dataclass
class SaveRecord:
    """Where a save (or copy) that reported success says its snapshot is, and what it holds."""

    stream: str
    seq: int
    cid: str
    size: str


class FaultWorkload:
    """Runs one :class:`WorkloadConfig` against ``server`` (an ``s3servers.S3Server``)."""

    def __init__(self, server: Any, config: WorkloadConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.bucket = proxied_bucket(
            server,
            seed=config.seed,
            rate=0.0,
            kinds=config.kinds,
            classes=config.classes,
            latency_s=config.latency_s,
            late_s=config.late_s,
        )
        self.proxy: FaultProxy = self.bucket.proxy
        dst_url, _ = server.make_bucket("mirror")
        self.src_url, self.dst_url = self.bucket.url, dst_url
        self.options = dict(self.bucket.options)  # through the proxy
        self.direct = server.options()  # the oracle: the same buckets without the proxy
        self.result = WorkloadResult(config)
        self.saves: dict[int, SaveRecord] = {}  # op -> a save that reported success
        self.save_sizes: dict[int, str] = {}  # op -> size, for every save attempted
        self.failed_saves: set[int] = set()
        self.forgotten: set[tuple[str, int]] = set()  # tombstoned, as the server says
        self.forgettable: set[tuple[str, int]] = set()  # outside the policy of some forget
        self.copy_mark: dict[str, int] = {}  # source stream -> the last seq a copy was tried of
        self.copies: dict[tuple[str, int], SaveRecord] = {}  # source snapshot -> its copy
        self.tags: dict[str, tuple[str, int]] = {}
        self.src: Repository | None = None
        self.src_multipart: Repository | None = None
        self.dst: Repository | None = None
        self.oracle: Repository | None = None
        self.dst_oracle: Repository | None = None
        #: (repository label, stream, seq) -> content_id of every manifest the server ever showed
        self.manifest_cids: dict[tuple[str, str, int], str] = {}

    # --- running -----------------------------------------------------------------------------

    def run(self) -> WorkloadResult:
        cfg = self.config
        t0 = time.monotonic()
        try:
            for url in (self.src_url, self.dst_url):
                tqsnap.init_repo(
                    url, grace=cfg.grace, max_write_duration=cfg.max_write_duration, storage_options=self.direct
                )
            # One handle per store setting, held for the run as a training process holds it.
            self.src = Repository.open(self.src_url, storage_options=self.options)
            self.src_multipart = Repository.open(self.src_url, storage_options={**self.options, **MULTIPART})
            self.dst = Repository.open(self.dst_url, storage_options=self.options)
            self.oracle = Repository.open(self.src_url, storage_options=self.direct)
            self.dst_oracle = Repository.open(self.dst_url, storage_options=self.direct)
            self.proxy.rate = cfg.rate
            ops = list(OP_WEIGHTS)
            weights = [OP_WEIGHTS[k] for k in ops]
            for op in range(cfg.ops):
                if time.monotonic() - t0 > cfg.time_limit_s:
                    log.warning("time limit reached after %d operations", op)
                    break
                kind = OPENING[op] if op < len(OPENING) else self.rng.choices(ops, weights)[0]
                self._run_op(op, kind)
            self.proxy.clear()
            self.result.injected = Counter(self.proxy.injected)
            self.result.requests = Counter(self.proxy.requests)
            self._check_final()
        finally:
            for repo in (self.src, self.src_multipart, self.dst, self.oracle, self.dst_oracle):
                if repo is not None:
                    repo.close()
            self.proxy.close()
            self.result.duration_s = time.monotonic() - t0
        return self.result

    def _run_op(self, op: int, kind: str) -> None:
        action: Callable[[int], None] = getattr(self, f"_op_{kind}")
        self.result.attempted[kind] += 1
        start = time.monotonic()
        try:
            action(op)
        except Exception as exc:  # every failure is counted and described, none is hidden
            detail = f"{type(exc).__name__}: {exc}"
            log.info("op %d %s failed: %s", op, kind, detail)
            self.result.failures.append(Failure(op, kind, detail, traceback.format_exc(limit=12)))
        else:
            self.result.completed[kind] += 1
        finally:
            self.result.seconds[kind] += time.monotonic() - start

    def _visible_records(self) -> list[SaveRecord]:
        return [r for r in self.saves.values() if (r.stream, r.seq) not in self.forgotten]

    def _pick_visible(self) -> SaveRecord | None:
        records = self._visible_records()
        return self.rng.choice(records) if records else None

    def _wrong(self, op: int, kind: str, what: str) -> None:
        self.result.wrong_data.append(f"op {op} {kind}: {what}")
        raise AssertionError(what)

    # --- the operations ----------------------------------------------------------------------

    def save_shape(self) -> str:
        """``small``, ``multipart`` (shards over 64 KiB go up in parts), ``large`` (several
        parts) or ``wide`` (a manifest over 64 KiB, committed by a conditional multipart upload)."""
        draw = self.rng.random()
        for shape, fraction in (
            ("large", self.config.large_fraction),
            ("wide", self.config.wide_fraction),
            ("multipart", self.config.multipart_fraction),
        ):
            if draw < fraction:
                return shape
            draw -= fraction
        return "small"

    def _op_save(self, op: int) -> None:
        stream = self.rng.choice(self.config.streams)
        size = self.save_shape()
        self.save_sizes[op] = size
        repo = self.src if size == "small" else self.src_multipart
        cid = content_id(self.config.seed, op)
        try:
            info = tqsnap.save(
                repo,
                content(self.config.seed, op, size),
                stream=stream,
                metadata={"content_id": cid},
                options=LARGE_PACK if size == "large" else SMALL_PACK,
            )
        except Exception:
            self.failed_saves.add(op)
            raise
        finally:
            self._scan(self.oracle, "source")
        if self.manifest_cids.get(("source", info.stream, info.seq)) != cid:
            self.result.lost_commits.append(f"op {op}: save reported {info.stream}@{info.seq}, not its own")
        if info.stream != stream or info.metadata.get("content_id") != cid:
            self._wrong(op, "save", f"save reported {info.stream}@{info.seq} with {info.metadata}")
        self.saves[op] = SaveRecord(stream, info.seq, cid, size)

    def _op_load(self, op: int) -> None:
        record = self._pick_visible()
        if record is None:
            return
        latest = self.rng.random() < 0.3
        state = tqsnap.load(self.src, stream=record.stream, snapshot="latest" if latest else record.seq)
        self._check_state(op, state, None if latest else record.cid)

    def _check_state(self, op: int, state: Any, cid: str | None) -> None:
        """``state`` must be exactly what the save named in it wrote (and be ``cid``'s when given)."""
        found = state.get("content_id") if isinstance(state, dict) else None
        parsed = parse_content_id(found)
        if parsed is None or parsed[0] != self.config.seed or (cid is not None and found != cid):
            self._wrong(op, "load", f"loaded content {found!r}, expected {cid or 'a saved content'}")
        size = self.save_sizes.get(parsed[1])  # type: ignore[index]
        if size is None or state != content(parsed[0], parsed[1], size):  # type: ignore[index]
            self._wrong(op, "load", f"content {found} differs from what was saved")

    def _op_verify(self, op: int) -> None:
        record = self._pick_visible()
        if record is None:
            return
        report = tqsnap.verify(self.src, stream=record.stream, snapshot=record.seq)
        if not report.ok or report.shards == 0:
            self._wrong(op, "verify", f"{report.to_json()}")

    def _op_snapshots(self, op: int) -> None:
        stream = self.rng.choice((None, *self.config.streams))
        listed = {(s.stream, s.seq): s for s in tqsnap.snapshots(self.src, stream)}
        for record in self._visible_records():
            if stream in (None, record.stream):
                info = listed.get((record.stream, record.seq))
                if info is None or info.metadata.get("content_id") != record.cid:
                    self._wrong(op, "snapshots", f"{record.stream}@{record.seq} ({record.cid}) listed as {info}")

    def _op_forget(self, op: int) -> None:
        stream = self.rng.choice(self.config.streams)
        keep = self.rng.randint(2, 4)
        oracle = self.oracle
        before = oracle.visible_seqs(stream)
        stones = oracle.tombstoned_seqs(stream)
        pinned = {seq for s, seq in self.tags.values() if s == stream}  # a tag pins its snapshot
        allowed = set(before[:-keep]) - pinned
        self.forgettable |= {(stream, s) for s in allowed}
        try:
            report = tqsnap.forget(self.src, streams=stream, keep_last=keep)
        finally:
            # Whether it completed or not: only what the policy removes may be tombstoned, and
            # what was is no longer a load target.
            written = oracle.tombstoned_seqs(stream) - stones
            self.forgotten |= {(stream, s) for s in written}
            for seq in sorted(written - allowed):
                self.result.wrongly_forgotten.append(
                    f"op {op} forget keep_last={keep} of {stream}@{before} (pinned {sorted(pinned)}): {seq}"
                )
        # The report says what this run wrote, even where a tombstone's reply was lost.
        removed = {d.seq for d in report.removed}
        if report.tombstones_written != len(written) or removed != written:
            self.result.wrong_reports.append(
                f"op {op} forget keep_last={keep} of {stream}@{before}: report wrote "
                f"{report.tombstones_written} and removed {sorted(removed)}; "
                f"the server shows new tombstones {sorted(written)}"
            )

    def _op_gc(self, op: int) -> None:
        tqsnap.gc(self.src)

    def _op_copy(self, op: int) -> None:
        """Mirror a snapshot into the second bucket, in order, as a mirror job does.

        A destination stream's latest never goes backwards, so only a snapshot at or after the
        last one copied from its stream is a candidate; copying that last one again must find
        the earlier copy ("already present") and commit nothing.
        """
        stream = self.rng.choice(self.config.streams)
        mark = self.copy_mark.get(stream, 0)
        candidates = [r for r in self._visible_records() if r.stream == stream and r.seq > mark]
        again = [r for r in self._visible_records() if (r.stream, r.seq) == (stream, mark)]
        if again and (not candidates or self.rng.random() < 0.25):
            record = again[0]
        elif candidates:
            record = self.rng.choice(candidates)
        else:
            return
        self.copy_mark[stream] = record.seq
        try:
            result = tqsnap.copy(self.src, self.dst, stream=record.stream, snapshot=record.seq)
        finally:
            self._scan(self.dst_oracle, "copy")
        info = result.info
        if info is None or info.metadata.get("content_id") != record.cid:
            self._wrong(op, "copy", f"copy of {record.stream}@{record.seq} reported {result.to_json()}")
        earlier = self.copies.get((record.stream, record.seq))
        if earlier is not None and (earlier.stream, earlier.seq) != (info.stream, info.seq):
            self._wrong(op, "copy", f"copied {record.cid} again as {info.stream}@{info.seq}, not {earlier.seq}")
        if self.manifest_cids.get(("copy", info.stream, info.seq)) != record.cid:
            self.result.lost_commits.append(f"op {op}: copy reported {info.stream}@{info.seq}, not its own")
        self.copies[(record.stream, record.seq)] = SaveRecord(info.stream, info.seq, record.cid, "copy")

    def _op_tag(self, op: int) -> None:
        again = [n for n, target in self.tags.items() if target not in self.forgotten]
        if again and self.rng.random() < 0.3:  # re-running a tag command is idempotent
            name = self.rng.choice(again)
            stream, seq = self.tags[name]
        else:
            record = self._pick_visible()
            if record is None:
                return
            name, stream, seq = f"t{op}", record.stream, record.seq
        tag = tqsnap.tag(self.src, name, stream=stream, snapshot=seq)
        if (tag.target.stream, tag.target.seq) != (stream, seq):
            self._wrong(op, "tag", f"tag {name} names {tag.target}, not {stream}@{seq}")
        self.tags[name] = (stream, seq)

    def _scan(self, repo: Repository, label: str) -> None:
        """Note the content of each manifest not seen before, straight from the server.

        Every manifest ever committed passes through here, so a save committed twice is caught
        even when a forget hides one of the two before the end.
        """
        for info in repo.store.list(SNAPSHOTS_PREFIX):
            parsed = parse_stream_key(info.key, SNAPSHOTS_PREFIX)
            if parsed is None or (label, *parsed) in self.manifest_cids:
                continue
            try:
                manifest = repo.load_manifest(*parsed)
            except SnapshotNotFoundError:
                continue  # a forgotten snapshot gc finalised meanwhile
            self.manifest_cids[(label, *parsed)] = str(manifest.metadata.get("content_id"))

    # --- the final checks, with faults off, through the oracle --------------------------------

    def _check_final(self) -> None:
        src = Repository.open(self.src_url, storage_options=self.direct)
        dst = Repository.open(self.dst_url, storage_options=self.direct)
        try:
            self._check_repo(src, "source", self.saves, self.failed_saves)
            self._check_repo(dst, "copy", self.copies, set())
            for name, target in self.tags.items():
                try:
                    tag = src.read_tag(name)
                except Exception as exc:
                    self.result.missing_tags.append(f"{name}: {type(exc).__name__}: {exc}")
                    continue
                if (tag.target.stream, tag.target.seq) != target:
                    self.result.missing_tags.append(f"{name} names {tag.target}, not {target}")
            sleep_past_grace(src, dst, grace=self.config.grace)  # every shard and tombstone
            for repo in (src, dst):
                self._final_gc(repo)
        finally:
            src.close()
            dst.close()

    def _check_repo(
        self, repo: Repository, label: str, done: dict[Any, SaveRecord], failed: set[int]
    ) -> None:
        """``done``: what each successful save (by op) or copy (by source) reported."""
        self._scan(repo, label)
        visible = repo.snapshots()
        if label == "source":  # only snapshots outside the policy of some forget may be tombstoned
            for stream in repo.streams():
                for seq in sorted(repo.tombstoned_seqs(stream)):  # those no forget op saw appear
                    if (stream, seq) not in self.forgotten | self.forgettable:
                        self.result.wrongly_forgotten.append(f"{stream}@{seq} was never outside a policy")
                    self.forgotten.add((stream, seq))
        self.result.visible_snapshots += len(visible)
        for info in visible:
            cid = info.metadata.get("content_id")
            where = f"{label} {info.stream}@{info.seq}"
            try:
                report = repo.verify(info.stream, info.seq)
                state = tqsnap.load(repo, stream=info.stream, snapshot=info.seq)
            except Exception as exc:
                self.result.wrong_data.append(f"{where}: {type(exc).__name__}: {exc}")
                continue
            parsed = parse_content_id(cid)
            size = self.save_sizes.get(parsed[1]) if parsed else None
            if not report.ok:
                self.result.wrong_data.append(f"{where}: verify {report.to_json()}")
            elif parsed is None or size is None or state != content(parsed[0], parsed[1], size):
                self.result.wrong_data.append(f"{where}: holds {cid!r}, not what was saved under that name")
        committed: dict[str, list[str]] = {}  # content_id -> every snapshot ever committed with it
        for (where, stream, seq), cid in sorted(self.manifest_cids.items()):
            if where == label:
                committed.setdefault(cid, []).append(f"{stream}@{seq}")
        for cid, snapshots in committed.items():
            if len(snapshots) > 1:
                self.result.duplicate_commits.append(f"{label}: {cid} committed as {', '.join(snapshots)}")
        self.result.landed_after_error += sum(
            1 for cid in committed if (parsed := parse_content_id(cid)) is not None and parsed[1] in failed
        )
        listed = {(i.stream, i.seq): i.metadata.get("content_id") for i in visible}
        for what, record in done.items():
            found = listed.get((record.stream, record.seq))
            if found is None and label == "source" and (record.stream, record.seq) in self.forgotten:
                continue  # tombstoned by a forget (and perhaps finalised by gc since)
            if found != record.cid:
                self.result.lost_commits.append(
                    f"{label} {what}: {record.cid} reported as {record.stream}@{record.seq}, which holds {found}"
                )

    def _final_gc(self, repo: Repository) -> None:
        """gc until a pass deletes nothing (at most three), then count what is left unreferenced."""
        for passes in range(1, 4):
            report = tqsnap.gc(repo)
            self.result.final_gc_passes = max(self.result.final_gc_passes, passes)
            self.result.final_gc["shards deleted"] += report.shards_deleted
            self.result.final_gc["manifests finalised"] += len(report.manifests_finalised)
            self.result.final_gc["incomplete uploads aborted"] += len(report.uploads_aborted)
            if not (report.shards_deleted or report.manifests_finalised or report.uploads_aborted):
                break
        referenced: set[str] = set()
        tombstoned = {(s, q) for s in repo.streams() for q in repo.tombstoned_seqs(s)}
        for info in repo.store.list(SNAPSHOTS_PREFIX):
            parsed = parse_stream_key(info.key, SNAPSHOTS_PREFIX)
            if parsed is not None and parsed not in tombstoned:
                referenced |= {ref.key for ref in repo.load_manifest(*parsed).shards}
        for info in repo.store.list(SHARDS_PREFIX):
            if info.key not in referenced:
                self.result.orphan_shards.append(f"{repo.url}/{info.key}")
        for upload in repo.store.list_uploads():
            self.result.incomplete_uploads.append(f"{repo.url}/{upload.key} ({upload.upload_id})")


def run_workload(server: Any, config: WorkloadConfig) -> WorkloadResult:
    """Run one seeded workload through a fresh proxy and fresh buckets on ``server``."""
    return FaultWorkload(server, config).run()
