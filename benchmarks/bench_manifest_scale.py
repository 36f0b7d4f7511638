"""Benchmark: manifest encode, commit, load and resolve for 100k, 1M and 5M items (DCP-like).

    python benchmarks/bench_manifest_scale.py --items 100000 1000000 --out bench-out/manifest-scale.json
    python benchmarks/bench_manifest_scale.py --items 1000000 --lift-limits --out bench-out/manifest-1m.json
    python benchmarks/bench_manifest_scale.py --items 5000000 --body columnar --items-per-shard 16

A DCP checkpoint of a large sharded model has a chunk per tensor per rank: 100,000 tensors x 16
ranks is 1.6M items. Each item here is what the DCP adapter writes for a chunk: a ``tensor``
with dtype, a 2-D shape, one extent and an xxh3 hash, under a path
``model.layers.<l>.<name>.weight/rank<r>``; four items share a shard (``--items-per-shard``).

Each size is measured with each body encoding (``--body``): ``json`` (format 1.2) and
``columnar`` (format 2.0, docs/format.md section 6.1), side by side in one run. Per size and
body, each phase runs in a fresh subprocess, so its peak memory (``VmHWM``) is its own:

- **encode**: the body (``encode_body`` or ``encode_columnar``) and ``Manifest.encode`` (the
  shard table, JSON in the manifest either way);
- **commit**: the real :meth:`SnapshotWriter.commit` on a local-disk repository (body moved into
  a zstd body shard, manifest put-if-absent), with the writer's columnar threshold set to 0 items
  or to never;
- **load**: ``Repository.load_manifest`` (the shard table), then ``load_body`` (read, decompress,
  verify, parse and validate the items) in a process that did nothing else. The goal: <= 2 s,
  <= 1 GiB at 1M;
- **resolve**: ``resolve("latest")``, load, then find one item by path the way
  ``SnapshotReader`` does (a dict of every path for JSON, a binary search for columnar).

Bodies past the format's limits (``MAX_ITEMS``, ``MAX_BODY_BYTES``, ``MAX_JSON_VALUES``) are
refused on load, which is what a reader must do. ``--lift-limits`` raises those limits inside the
benchmark process only, to measure what the JSON path would cost if they were raised. They do
not lift the 64 MiB bound on reading a manifest, which its JSON shard table meets first: 5M items
at 4 per shard are 1.25M shards, a 194 MiB manifest; at 16 per shard (312,500 shards) it fits.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import tqsnap.engine.writer as writer_mod
from tqsnap.engine import Repository, SnapshotWriter
from tqsnap.engine.packer import PackResult, PackStats
from tqsnap.engine.reader import load_body
from tqsnap.format import manifest as manifest_mod
from tqsnap.format import strict
from tqsnap.format.body_columnar import encode_columnar
from tqsnap.format.body_columnar_read import items_by_path
from tqsnap.format.keys import shard_key
from tqsnap.format.manifest import Extent, Item, Manifest, ShardRef, encode_body

log = logging.getLogger("bench_manifest_scale")
CHUNK = 1 << 20  # each item a 1 MiB chunk: the byte count does not matter, the item count does


def lift_limits() -> None:
    big = 1 << 40
    for mod in (strict, manifest_mod):
        for name in ("MAX_ITEMS", "MAX_SHARDS", "MAX_EXTENTS"):
            if hasattr(mod, name):
                setattr(mod, name, big)
    strict.MAX_BODY_BYTES = strict.MAX_MANIFEST_BYTES = big
    strict.MAX_JSON_VALUES = big


def make_path(i: int) -> str:
    layer, rank = divmod(i, 16)
    return f"model.layers.{layer // 8}.p{layer % 8}.weight/rank{rank}"


def make_result(n: int, per_shard: int) -> PackResult:
    shards, items = [], []
    for s in range(-(-n // per_shard)):
        digest = f"{s:032x}"
        shards.append(ShardRef(shard_key(digest, f"{s:016x}"), digest, CHUNK * per_shard, CHUNK * per_shard))
    for i in range(n):
        items.append(
            Item(
                path=make_path(i),
                kind="tensor",
                size=CHUNK,
                extents=[Extent(i // per_shard, (i % per_shard) * CHUNK, CHUNK)],
                dtype="bfloat16",
                shape=[512, 1024],
                hash=f"{i:032x}",
            )
        )
    return PackResult(shards, items, PackStats(items=n, item_bytes=n * CHUNK))


def rss_mib() -> float:
    """This process's peak resident memory (``VmHWM``: unlike ``ru_maxrss``, not the parent's)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def phase(name: str, root: Path, n: int, per_shard: int, body_kind: str) -> dict[str, Any]:
    before = rss_mib()
    if name == "encode":
        result = make_result(n, per_shard)
        before = rss_mib()
        t0, c0 = time.perf_counter(), time.process_time()
        body = (encode_columnar if body_kind == "columnar" else encode_body)(result.items, {})
        t_body = time.perf_counter() - t0
        m = Manifest("dcp", "s", 1, None, "w" * 32, 0.0, 0.0, result.shards, [], body_shard=0)
        t1 = time.perf_counter()
        head = m.encode()
        return {
            "encode_body_s": round(t_body, 2),
            "encode_manifest_s": round(time.perf_counter() - t1, 2),
            "encode_cpu_s": round(time.process_time() - c0, 2),
            "body_mib": round(len(body) / 2**20, 1),
            "manifest_json_mib": round(len(head) / 2**20, 1),
            "rss_delta_mib": round(rss_mib() - before, 1),
        }
    if name == "commit":
        result = make_result(n, per_shard)
        repo = Repository.init(str(root), grace=3600, max_write_duration=1200)
        writer_mod.COLUMNAR_BODY_MIN_ITEMS = 0 if body_kind == "columnar" else 1 << 62
        before = rss_mib()
        t0 = time.perf_counter()
        w = SnapshotWriter.begin(repo, "s", "dcp")
        w.add_result(result)
        info = w.commit()
        m = repo.load_manifest("s", info.seq)
        return {
            "commit_s": round(time.perf_counter() - t0, 2),
            "format_version": m.format_version,
            "body_stored_mib": round(m.shards[m.body_shard].stored_size / 2**20, 1),
            "manifest_mib": round(len(m.encode()) / 2**20, 1),
            "rss_delta_mib": round(rss_mib() - before, 1),
        }
    repo = Repository.open(str(root))
    if name == "load":
        t0, c0 = time.perf_counter(), time.process_time()
        m = repo.load_manifest("s", 1)
        c1 = time.process_time()
        m = load_body(repo.store, m)
        return {
            "load_s": round(time.perf_counter() - t0, 2),
            "load_cpu_s": round(time.process_time() - c0, 2),
            "manifest_cpu_s": round(c1 - c0, 2),
            "body_cpu_s": round(time.process_time() - c1, 2),
            "items": len(m.items),
            "rss_delta_mib": round(rss_mib() - before, 1),
            "peak_rss_mib": round(rss_mib(), 1),
        }
    want = make_path(n // 2)
    t0, c0 = time.perf_counter(), time.process_time()  # resolve
    sid = repo.resolve("s")
    m = load_body(repo.store, repo.load_manifest(sid.stream, sid.seq))
    found = items_by_path(m.items)[want]
    return {
        "resolve_s": round(time.perf_counter() - t0, 2),
        "resolve_cpu_s": round(time.process_time() - c0, 2),
        "found": found.path == want,
        "rss_delta_mib": round(rss_mib() - before, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--items-per-shard", type=int, default=4)
    ap.add_argument("--lift-limits", action="store_true")
    ap.add_argument("--body", nargs="+", choices=["json", "columnar"], default=["json", "columnar"])
    ap.add_argument("--root", type=Path, default=Path("/tmp/tqsnap-bench-manifest"))
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds allowed per phase")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--phase", nargs=3, metavar=("NAME", "ITEMS", "BODY"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.lift_limits:
        lift_limits()
    if args.phase:
        name, n, body_kind = args.phase[0], int(args.phase[1]), args.phase[2]
        print(json.dumps(phase(name, args.root, n, args.items_per_shard, body_kind)))
        return
    results: dict[str, Any] = {"lift_limits": args.lift_limits, "load_before": os.getloadavg(), "sizes": {}}
    for n, body_kind in [(n, b) for n in args.items for b in args.body]:
        root = args.root / f"{n}-{body_kind}"
        shutil.rmtree(root, ignore_errors=True)
        row: dict[str, Any] = {}
        for name in ("encode", "commit", "load", "resolve"):
            cmd = [sys.executable, __file__, "--root", str(root), "--items-per-shard", str(args.items_per_shard)]
            cmd += ["--phase", name, str(n), body_kind] + (["--lift-limits"] if args.lift_limits else [])
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, check=False)
            if proc.returncode != 0:
                row[name] = {"error": proc.stderr.strip().splitlines()[-1][:400]}
                log.error("%d items, %s body, %s: %s", n, body_kind, name, row[name]["error"])
                if name == "commit":
                    break
                continue
            row[name] = json.loads(proc.stdout.strip().splitlines()[-1])
            log.info("%d items, %s body, %s: %s", n, body_kind, name, row[name])
        results["sizes"][f"{n} {body_kind}"] = row
        shutil.rmtree(root, ignore_errors=True)
    text = json.dumps(results, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
