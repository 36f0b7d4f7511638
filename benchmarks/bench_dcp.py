"""tqsnap.dcp against DCP's own writers on the same state dict, in one run.

    python benchmarks/bench_dcp.py [--tensors 20] [--mib 8] [--changed 0.1] [--threads 8] [--repeat 3]
                                   [--out benchmarks/results/dcp.md]

Starts SeaweedFS on loopback and measures, on a fresh bucket or directory each time:

- raw boto3: parallel PutObject / GetObject of the same tensor bytes (the same-run reference);
- ``FsspecWriter`` / ``FsspecReader`` (s3fs) on SeaweedFS, with DCP's default ``thread_count=1``
  and with ``thread_count=--threads``;
- ``tqsnap.dcp.Writer`` / ``Reader`` on SeaweedFS;
- ``FileSystemWriter`` / ``FileSystemReader`` and ``tqsnap.dcp`` on local disk.

For each: the full save, the restore, and the save after ``--changed`` of the tensors changed
(DCP's writers rewrite everything; tqsnap uploads only the changed shards). Reported times are
medians over ``--repeat`` runs. Ratios are baseline time / tqsnap time (above 1 means tqsnap is
faster). Goals: full save >= 1.0x FsspecWriter, incremental >= 5x faster than FsspecWriter's
full rewrite.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader, FsspecWriter

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from s3servers import S3Server, start_seaweedfs  # noqa: E402

import tqsnap.dcp  # noqa: E402
from tqsnap.adapters.dcp.repos import open_repository  # noqa: E402
from tqsnap.adapters.tensors import tensor_bytes  # noqa: E402
from tqsnap.engine import PackOptions, Repository  # noqa: E402

MiB = 1 << 20

NOTES = """How to read it:

- Every system saves the same tensors. The systems run interleaved within each run, so load
  that drifts over time hits all of them alike.
- "incremental" is the second save, after `--changed` of the tensors changed. DCP's writers have no
  incremental mode and rewrite the whole state; tqsnap hashes everything and uploads only the
  changed shards, plus the manifest.
- Restores are verified: tqsnap checks every shard's xxh3-128 before the tensor is used. The
  benchmark also compares every tensor after each restore.
- Clients start warm in every system: s3fs reuses its cached filesystem, and tqsnap opens each
  repository once per process, outside the timed region.
- FsspecWriter runs with `sync_files=False`: on S3 a sync is meaningless, and DCP would fall back
  to a machine-wide `os.sync()`. FileSystemWriter and tqsnap's local store both fsync.
- The raw boto3 row PUTs copies of the tensor bytes (`tobytes()`) from 8 threads. It is the
  same-run reference point for what the loopback server sustains, not a hard limit.
