"""Benchmark: one gc sweep over N shard objects on SeaweedFS; time and requests per object.

    python benchmarks/bench_gc.py --objects 10000 100000 --garbage 0.5 --out bench-out/gc-table.md
    python benchmarks/bench_gc.py --objects 20000 --latency-ms 20

For each size it starts from a fresh bucket, writes N shard objects spread over the 256
``shards/xx/`` prefixes (a ``--garbage`` fraction of them unreferenced, the rest referenced by
manifests of 5000 shards each), waits out ``grace``, and then runs:

- a dry run listing the prefixes one at a time (``threads=1``),
- a dry run listing them in parallel (the default ``threads=16``),
- the real sweep (parallel listing, batched deletes),

counting every HTTP request boto3 sends, by operation. The goals: requests grow with the object
count divided by the 1000-key page (O(objects)), parallel prefixes cut the listing time, and
deletes take at most one request per 1000 garbage objects.
"""

from __future__ import annotations

import argparse
import logging
import math
import secrets
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from s3servers import start_seaweedfs  # noqa: E402

from tqsnap.engine import Repository  # noqa: E402
from tqsnap.engine.gc import GarbageCollector, GcReport  # noqa: E402
from tqsnap.format.keys import snapshot_key  # noqa: E402
from tqsnap.format.manifest import Manifest, ShardRef  # noqa: E402

log = logging.getLogger("bench_gc")
PER_MANIFEST = 5000
BODY = b"0123456789abcdef"  # object count, not size, is what a sweep pays for


def populate(repo: Repository, n: int, garbage: float, threads: int) -> tuple[int, int, float]:
    """Write n shard objects; reference all but ``garbage`` of them from manifests."""
    keys = []
    for _ in range(n):
        digest = secrets.token_hex(16)
        keys.append(f"shards/{digest[:2]}/{digest}.{secrets.token_hex(8)}")
    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda k: repo.store.put(k, BODY), keys, chunksize=64))
    upload_s = time.perf_counter() - t0
    live = keys[: n - int(n * garbage)]
    for i in range(math.ceil(len(live) / PER_MANIFEST)):
        part = live[i * PER_MANIFEST : (i + 1) * PER_MANIFEST]
        now = repo.store.now()
        manifest = Manifest(
            kind="bench",
            stream="bench",
            seq=i + 1,
            parent=None,
            write_id=secrets.token_hex(16),
            started_at=now,
            committed_at=now,
            shards=[ShardRef(k, k.split("/")[2].split(".")[0], len(BODY), len(BODY)) for k in part],
            items=[],
        )
        assert repo.store.put_if_absent(snapshot_key("bench", i + 1), manifest.encode())
    return len(live), n - len(live), upload_s


def sweep(
    repo: Repository, *, dry_run: bool, threads: int, latency: float
) -> tuple[GcReport, Counter[str], float, float]:
    """One gc run, with every HTTP request counted by S3 operation name (and, with ``latency``,
    delayed by that many seconds to emulate a store farther away than loopback)."""
    calls: Counter[str] = Counter()

    def count(model: Any, **_: Any) -> None:
        calls[model.name] += 1

    def delay(**_: Any) -> None:
        time.sleep(latency)

    events = repo.store.client.meta.events  # type: ignore[attr-defined]
    events.register("before-call.s3", count)
    if latency:
        events.register("before-send.s3", delay)
    try:
        t0, cpu0 = time.perf_counter(), time.process_time()
        report = GarbageCollector(repo, dry_run=dry_run, threads=threads).run()
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    finally:
        events.unregister("before-call.s3", count)
        if latency:
            events.unregister("before-send.s3", delay)
    return report, calls, elapsed, cpu


def run_size(
    server: Any, n: int, garbage: float, grace: float, upload_threads: int, latency: float
) -> list[dict[str, Any]]:
    url, options = server.make_bucket()
    repo = Repository.init(url, grace=grace, max_write_duration=grace / 3, storage_options=options)
    live, dead, upload_s = populate(repo, n, garbage, upload_threads)
    log.info("%d objects written in %.1fs (%d live, %d garbage)", n, upload_s, live, dead)
    time.sleep(grace + 1.5)
    rows = []
    for label, dry, threads in (
        ("dry run, serial listing", True, 1),
        ("dry run, parallel listing", True, 16),
        ("sweep (deletes)", False, 16),
    ):
        report, calls, elapsed, cpu = sweep(repo, dry_run=dry, threads=threads, latency=latency)
        assert report.shards_deleted == dead, (report.shards_deleted, dead)
        rows.append(
            {
                "objects": n,
                "garbage": dead,
                "run": label,
                "seconds": elapsed,
                "cpu": cpu,
                "latency_ms": latency * 1000,
                "list": calls["ListObjectsV2"],
                "get": calls["GetObject"],
                "delete": calls["DeleteObjects"],
                "total": sum(calls.values()),
                "estimated": report.total_requests,
            }
        )
        log.info("%s: %.2fs, %s", label, elapsed, dict(calls))
    remaining = sum(1 for _ in repo.store.list("shards/"))
    assert remaining == live, (remaining, live)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| objects | garbage | added latency | run | time (s) | client CPU (s) | objects/s | ListObjectsV2 "
        "| GetObject | DeleteObjects | requests | requests/object | deletes per 1000 garbage |\n"
        "|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    for r in rows:
        per_k = r["delete"] / (r["garbage"] / 1000) if r["delete"] else 0
        lines.append(
            f"| {r['objects']:,} | {r['garbage']:,} | {r['latency_ms']:.0f} ms | {r['run']} | {r['seconds']:.2f} "
            f"| {r['cpu']:.2f} | {r['objects'] / r['seconds']:,.0f} | {r['list']} | {r['get']} | {r['delete']} "
            f"| {r['total']} | {r['total'] / r['objects']:.4f} | {per_k:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--objects", type=int, nargs="+", default=[100_000], help="shard counts to sweep")
    ap.add_argument("--garbage", type=float, default=0.5, help="fraction of shards left unreferenced")
    ap.add_argument("--grace", type=float, default=3.0, help="repository grace in seconds")
    ap.add_argument("--upload-threads", type=int, default=32)
    ap.add_argument(
        "--latency-ms",
        type=float,
        default=0.0,
        help="add this much delay to every gc request, to emulate a store farther away than loopback",
    )
    ap.add_argument("--out", type=Path, help="also write the markdown table here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("tqsnap").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench-gc-") as tmp:
        server = start_seaweedfs(Path(tmp))
        try:
            rows = [
                row
                for n in args.objects
                for row in run_size(
                    server, n, args.garbage, args.grace, args.upload_threads, args.latency_ms / 1000
                )
            ]
        finally:
            server.stop()
    text = table(rows)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
