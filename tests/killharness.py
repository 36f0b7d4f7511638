"""A SIGKILL harness: a child process runs save, forget, gc or copy; the parent kills it.

Each round starts ``tests/kill_child.py`` on a repository (in a quarter of the rounds two
children at once, say a save beside a gc), lets it run, and SIGKILLs it either after a random
delay or when it reports a named checkpoint (the first shard uploaded, just
before or after the manifest's put-if-absent, the first tombstone, gc's first delete). All
draws come from one seeded ``random.Random``, so a failing run can be repeated. After every
round the parent checks, reading the repository directly:

- every visible snapshot verifies and loads exactly the content its id derives from (each
  snapshot is read in full once, when first seen; every round after that, each of its shard
  keys must still be listed);
- no content id appears in two manifests: no save is visible twice, and a killed save is
  either fully visible or absent;
- copies land in a stream of their own (``c<id>``) at most once.

:meth:`KillHarness.finish` then shows that save, forget and gc still work, waits out the
repository's (tiny) grace period, runs gc on both repositories, and checks that no shard is
left that no manifest references and no incomplete upload remains.
"""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kill_child import save
from killcontent import content

from tqsnap.engine import Repository, RetentionPolicy
from tqsnap.engine.gc import GarbageCollector, collect_garbage
from tqsnap.engine.retention import forget

CHILD = Path(__file__).with_name("kill_child.py")
ROOT = Path(__file__).resolve().parent.parent
#: Tiny timings for a repository made for the harness: grace must exceed 2 * max_write_duration.
GRACE_S, MAX_WRITE_S = 7.0, 3.0
#: Store options that make an 11 MiB shard go up in three parts.
MULTIPART_OPTIONS = {"multipart_threshold": 5 * 2**20 + 1, "multipart_chunk": 5 * 2**20}
_CHECKPOINTS = {
    "save": ("upload", "commit", "committed"),
    "save_multipart": ("upload", "commit", "committed"),
    "forget": ("tombstone",),
    "gc": ("delete",),
    "copy": ("upload", "commit", "committed"),
}
#: Errors a child may end with without the repository being at fault: a save slowed past its
#: (tiny) deadline by a loaded machine, a gc that met another gc finalising the same manifests.
_ACCEPTED_ERRORS = ("WriteDeadlineExceededError", "GcConflictError")


@dataclass
class KillStats:
    """What happened per operation, and how many checks passed."""

    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    checks: int = 0
    kills: int = 0
    rounds: int = 0
    snapshots_seen: int = 0

    def table(self) -> str:
        ops = sorted({op for op, _ in self.outcomes})
        kinds = ["killed", "completed", "deadline"]
        lines = [f"{'operation':<16}" + "".join(f"{k:>11}" for k in kinds)]
        for op in ops:
            lines.append(f"{op:<16}" + "".join(f"{self.outcomes[(op, k)]:>11}" for k in kinds))
        lines.append(
            f"rounds {self.rounds}, kills {self.kills}, snapshots read in full {self.snapshots_seen}, "
            f"checks passed {self.checks}"
        )
        return "\n".join(lines)