"""


def make_state(tensors: int, mib: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {f"layer{i:03d}.weight": torch.randn(mib * MiB // 4, generator=g) for i in range(tensors)}


def change(state: dict[str, torch.Tensor], fraction: float) -> dict[str, torch.Tensor]:
    """A copy of ``state`` with the first ``fraction`` of its tensors changed."""
    out = dict(state)
    for name in sorted(state)[: max(1, round(fraction * len(state)))]:
        out[name] = state[name] + 1
    return out


def zeros(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: torch.zeros_like(v) for k, v in state.items()}


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def check(loaded: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> None:
    for k, v in state.items():
        if not torch.equal(loaded[k], v):
            raise AssertionError(f"{k} differs after restore")


# --- systems under test --------------------------------------------------------------------------


class System:
    """One way to save and restore: ``save(state, tag)`` / ``restore(into, tag)`` on a fresh place."""

    name = ""

    def fresh(self) -> None:
        """Point at an empty bucket or directory."""

    def save(self, state: dict[str, torch.Tensor], tag: str) -> None:
        raise NotImplementedError

    def restore(self, into: dict[str, torch.Tensor], tag: str) -> None:
        raise NotImplementedError


class Fsspec(System):
    def __init__(self, server: S3Server, threads: int) -> None:
        self.server, self.threads = server, threads
        self.name = f"FsspecWriter (s3fs, thread_count={threads})"
        self.kwargs = {
            "key": server.access_key,
            "secret": server.secret_key,
            "client_kwargs": {"endpoint_url": server.endpoint_url, "region_name": "us-east-1"},
        }

    def fresh(self) -> None:
        url, _ = self.server.make_bucket("")
        self.root = url

    def save(self, state: dict[str, torch.Tensor], tag: str) -> None:
        writer = FsspecWriter(
            f"{self.root}/{tag}", thread_count=self.threads, sync_files=False, **self.kwargs
        )
        dcp.save(state, storage_writer=writer)

    def restore(self, into: dict[str, torch.Tensor], tag: str) -> None:
        dcp.load(into, storage_reader=FsspecReader(f"{self.root}/{tag}", **self.kwargs))


class LocalDcp(System):
    name = "FileSystemWriter (local disk)"

    def __init__(self, base: Path, threads: int) -> None:
        self.base, self.threads = base, threads

    def fresh(self) -> None:
        self.root = self.base / uuid.uuid4().hex

    def save(self, state: dict[str, torch.Tensor], tag: str) -> None:
        dcp.save(state, storage_writer=FileSystemWriter(self.root / tag, thread_count=self.threads))

    def restore(self, into: dict[str, torch.Tensor], tag: str) -> None:
        dcp.load(into, storage_reader=FileSystemReader(self.root / tag))


class Tqsnap(System):
    """Every save goes to one stream, so the second save is incremental; ``tag`` is ignored."""

    def __init__(self, name: str, make_url: Callable[[], tuple[str, dict[str, Any]]], threads: int) -> None:
        self.name, self.make_url, self.threads = name, make_url, threads
        self.last_stats: dict[str, Any] = {}

    def fresh(self) -> None:
        self.url, self.options = self.make_url()
        # Warm like s3fs's cached filesystem: a process opens a repository (S3 client, config) once.
        open_repository(self.url, self.options, create=True)
        self.writer = tqsnap.dcp.Writer(
            self.url,
            stream="bench",
            storage_options=self.options,
            options=PackOptions(upload_threads=self.threads),
        )

    def save(self, state: dict[str, torch.Tensor], tag: str) -> None:
        dcp.save(state, storage_writer=self.writer)
        assert self.writer.last_snapshot is not None
        self.last_stats = self.writer.last_snapshot.stats

    def restore(self, into: dict[str, torch.Tensor], tag: str) -> None:
        dcp.load(
            into, storage_reader=tqsnap.dcp.Reader(self.url, stream="bench", storage_options=self.options)
        )


def raw_boto3(server: S3Server, state: dict[str, torch.Tensor], threads: int) -> tuple[float, float]:
    """Parallel PutObject then GetObject of the same tensor bytes: the ceiling of this host."""
    url, _ = server.make_bucket("raw")
    bucket = url.split("/")[2]
    client = server.client(max_pool_connections=threads * 2)
    views = [tensor_bytes(t)[0] for t in state.values()]

    def put(iv: tuple[int, memoryview]) -> None:
        client.put_object(Bucket=bucket, Key=f"raw/{iv[0]}", Body=iv[1].tobytes())

    def get(i: int) -> int:
        return len(client.get_object(Bucket=bucket, Key=f"raw/{i}")["Body"].read())

    with ThreadPoolExecutor(threads) as pool:
        put_s = timed(lambda: list(pool.map(put, enumerate(views))))
        get_s = timed(lambda: list(pool.map(get, range(len(views)))))
    return put_s, get_s


def measure(
    system: System, state: dict[str, torch.Tensor], changed: dict[str, torch.Tensor]
) -> dict[str, Any]:
    system.fresh()
    full = timed(lambda: system.save(state, "v1"))
    into = zeros(state)
    restore = timed(lambda: system.restore(into, "v1"))
    check(into, state)
    incremental = timed(lambda: system.save(changed, "v2"))
    into = zeros(changed)
    system.restore(into, "v2")
    check(into, changed)
    out: dict[str, Any] = {"full": full, "restore": restore, "incremental": incremental}
    if isinstance(system, Tqsnap):
        out["inc_uploaded"] = system.last_stats.get("stored_bytes", 0)
    return out


# --- report --------------------------------------------------------------------------------------


def report(
    args: argparse.Namespace,
    total: int,
    raw: tuple[float, float],
    rows: dict[str, dict[str, float]],
    spread: dict[str, dict[str, tuple[float, float]]],
) -> str:
    s3 = rows["tqsnap.dcp (SeaweedFS)"]
    fsspec = {k: v for k, v in rows.items() if k.startswith("FsspecWriter")}
    s3_best = {col: min(r[col] for r in fsspec.values()) for col in ("full", "restore", "incremental")}
    local, fs = rows["tqsnap.dcp (local disk)"], rows["FileSystemWriter (local disk)"]
    mb = total / 1e6

    def cell(name: str, col: str, rate: bool) -> str:
        value = rows[name][col]
        lo, hi = spread[name][col]
        speed = f", {mb / value:.0f} MB/s" if rate else ""
        return f"{value:.2f} ({lo:.2f}-{hi:.2f}{speed})"

    def line(name: str) -> str:
        uploaded = rows[name].get("inc_uploaded")
        inc_mb = f"{uploaded / 1e6:.1f}" if uploaded is not None else f"{mb:.1f}"
        return (
            f"| {name} | {cell(name, 'full', True)} | {cell(name, 'restore', True)}"
            f" | {cell(name, 'incremental', False)} | {inc_mb} |"
        )

    lines = [
        f"State: {args.tensors} fp32 tensors x {args.mib} MiB = {total / MiB:.0f} MiB; incremental save after "
        f"{args.changed:.0%} of the tensors changed; median of {args.repeat} runs; {args.threads} upload threads.",
        "",
        "Cells: median seconds (min-max over the runs, and throughput).",
        "",
        "| system | full save s | restore s | incremental save s | incremental MB sent |",
        "|---|---|---|---|---|",
        f"| raw boto3 PUT / GET, {args.threads} threads (reference) | {raw[0]:.2f} ({mb / raw[0]:.0f} MB/s)"
        f" | {raw[1]:.2f} ({mb / raw[1]:.0f} MB/s) | | |",
        *(line(name) for name in rows),
        "",
        "| ratio (baseline time / tqsnap time) | value | goal |",
        "|---|---|---|",
        f"| full save vs best FsspecWriter | {s3_best['full'] / s3['full']:.2f}x | >= 1.0x |",
        f"| full save vs FsspecWriter, DCP default thread_count=1 | "
        f"{fsspec[next(k for k in fsspec if 'thread_count=1)' in k)]['full'] / s3['full']:.2f}x | |",
        f"| restore vs best FsspecReader | {s3_best['restore'] / s3['restore']:.2f}x | |",
        f"| incremental save vs best FsspecWriter full rewrite | {s3_best['incremental'] / s3['incremental']:.2f}x"
        " | >= 5x |",
        f"| full save vs raw boto3 PUT | {raw[0] / s3['full']:.2f}x | |",
        f"| local: full save vs FileSystemWriter | {fs['full'] / local['full']:.2f}x | |",
        f"| local: restore vs FileSystemReader | {fs['restore'] / local['restore']:.2f}x | |",
        f"| local: incremental vs FileSystemWriter rewrite | {fs['incremental'] / local['incremental']:.2f}x | |",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tensors", type=int, default=20)
    ap.add_argument("--mib", type=int, default=8)
    ap.add_argument("--changed", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, help="write the results as markdown to this file")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    logging.basicConfig(level=logging.WARNING)

    state = make_state(args.tensors, args.mib)
    changed = change(state, args.changed)
    total = sum(t.nbytes for t in state.values())
    load_before = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="bench-dcp-"))
    server = start_seaweedfs(tmp / "seaweedfs")
    try:

        def s3_url() -> tuple[str, dict[str, Any]]:
            return server.make_bucket("tq")

        def local_url() -> tuple[str, dict[str, Any]]:
            path = tmp / "tq" / uuid.uuid4().hex
            Repository.init(str(path))
            return str(path), {}

        systems: list[System] = [
            Fsspec(server, 1),
            Fsspec(server, args.threads),
            Tqsnap("tqsnap.dcp (SeaweedFS)", s3_url, args.threads),
            LocalDcp(tmp / "dcp", args.threads),
            Tqsnap("tqsnap.dcp (local disk)", local_url, args.threads),
        ]
        samples: dict[str, list[dict[str, Any]]] = {s.name: [] for s in systems}
        raws: list[tuple[float, float]] = []
        raw_boto3(server, state, args.threads)  # warm-up: SeaweedFS grows its volumes on first writes
        for rep in range(args.repeat):
            raws.append(raw_boto3(server, state, args.threads))
            for system in systems:  # interleaved, so drifting load hits every system alike
                samples[system.name].append(measure(system, state, changed))
                print(f"run {rep + 1}: {system.name}: {samples[system.name][-1]}", flush=True)
        rows = {
            name: {k: statistics.median(s[k] for s in runs) for k in runs[0]}
            for name, runs in samples.items()
        }
        spread = {
            name: {k: (min(s[k] for s in runs), max(s[k] for s in runs)) for k in runs[0]}
            for name, runs in samples.items()
        }
        load = os.getloadavg()
        raw = (statistics.median(r[0] for r in raws), statistics.median(r[1] for r in raws))
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    table = report(args, total, raw, rows, spread)
    print(table)
    if args.out:
        command = "python benchmarks/bench_dcp.py " + " ".join(sys.argv[1:])
        host = (
            f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
            f"torch {torch.__version__}; load average {load_before[0]:.1f} at the start, {load[0]:.1f} at the end"
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            f"# tqsnap.dcp against DCP's writers\n\nReproduce with:\n\n    {command}\n\nHost: {host}; SeaweedFS "
            f"on loopback, client and server sharing the CPUs.\n\n{table}\n\n{NOTES}"
        )


if __name__ == "__main__":
    main()
