"""Save and restore over a simulated network: tqsnap against raw boto3 and obstore, same bytes.

    sudo .venv/bin/python benchmarks/bench_network.py [--mib 1024 --tensor-mib 16]
        [--concurrency 16] [--rtt-ms 20] [--rate-mbit 1000] [--repeat 2]

Builds two hosts in network namespaces (:mod:`benchmarks.cluster.netns`): ``x``, a SeaweedFS
server behind the delay proxy (``--rtt-ms`` added per round trip, 1 ms jitter), and
``client``; both links are capped at ``--rate-mbit`` each way with tbf. On the client, in one
fresh process per measurement, it times with ``--concurrency`` requests in flight:

- raw boto3: one PutObject / GetObject per tensor from a thread pool (no payload signing,
  no checksums: the cheapest boto3 can be);
- obstore (the Rust ``object_store`` binding), if installed: ``put_async`` / ``get_async``
  per tensor under a semaphore;
- tqsnap ``save`` (full) and ``load`` (every shard verified), ``upload_threads`` and the
  reader's threads set to the same concurrency.

Each reports seconds, MB/s, requests, and the client process's CPU seconds (user + system,
all threads, from ``resource.getrusage``) per GiB moved, with the system part, the voluntary
context switches (a thread blocking and being woken) and page faults per MiB. tqsnap's rows also
give the CPU of its xxh3-128 over the same bytes, measured apart (a save hashes every byte and a
load verifies every byte; the raw clients do neither). Prints a table; ``--json`` also writes
the rows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GIB = 2**30


def _usage() -> dict[str, float]:
    """This process's CPU (user, system: all threads), context switches and page faults so far."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "user": r.ru_utime,
        "sys": r.ru_stime,
        "wakeups": r.ru_nvcsw,
        "preempted": r.ru_nivcsw,
        "faults": r.ru_minflt + r.ru_majflt,
    }


def _since(before: dict[str, float]) -> dict[str, float]:
    now = _usage()
    return {k: now[k] - before[k] for k in now}


