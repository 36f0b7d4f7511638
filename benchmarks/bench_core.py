"""Core save/restore throughput against raw parallel boto3 on the same bytes, in one run.

    python benchmarks/bench_core.py [--tensors 64] [--mib 16] [--threads 8] [--repeat 2]

Starts SeaweedFS on loopback, then measures on a fresh bucket each:
- raw boto3: parallel PutObject / GetObject of the same tensor bytes (the ceiling);
- tqsnap.save (full) and tqsnap.load (restore, every shard verified);
- tqsnap.save after changing 5% of the tensors (incremental).
Each repeat uploads both ways first, then reads both ways, each read after a pause
(``--settle``) so both start with memory in the same state.
Prints a table with ratios (tqsnap throughput / raw throughput; >= 0.9 is the goal).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from s3servers import start_seaweedfs  # noqa: E402

import tqsnap  # noqa: E402
from tqsnap.adapters.tensors import tensor_bytes  # noqa: E402
from tqsnap.engine import PackOptions  # noqa: E402
from tqsnap.store import CountingStore, open_store  # noqa: E402


def settle(seconds: float) -> None:
    """Let freed memory go cold before a timed read, so each read phase starts alike.

    On this VM, memory the guest freed moments ago faults back in several times faster than
    memory it has not used for a few seconds (benchmarks/first_touch.py); without a pause,
    whichever read follows a large free would get the fast pages.
    """
    time.sleep(seconds)


class RawBoto3:
    """The baseline: plain boto3 PutObject / GetObject of the same bytes, one object per tensor."""

    def __init__(self, server: Any, threads: int) -> None:
        url, _ = server.make_bucket("raw")
        self.bucket = url.split("/")[2]
        self.threads = threads
        # The best raw configuration: no payload SHA-256 over plain http, no CRC (as tqsnap's store).
        self.client = server.client(max_pool_connections=threads * 2, s3={"payload_signing_enabled": False})

    def put(self, views: list[memoryview]) -> float:
        """Seconds to upload every tensor's bytes.

        botocore takes bytes: they are made before the clock starts, so the baseline times the
        upload alone (tqsnap's store uploads straight from the tensor memory).
        """
        payloads = [bytes(v) for v in views]
        t0 = time.perf_counter()
        with ThreadPoolExecutor(self.threads) as pool:
            list(
                pool.map(
                    lambda iv: self.client.put_object(Bucket=self.bucket, Key=f"raw/{iv[0]}", Body=iv[1]),
                    enumerate(payloads),
                )
            )
        return time.perf_counter() - t0

    def get(self, count: int, total: int) -> float:
        """Seconds to download them all; the bodies are kept, as a load keeps what it read."""

        def one(i: int) -> bytes:
            return self.client.get_object(Bucket=self.bucket, Key=f"raw/{i}")["Body"].read()

        t0 = time.perf_counter()
        with ThreadPoolExecutor(self.threads) as pool:
            bodies = list(pool.map(one, range(count)))
        seconds = time.perf_counter() - t0
        assert sum(len(b) for b in bodies) == total
        return seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tensors", type=int, default=64)
    ap.add_argument("--mib", type=int, default=16)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--settle", type=float, default=5.0, help="pause before each timed read (s)")
    args = ap.parse_args()

    n_elems = args.mib * (1 << 20) // 4
    g = torch.Generator().manual_seed(0)
    state = {f"layer{i:03d}": torch.randn(n_elems, generator=g) for i in range(args.tensors)}
    views = [tensor_bytes(t)[0] for t in state.values()]
    total = sum(v.nbytes for v in views)
    options = PackOptions(codec="raw", upload_threads=args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        server = start_seaweedfs(Path(tmp))
        try:
            rows: dict[str, list[float]] = {k: [] for k in ("raw_put", "raw_get", "save", "load", "inc")}
            inc_bytes = 0
            for _ in range(args.repeat):
                raw = RawBoto3(server, args.threads)
                rows["raw_put"].append(raw.put(views))
                url, opts = server.make_bucket("tq")
                store = CountingStore(open_store(url, **opts))
                t0 = time.perf_counter()
                tqsnap.save(store, state, stream="bench", options=options)
                rows["save"].append(time.perf_counter() - t0)
                # Both reads start alike: after a pause, with the other's memory freed.
                settle(args.settle)
                rows["raw_get"].append(raw.get(len(views), total))
                settle(args.settle)
                t0 = time.perf_counter()
                back = tqsnap.load(store, stream="bench")
                rows["load"].append(time.perf_counter() - t0)
                assert all(torch.equal(back[k], state[k]) for k in state)
                del back
                changed = dict(state)
                for k in list(state)[:: max(1, round(100 / 5))][: max(1, args.tensors * 5 // 100)]:
                    changed[k] = state[k] + 1
                store.reset()
                t0 = time.perf_counter()
                tqsnap.save(store, changed, stream="bench", options=options)
                rows["inc"].append(time.perf_counter() - t0)
                inc_bytes = store.bytes["put"]
        finally:
            server.stop()

    med = {k: statistics.median(v) for k, v in rows.items()}
    mb = total / 1e6
    print(
        f"state: {args.tensors} tensors x {args.mib} MiB = {total / 2**30:.2f} GiB; SeaweedFS on loopback; "
        f"{args.threads} threads; median of {args.repeat}"
    )
    print(f"{'operation':<28}{'seconds':>9}{'MB/s':>9}{'ratio':>9}")
    print(f"{'raw boto3 PUT':<28}{med['raw_put']:>9.2f}{mb / med['raw_put']:>9.0f}{'1.00':>9}")
    print(
        f"{'tqsnap save (full)':<28}{med['save']:>9.2f}{mb / med['save']:>9.0f}{med['raw_put'] / med['save']:>9.2f}"
    )
    print(f"{'raw boto3 GET':<28}{med['raw_get']:>9.2f}{mb / med['raw_get']:>9.0f}{'1.00':>9}")
    print(
        f"{'tqsnap load (verified)':<28}{med['load']:>9.2f}{mb / med['load']:>9.0f}{med['raw_get'] / med['load']:>9.2f}"
    )
    print(
        f"{'tqsnap save (5% changed)':<28}{med['inc']:>9.2f}{'':>9}{med['inc'] / med['save']:>9.2f}"
        "  (time vs full save)"
    )
    print(
        f"incremental bytes uploaded: {inc_bytes / 1e6:.1f} MB = {100 * inc_bytes / total:.1f}% of the full state"
    )


if __name__ == "__main__":
    main()
