"""Benchmark: gc and check over >= 1,000,000 shard objects, 1 to N workers, with per-request latency.

    python benchmarks/bench_scale.py --objects 1000000 --latency-ms 20 --out bench-out/scale.json
    python benchmarks/bench_scale.py --objects 20000 --latency-ms 5          # a quick look

Why local disk behind a latency-injecting wrapper, not an S3 server behind a delay proxy: one
million PUTs through SeaweedFS on the shared two-core machine this was measured on take well over
a quarter of an hour before the first gc starts, and the server's own CPU would then compete with
the sweep being measured. Writing the files directly takes about a minute. :class:`LatencyStore`
then charges every request what a store 20 ms away charges: one ``latency`` sleep per GET, HEAD,
PUT and DeleteObjects batch of <= 1000 keys, and one per 1000-key LIST page, taken as the
listing is consumed, as ListObjectsV2 pages are. The sleeps release the GIL, like waiting on a
socket. What it does not model: bandwidth (gc and check move no data), server-side throttling
(503 SlowDown; see docs/scale.md) and TLS/HTTP CPU cost in the client.

The repository: ``--objects`` shard objects spread over the 256 ``shards/xx/`` prefixes, of which
``--referenced`` are referenced by manifests of ``--per-manifest`` shards each (committed with
put-if-absent as a writer does), the rest old garbage (mtime set past grace). Shard files are
one byte: gc and check (without --read-data) only list keys and compare sizes.

Each configuration runs in a fresh subprocess, so its peak RSS (``VmHWM``) is its own:
dry-run gc with threads and with Ray tasks at 1, 2 and 4 workers, check at 1 and 4 workers, then
one real gc that deletes the garbage. Ray start-up is excluded from the times (it is reported).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import resource
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tqsnap.engine import Repository
from tqsnap.engine.check import check_repository
from tqsnap.engine.gc import GarbageCollector
from tqsnap.format.keys import shard_key, snapshot_key
from tqsnap.format.manifest import Manifest, ShardRef
from tqsnap.store.base import Buffer, ObjectInfo, ObjectStore, PendingUpload, StoreSpec, batched
from tqsnap.store.local import LocalStore

log = logging.getLogger("bench_scale")
GRACE, MAX_WRITE = 3600.0, 600.0
PAGE = 1000


class LatencyStore(ObjectStore):
    """Any store, with ``latency`` seconds added to every request (see the module doc)."""

    shareable_across_processes = True

    def __init__(self, inner: ObjectStore, latency: float) -> None:
        self.inner, self.latency, self.url = inner, latency, inner.url
        self.requests: Counter[str] = Counter()
        self._lock = threading.Lock()

    def _pay(self, verb: str, n: int = 1) -> None:
        with self._lock:
            self.requests[verb] += n
        if self.latency:
            time.sleep(self.latency * n)

    def get(self, key: str) -> bytes:
        self._pay("get")
        return self.inner.get(key)

    def get_range(self, key: str, start: int, length: int) -> bytes:
        self._pay("get")
        return self.inner.get_range(key, start, length)

    def put(self, key: str, data: Buffer) -> None:
        self._pay("put")
        self.inner.put(key, data)

    def put_if_absent(self, key: str, data: Buffer) -> bool:
        self._pay("put")
        return self.inner.put_if_absent(key, data)

    def head(self, key: str) -> ObjectInfo | None:
        self._pay("head")
        return self.inner.head(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        self._pay("list")  # the first page
        for i, info in enumerate(self.inner.list(prefix)):
            if i and i % PAGE == 0:
                self._pay("list")  # each further page is one more round trip
            yield info

    def delete_many(self, keys: Iterable[str]) -> int:
        sent = 0
        for batch in batched(keys):
            self._pay("delete")
            sent += self.inner.delete_many(batch)
        return sent

    def now(self) -> float:
        return self.inner.now()

    def list_uploads(self, prefix: str = "") -> Iterator[PendingUpload]:
        self._pay("list_uploads")
        return self.inner.list_uploads(prefix)

    def abort_upload(self, upload: PendingUpload) -> None:
        self._pay("abort")
        self.inner.abort_upload(upload)

    def spec(self) -> StoreSpec:
        return self.inner.spec()

    def __reduce__(self) -> tuple[Any, ...]:
        return (_reopen, (self.inner.spec(), self.latency))


def _reopen(spec: StoreSpec, latency: float) -> LatencyStore:
    return LatencyStore(LocalStore.from_spec(spec), latency)


# --- building the repository ----------------------------------------------------------------------


def digest_of(i: int) -> str:
    return hashlib.md5(b"%d" % i).hexdigest()  # spread over the 256 prefixes like content hashes


def build(root: Path, objects: int, referenced: int, per_manifest: int) -> dict[str, Any]:
    """Write the shard files directly (no fsync), then commit manifests through the store."""
    t0 = time.perf_counter()
    repo = Repository.init(str(root), grace=GRACE, max_write_duration=MAX_WRITE)
    old = time.time() - 2 * GRACE
    keys = []
    made_dirs: set[str] = set()
    for i in range(objects):
        key = shard_key(digest_of(i), f"{i:016x}")
        keys.append(key)
        path = os.path.join(root, key)
        d = os.path.dirname(path)
        if d not in made_dirs:
            os.makedirs(d, exist_ok=True)
            made_dirs.add(d)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, b"x")
        os.close(fd)
        os.utime(path, (old, old))
        if i % 100_000 == 0:
            log.info("built %d of %d shard files", i, objects)
    files_s = time.perf_counter() - t0
    now = repo.store.now()
    for m, start in enumerate(range(0, referenced, per_manifest)):
        part = keys[start : start + per_manifest]
        manifest = Manifest(
            kind="bench",
            stream=f"s{m % 16}",
            seq=m // 16 + 1,
            parent=None,
            write_id=hashlib.md5(b"w%d" % m).hexdigest(),
            started_at=now,
            committed_at=now,
            shards=[ShardRef(k, k.split("/")[2].split(".")[0], 1, 1) for k in part],
            items=[],
        )
        assert repo.store.put_if_absent(snapshot_key(manifest.stream, manifest.seq), manifest.encode())
    return {
        "objects": objects,
        "referenced": referenced,
        "garbage": objects - referenced,
        "manifests": -(-referenced // per_manifest),
        "build_files_s": round(files_s, 1),
        "build_total_s": round(time.perf_counter() - t0, 1),
    }


# --- one configuration, in its own process ------------------------------------------------------------


def peak_rss_kib() -> int:
    """This process's own peak RSS (VmHWM). Not ``ru_maxrss``: on Linux a child starts with its
    parent's ``ru_maxrss``, and the parent here held every key it had just written."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def run_one(root: Path, task: str, executor: str, workers: int, latency: float) -> dict[str, Any]:
    base_rss = peak_rss_kib()
    ray_start_s = 0.0
    if executor == "ray":
        import ray

        t = time.perf_counter()
        os.environ.setdefault("RAY_DEDUP_LOGS", "1")
        for attempt in range(3):  # a loaded machine can miss Ray's fixed 30 s raylet start-up wait
            try:
                ray.init(
                    num_cpus=max(workers, 1),
                    _node_ip_address="127.0.0.1",
                    include_dashboard=False,
                    logging_level="WARNING",
                    log_to_driver=False,
                )
                break
            except Exception:  # noqa: BLE001 - Ray raises a bare Exception on that timeout
                ray.shutdown()
                if attempt == 2:
                    raise
        ray_start_s = time.perf_counter() - t
    store = LatencyStore(LocalStore(str(root)), latency)
    repo = Repository.open(store)
    cpu0, t0 = time.process_time(), time.perf_counter()
    out: dict[str, Any] = {"task": task, "executor": executor, "workers": workers}
    if task in ("gc-dry", "gc"):
        gc = GarbageCollector(repo, dry_run=task == "gc-dry", workers=workers, executor=executor)
        report = gc.run()
        out |= {
            "shards_scanned": report.shards_scanned,
            "shards_deleted": report.shards_deleted,
            "live_manifests": report.live_manifests,
            "referenced_shards": report.referenced_shards,
            "requests": dict(report.requests),
        }
    else:
        report = check_repository(repo, workers=workers, executor=executor)
        out |= {"ok": report.ok, "shards_referenced": report.shards_referenced, "bad": len(report.bad_shards)}
    out["seconds"] = round(time.perf_counter() - t0, 2)
    out["driver_cpu_s"] = round(time.process_time() - cpu0, 2)
    out["driver_requests"] = dict(store.requests)  # Ray tasks' requests are counted in their processes
    out["peak_rss_mib"] = round(peak_rss_kib() / 1024, 1)
    out["rss_before_mib"] = round(base_rss / 1024, 1)
    out["ray_start_s"] = round(ray_start_s, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--objects", type=int, default=1_000_000)
    ap.add_argument("--referenced", type=float, default=0.6, help="fraction of shard objects referenced")
    ap.add_argument("--per-manifest", type=int, default=5000)
    ap.add_argument("--latency-ms", type=float, default=20.0)
    ap.add_argument("--root", type=Path, default=Path("/tmp/tqsnap-bench-scale"))
    ap.add_argument("--configs", default="gc-dry:threads:1,gc-dry:threads:4,gc-dry:threads:16,"
                    "gc-dry:ray:1,gc-dry:ray:2,gc-dry:ray:4,check:threads:1,check:threads:16,gc:threads:16")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds allowed per configuration")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--one", nargs=3, metavar=("TASK", "EXECUTOR", "WORKERS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    latency = args.latency_ms / 1000
    if args.one:
        task, executor, workers = args.one
        print(json.dumps(run_one(args.root, task, executor, int(workers), latency)))
        return
    if args.root.exists():
        raise SystemExit(f"{args.root} exists; remove it (or pass another --root) so the run starts clean")
    results: dict[str, Any] = {"latency_ms": args.latency_ms, "load_before": os.getloadavg()}
    results["build"] = build(args.root, args.objects, int(args.objects * args.referenced), args.per_manifest)
    log.info("built: %s", results["build"])
    runs = []
    for config in args.configs.split(","):
        task, executor, workers = config.split(":")
        cmd = [sys.executable, __file__, "--root", str(args.root), "--latency-ms", str(args.latency_ms)]
        cmd += ["--one", task, executor, workers]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, check=False)
        if proc.returncode != 0:
            runs.append({"config": config, "error": proc.stderr[-2000:]})
            log.error("%s failed: %s", config, proc.stderr[-2000:])
            continue
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]) | {"load": os.getloadavg()})
        log.info("%s: %s", config, runs[-1])
    results["runs"] = runs
    text = json.dumps(results, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