class KillHarness:
    """Rounds of kill-and-check against one source and one copy-destination repository."""

    def __init__(
        self,
        url: str,
        dst_url: str,
        options: dict[str, Any],
        *,
        seed: int,
        multipart: bool,
        max_delay_s: float = 0.4,
        concurrent: float = 0.25,
        log_dir: Path | None = None,
    ) -> None:
        self.url, self.dst_url, self.options = url, dst_url, dict(options)
        self.rng = random.Random(seed)
        self.multipart = multipart
        self.max_delay_s = max_delay_s
        self.concurrent = concurrent
        self._lock = threading.Lock()
        self.log_dir = log_dir
        self.stats = KillStats()
        self.multipart_ids: set[int] = set()
        self._next_id = seed * 100_000
        #: (repo, stream, seq, write_id) read in full -> its shard keys (manifests never change)
        self._seen: dict[tuple[str, str, int, str], list[str]] = {}
        for target in (url, dst_url):
            Repository.init(target, grace=GRACE_S, max_write_duration=MAX_WRITE_S, storage_options=self.options)
        self.src = Repository.open(url, storage_options=self.options)
        self.dst = Repository.open(dst_url, storage_options=self.options)

    # --- one round -------------------------------------------------------------------------

    def round(self) -> list[tuple[str, str]]:
        """One child, or (in a quarter of the rounds) two at once, each killed on its own."""
        children = 2 if self.rng.random() < self.concurrent else 1
        plans = [self._plan() for _ in range(children)]
        outcomes: list[str | BaseException] = [""] * children

        def run(i: int) -> None:
            try:
                outcomes[i] = self._run_child(*plans[i])
            except BaseException as exc:  # re-raised below, in the test's thread
                outcomes[i] = exc

        threads = [threading.Thread(target=run, args=(i,)) for i in range(children)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=180)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        done = [(spec["op"], str(outcome)) for (spec, _), outcome in zip(plans, outcomes, strict=True)]
        for key in done:
            self.stats.outcomes[key] += 1
        self.stats.rounds += 1
        self.check()
        return done

    def _plan(self) -> tuple[dict[str, Any], float]:
        """The next child's operation, content id, options, checkpoint or kill delay."""
        ops = ["save"] * 5 + ["forget", "gc", "copy"] + (["save_multipart"] * 2 if self.multipart else [])
        op = self.rng.choice(ops)
        self._next_id += 1
        cid = self._next_id
        spec: dict[str, Any] = {"op": op, "url": self.url, "dst_url": self.dst_url, "content_id": cid}
        spec["options"] = self.options | (MULTIPART_OPTIONS if op == "save_multipart" else {})
        if op == "save_multipart":
            self.multipart_ids.add(cid)
        if self.rng.random() < 0.5:
            spec["checkpoint"] = self.rng.choice(_CHECKPOINTS[op])
        return spec, self.rng.uniform(0, self.max_delay_s)

    def _run_child(self, spec: dict[str, Any], delay: float) -> str:
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        err_path = (self.log_dir or Path("/tmp")) / f"kill-child-{os.getpid()}-{spec['content_id']}.err"
        with open(err_path, "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, str(CHILD), json.dumps(spec)],
                stdout=subprocess.PIPE,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=str(ROOT),
            )
        lines: queue.Queue[str] = queue.Queue()
        reader = threading.Thread(target=_pump, args=(proc, lines), daemon=True)
        reader.start()
        try:
            if _wait_for(lines, ("ready",), 60) is None:
                raise AssertionError(f"child {spec['op']} never became ready: {_tail(err_path)}")
            want = ("checkpoint", "done") if "checkpoint" in spec else ("done",)
            got = _wait_for(lines, want, 30 if "checkpoint" in spec else delay)
            if got is not None and got.startswith("done"):
                proc.wait(timeout=30)
                return "completed"
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                with self._lock:
                    self.stats.kills += 1
            code = proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
            reader.join(timeout=10)
        if code == -signal.SIGKILL:
            return "killed"
        if code == 0:
            return "completed"
        tail = _tail(err_path)
        if any(name in tail for name in _ACCEPTED_ERRORS):
            return "deadline"
        raise AssertionError(f"child {spec} failed with exit code {code}: {tail}")

    # --- checks ------------------------------------------------------------------------------

    def check(self) -> None:
        """Every visible snapshot is whole and exact, and nothing was committed twice."""
        self._check_stream(self.src, "s", {i.key for i in self.src.store.list("shards/")}, copies=False)
        listed = {i.key for i in self.dst.store.list("shards/")}
        for stream in self.dst.streams():
            self._check_stream(self.dst, stream, listed, copies=True)

    def _check_stream(self, repo: Repository, stream: str, listed: set[str], *, copies: bool) -> None:
        infos = repo.snapshots(stream, include_tombstoned=True)
        ids = Counter(i.metadata.get("content_id") for i in infos)
        twice = {cid: n for cid, n in ids.items() if n > 1}
        assert not twice, f"{repo.url} {stream}: content committed more than once: {twice}"
        if copies:
            assert len(infos) <= 1, f"{repo.url} {stream}: one copy committed {len(infos)} times"
        for info in infos:
            if info.tombstoned:
                continue
            seen = (repo.url, stream, info.seq, info.write_id)
            if seen not in self._seen:
                cid = info.metadata["content_id"]
                reader = repo.reader(stream, info.seq)
                assert reader.verify().ok, f"{info.id} does not verify"
                loaded = {path: bytes(data) for path, data in reader.read_items().items()}
                assert loaded == content(cid, multipart=cid in self.multipart_ids), f"{info.id} loads wrong data"
                self._seen[seen] = [ref.key for ref in reader.manifest.shards]
                self.stats.snapshots_seen += 1
            missing = [key for key in self._seen[seen] if key not in listed]
            assert not missing, f"{repo.url} {info.id} lost shards: {missing[:3]}"
            self.stats.checks += 1

    # --- the end -----------------------------------------------------------------------------

    def finish(self) -> None:
        """The next save, forget and gc work; past the grace period gc leaves no orphans."""
        self._next_id += 1
        cid = self._next_id
        info = save(self.src, cid)
        forget(self.src, RetentionPolicy(keep_last=2))
        collect_garbage(self.src)
        self.check()
        assert self.src.resolve("s").seq == info.seq
        time.sleep(GRACE_S + 1.5)
        for repo in (self.src, self.dst):
            collect_garbage(repo)
            live = GarbageCollector(repo, dry_run=True).list_references().keys
            shards = {i.key for i in repo.store.list("shards/")}
            orphans = {k for k in shards if k not in live}
            assert not orphans, f"{repo.url}: {len(orphans)} shards no live manifest references: {sorted(orphans)[:3]}"
            uploads = list(repo.store.list_uploads())
            assert not uploads, f"{repo.url}: incomplete uploads left after gc: {uploads[:3]}"
            self.stats.checks += 1
        self.check()


def _pump(proc: subprocess.Popen[bytes], lines: queue.Queue[str]) -> None:
    assert proc.stdout is not None
    for raw in proc.stdout:
        lines.put(raw.decode(errors="replace").strip())


def _wait_for(lines: queue.Queue[str], prefixes: tuple[str, ...], timeout: float) -> str | None:
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            return None
        if line.startswith(prefixes):
            return line


def _tail(path: Path, n: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""