def _tensors(total_mib: int, tensor_mib: int) -> dict[str, Any]:
    import torch

    g = torch.Generator().manual_seed(0)
    n = tensor_mib * 2**20 // 4
    return {f"layer{i:03d}": torch.randn(n, generator=g) for i in range(total_mib // tensor_mib)}


def _boto3(info: dict[str, Any], concurrency: int) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=info["endpoint_url"],
        aws_access_key_id=info["access_key"],
        aws_secret_access_key=info["secret_key"],
        region_name="us-east-1",
        config=Config(
            s3={"addressing_style": "path", "payload_signing_enabled": False},
            max_pool_connections=concurrency * 2,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )


def _obstore(info: dict[str, Any], bucket: str) -> Any:
    from obstore.store import S3Store

    return S3Store(
        bucket,
        endpoint=info["endpoint_url"],
        access_key_id=info["access_key"],
        secret_access_key=info["secret_key"],
        region="us-east-1",
        virtual_hosted_style_request=False,
        client_options={"allow_http": True},
    )


def client_run(method: str, direction: str, info: dict[str, Any], a: argparse.Namespace) -> dict[str, Any]:
    """One measurement, in this (fresh) process on the client host."""
    from tqsnap.adapters.tensors import tensor_bytes

    state = _tensors(a.mib, a.tensor_mib)
    views = {k: tensor_bytes(t)[0] for k, t in state.items()}
    blobs = {k: bytes(v) for k, v in views.items()} if method == "boto3" else None
    total = sum(v.nbytes for v in views.values())
    bucket, prefix = a.bucket, f"{method}"
    requests = len(views)
    if method == "boto3":
        client = _boto3(info, a.concurrency)
        if direction == "get":  # what the timed read reads, written untimed first
            with ThreadPoolExecutor(a.concurrency) as pool:
                list(pool.map(lambda k: client.put_object(Bucket=bucket, Key=f"{prefix}/{k}", Body=blobs[k]), blobs))
        use0, t0 = _usage(), time.perf_counter()
        with ThreadPoolExecutor(a.concurrency) as pool:
            if direction == "put":
                list(pool.map(lambda k: client.put_object(Bucket=bucket, Key=f"{prefix}/{k}", Body=blobs[k]), blobs))
            else:
                got = list(pool.map(lambda k: client.get_object(Bucket=bucket, Key=f"{prefix}/{k}")["Body"].read(), blobs))
                assert sum(len(b) for b in got) == total
    elif method == "obstore":
        import obstore

        store = _obstore(info, bucket)

        async def run(put: bool) -> int:
            sem = asyncio.Semaphore(a.concurrency)

            async def one(k: str) -> int:
                async with sem:
                    if put:
                        await obstore.put_async(store, f"{prefix}/{k}", views[k])
                        return 0
                    return len(await (await obstore.get_async(store, f"{prefix}/{k}")).bytes_async())

            return sum(await asyncio.gather(*(one(k) for k in views)))

        if direction == "get":
            asyncio.run(run(True))
        use0, t0 = _usage(), time.perf_counter()
        n = asyncio.run(run(direction == "put"))
        assert direction == "put" or n == total
    else:
        import torch

        import tqsnap
        from tqsnap.engine import PackOptions, Repository
        from tqsnap.store import CountingStore, open_store

        url = f"s3://{bucket}/{prefix}"
        options = {
            "endpoint_url": info["endpoint_url"],
            "aws_access_key_id": info["access_key"],
            "aws_secret_access_key": info["secret_key"],
            "max_pool_connections": max(32, 2 * a.concurrency),
        }
        store = CountingStore(open_store(url, **options))
        pack = PackOptions(upload_threads=a.concurrency)
        repo = Repository.open(store, create=True)
        if direction == "get":
            tqsnap.save(repo, state, stream="bench", options=pack)
        store.reset()
        use0, t0 = _usage(), time.perf_counter()
        if direction == "put":
            tqsnap.save(repo, state, stream="bench", options=pack)
        else:
            back = tqsnap.load(repo, stream="bench")
        seconds, used = time.perf_counter() - t0, _since(use0)
        if direction == "get":
            assert all(torch.equal(back[k], state[k]) for k in state)
        requests = sum(store.requests.values())
        row = _row(method, direction, total, seconds, used, requests)
        # What hashing (save) or verifying (load) every byte costs, which raw clients skip:
        # the same xxh3-128 over the same bytes, measured apart.
        from tqsnap.format.shard import content_hash

        hash0 = _usage()
        for view in views.values():
            content_hash(view)
        hashed = _since(hash0)
        row["hash_cpu_s_per_gib"] = round((hashed["user"] + hashed["sys"]) / (total / GIB), 3)
        return row
    return _row(method, direction, total, time.perf_counter() - t0, _since(use0), requests)


def _row(method: str, direction: str, total: int, seconds: float, used: dict[str, float], requests: int) -> dict[str, Any]:
    gib = total / GIB
    return {
        "method": method,
        "direction": direction,
        "bytes": total,
        "seconds": round(seconds, 3),
        "mb_s": round(total / 1e6 / seconds, 1),
        "requests": requests,
        "cpu_s_per_gib": round((used["user"] + used["sys"]) / gib, 3),
        "sys_s_per_gib": round(used["sys"] / gib, 3),
        "wakeups_per_mib": round(used["wakeups"] / (gib * 1024), 1),
        "preempted_per_mib": round(used["preempted"] / (gib * 1024), 1),
        "faults_per_mib": round(used["faults"] / (gib * 1024), 1),
    }


def orchestrate(a: argparse.Namespace) -> list[dict[str, Any]]:
    from benchmarks.cluster.cluster import Layout, SimCluster

    methods = ["boto3", "tqsnap"]
    try:
        import obstore  # noqa: F401

        methods.insert(1, "obstore")
    except ImportError:
        print("obstore is not installed (pip install obstore): measuring boto3 and tqsnap only", file=sys.stderr)
    layout = Layout(
        a_workers=-1,
        b_workers=-1,
        rtt_ms=a.rtt_ms,
        jitter_ms=1.0,
        rate_mbit=a.rate_mbit,
        regions=("x",),
        clients=("client",),
    )
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="tqsc-bench-") as tmp, SimCluster(layout, Path(tmp)) as sim:
        buckets = [f"bench-{i}" for i in range(a.repeat * 2 * len(methods))]
        sim.start_regions(buckets)
        info = sim.regions["x"].info
        k = 0
        for _ in range(a.repeat):
            for direction in ("put", "get"):
                for method in methods:
                    argv = [
                        "python",
                        "benchmarks/bench_network.py",
                        "--client",
                        json.dumps({"method": method, "direction": direction, "info": info}),
                        f"--mib={a.mib}",
                        f"--tensor-mib={a.tensor_mib}",
                        f"--concurrency={a.concurrency}",
                        f"--bucket={buckets[k]}",
                    ]
                    k += 1
                    out = sim.run_on("client", argv, timeout=a.timeout, log_name=f"bench-{method}-{direction}.log")
                    row = _result_line(out)
                    row["load_avg_1m"] = round(os.getloadavg()[0], 1)  # other work on the machine
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    return rows


def _result_line(output: str) -> dict[str, Any]:
    """The measurement's JSON row: the last line that is one (a library may warn after it)."""
    for line in reversed(output.strip().splitlines()):
        if line.startswith("{"):
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and "method" in row:
                return row
    raise RuntimeError(f"the measurement printed no result row: {output[-2000:]}")


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median of the repeats per (method, direction)."""
    out = []
    keys = sorted({(r["method"], r["direction"]) for r in rows}, key=lambda k: (k[1] != "put", k[0]))
    for method, direction in keys:
        sel = [r for r in rows if r["method"] == method and r["direction"] == direction]
        out.append(
            {
                "method": method,
                "direction": direction,
                "seconds": round(statistics.median(r["seconds"] for r in sel), 2),
                "mb_s": round(statistics.median(r["mb_s"] for r in sel), 1),
                "requests": sel[0]["requests"],
                "cpu_s_per_gib": round(statistics.median(r["cpu_s_per_gib"] for r in sel), 2),
                "sys_s_per_gib": round(statistics.median(r.get("sys_s_per_gib", 0.0) for r in sel), 2),
                "wakeups_per_mib": round(statistics.median(r.get("wakeups_per_mib", 0.0) for r in sel), 1),
                "hash_cpu_s_per_gib": round(statistics.median(r.get("hash_cpu_s_per_gib", 0.0) for r in sel), 2),
            }
        )
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mib", type=int, default=1024, help="MiB of tensors in all")
    p.add_argument("--tensor-mib", type=int, default=16, help="MiB per tensor")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--rtt-ms", type=float, default=20.0)
    p.add_argument("--rate-mbit", type=float, default=1000.0, help="client link cap (tbf), each way")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--timeout", type=float, default=600.0, help="bound on each measurement")
    p.add_argument("--json", type=Path, default=None, help="write the rows here")
    p.add_argument("--client", default=None, help=argparse.SUPPRESS)
    p.add_argument("--bucket", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.client:
        job = json.loads(a.client)
        print(json.dumps(client_run(job["method"], job["direction"], job["info"], a)))
        return 0
    load_before = os.getloadavg()
    started = time.perf_counter()
    rows = orchestrate(a)
    load_after = os.getloadavg()
    table = summarize(rows)
    best = {d: max(r["mb_s"] for r in table if r["direction"] == d and r["method"] != "tqsnap") for d in ("put", "get")}
    boto_cpu = {r["direction"]: r["cpu_s_per_gib"] for r in table if r["method"] == "boto3"}
    print(
        f"\n{a.mib} MiB as {a.mib // a.tensor_mib} tensors of {a.tensor_mib} MiB; RTT {a.rtt_ms:g} ms (+-1 ms), "
        f"links capped at {a.rate_mbit:g} Mbit/s each way; concurrency {a.concurrency}; median of {a.repeat}; "
        f"{time.perf_counter() - started:.0f} s in all; load average (1, 5, 15 min) "
        f"{'/'.join(f'{x:.1f}' for x in load_before)} before, {'/'.join(f'{x:.1f}' for x in load_after)} after"
    )
    print(
        f"{'client':<10}{'op':<5}{'seconds':>9}{'MB/s':>8}{'x best':>8}{'requests':>10}{'CPU s/GiB':>11}"
        f"{'x boto3':>9}{'sys':>7}{'wake/MiB':>10}{'hash':>7}{'x boto3 w/o hash':>18}"
    )
    for r in table:
        d = r["direction"]
        print(
            f"{r['method']:<10}{d:<5}{r['seconds']:>9.2f}{r['mb_s']:>8.1f}{r['mb_s'] / best[d]:>8.2f}"
            f"{r['requests']:>10}{r['cpu_s_per_gib']:>11.2f}{r['cpu_s_per_gib'] / boto_cpu[d]:>9.2f}"
            f"{r['sys_s_per_gib']:>7.2f}{r['wakeups_per_mib']:>10.1f}{r['hash_cpu_s_per_gib']:>7.2f}"
            f"{(r['cpu_s_per_gib'] - r['hash_cpu_s_per_gib']) / boto_cpu[d]:>18.2f}"
        )
    if a.json:
        a.json.write_text(json.dumps({"args": vars(a) | {"json": str(a.json)}, "rows": rows, "table": table}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
