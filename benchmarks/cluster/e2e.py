"""End to end on the simulated cluster: save on cluster A to region X, mirror to Y, restore on B.

    sudo .venv/bin/python -m benchmarks.cluster.e2e [--a-workers 2 --a-units 4]
        [--b-workers 1 --b-units 3] [--duration 30 --every 5] [--rtt-ms 20] [--rate-mbit 1000]

1. Cluster A (head ``a0`` + workers) runs the RL workload with a snapshot every ``--every``
   seconds into region X; its storage units live on the workers only.
2. ``tqsnap copy --all`` mirrors X to Y, run on ``b0``.
3. Cluster B (head ``b0`` + other workers, another unit count) restores the latest snapshot
   from Y, checks it equal to A's final state, and drains what was left to train.

The report (JSON, also ``<work>/report.json``) has, per host, the bytes it sent up to each
region (the regions' proxies count them by client address) and its link counters, and
:func:`check` lists what is wrong with it: a unit on the driver's host, sample data sent by
the driver's host, a host that uploaded nothing, a restore that differs.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .cluster import Layout, SimCluster
from .netns import cleanup_stale

log = logging.getLogger(__name__)
BUCKET = "tqsnap-cluster"

#: The driver's host sends the manifest and the controller's items, never sample data: it
#: may upload at most this fraction of what the unit hosts upload.
DRIVER_SHARE_LIMIT = 0.10


def _scenario(sim: SimCluster, role: str, cluster: str, units: int, region: str, out: Path, extra: list[str], timeout: float) -> dict[str, Any]:
    c = sim.clusters[cluster]
    r = sim.regions[region]
    argv = [
        "python",
        "-m",
        "benchmarks.cluster.scenario",
        role,
        f"--address={c.address}",
        f"--nodes={c.nodes}",
        f"--units={units}",
        f"--repo=s3://{BUCKET}/repo",
        f"--endpoint-url={r.endpoint_url}",
        f"--key={r.info['access_key']}",
        f"--secret={r.info['secret_key']}",
        f"--out={out}",
        *extra,
    ]
    sim.run_on(c.head.name, argv, timeout=timeout, log_name=f"{role}.log")
    return json.loads((out / f"{role}.json").read_text())


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    layout = Layout(
        a_workers=args.a_workers,
        b_workers=args.b_workers,
        rtt_ms=args.rtt_ms,
        jitter_ms=args.jitter_ms,
        rate_mbit=args.rate_mbit,
    )
    report: dict[str, Any] = {"layout": vars(args) | {"work": str(work)}}
    t0 = time.monotonic()
    with SimCluster(layout, work) as sim:
        report["addresses"] = {name: host.address for name, host in sim.hosts.items()}
        sim.start_regions([BUCKET])
        report["regions_up_s"] = round(time.monotonic() - t0, 1)
        sim.start_ray("a", timeout=args.timeout)
        report["cluster_a_up_s"] = round(time.monotonic() - t0, 1)
        x, y = sim.regions["x"], sim.regions["y"]
        # The operator creates the repository first (init also probes the store with a few
        # objects of its own), so what follows counts the snapshots' traffic only.
        sim.run_on(
            "a0",
            ["tqsnap", "init", f"s3://{BUCKET}/repo", f"--endpoint-url={x.endpoint_url}"],
            timeout=args.timeout,
            log_name="init.log",
            env=x.credentials_env(),
        )
        x_before = x.client_bytes(sim.hosts)
        before = sim.counters()
        source = _scenario(
            sim,
            "source",
            "a",
            args.a_units,
            "x",
            work,
            [f"--duration={args.duration}", f"--every={args.every}", f"--feature-mib={args.feature_mib}"],
            args.timeout + args.duration * 3,
        )
        after = sim.counters()
        report["source"] = source
        report["x_uploads"] = {
            h: {"up": c["up"] - x_before.get(h, {}).get("up", 0), "down": c["down"] - x_before.get(h, {}).get("down", 0)}
            for h, c in x.client_bytes(sim.hosts).items()
        }
        report["link_tx_during_source"] = {h: after[h]["tx_bytes"] - before[h]["tx_bytes"] for h in after}
        sim.stop_ray("a")  # cluster A is done: its CPU goes to the copy and cluster B

        t_copy = time.monotonic()
        copy_out = sim.run_on(
            "b0",
            [
                "tqsnap",
                "copy",
                "--all",
                f"s3://{BUCKET}/repo",
                f"s3://{BUCKET}/repo",
                f"--endpoint-url={x.endpoint_url}",
                f"--dst-endpoint-url={y.endpoint_url}",
                "--json",
            ],
            timeout=args.timeout,
            log_name="copy.log",
            env=x.credentials_env(),
        )
        report["copy"] = [json.loads(line) for line in copy_out.splitlines() if line.startswith("{")]
        report["copy_s"] = round(time.monotonic() - t_copy, 2)

        sim.start_ray("b", timeout=args.timeout)
        y_before = y.client_bytes(sim.hosts)
        report["restore"] = _scenario(
            sim, "restore", "b", args.b_units, "y", work, [f"--expect={work / 'dump.pkl'}"], args.timeout * 2
        )
        report["y_downloads"] = {
            h: c["down"] - y_before.get(h, {}).get("down", 0) for h, c in y.client_bytes(sim.hosts).items()
        }
        sim.stop_ray("b")
    report["total_s"] = round(time.monotonic() - t0, 1)
    (work / "report.json").write_text(json.dumps(report, indent=1))
    return report


def check(report: dict[str, Any]) -> list[str]:
    """What the report shows to be wrong; empty when the run did what the design promises."""
    problems: list[str] = []
    src, rst = report["source"], report["restore"]
    addr = {v: k for k, v in report.get("addresses", {}).items()}
    if src["driver"] in src["units"]:
        problems.append(f"a storage unit of cluster A runs on the driver's host {src['driver']}")
    up = {h: c["up"] for h, c in report["x_uploads"].items()}
    unit_hosts = sorted({addr.get(u, u) for u in src["units"]})
    unit_up = sum(up.get(h, 0) for h in unit_hosts)
    driver_up = up.get("a0", 0)
    if unit_up == 0:
        problems.append("the unit hosts uploaded nothing to region X")
    elif driver_up > DRIVER_SHARE_LIMIT * unit_up:
        problems.append(f"the driver's host a0 uploaded {driver_up} bytes, the unit hosts {unit_up}: sample data went through it")
    for h in unit_hosts:
        if up.get(h, 0) == 0:
            problems.append(f"unit host {h} uploaded nothing: its units' data went elsewhere")
    copied = [c for c in report["copy"] if c.get("status") in ("copied", "already present")]
    if len(copied) != len(src["snapshots"]):
        problems.append(f"copy mirrored {len(copied)} snapshots of {len(src['snapshots'])}")
    if rst["diffs"]:
        problems.append(f"the restore on cluster B differs: {rst['diffs']}")
    if rst["source_units"] == len(rst["units"]):
        problems.append("cluster B has as many units as cluster A: the restore did not re-shard")
    if rst["driver"] in rst["units"]:
        problems.append("a storage unit of cluster B runs on the driver's host")
    down = report["y_downloads"]
    b_unit_down = sum(down.get(addr.get(u, u), 0) for u in set(rst["units"]))
    if b_unit_down == 0 or down.get("b0", 0) > DRIVER_SHARE_LIMIT * b_unit_down + 4 * 1024 * 1024:
        problems.append(f"restore downloads: driver b0 {down.get('b0', 0)} bytes, unit hosts {b_unit_down}")
    return problems


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--a-workers", type=int, default=2)
    p.add_argument("--a-units", type=int, default=4)
    p.add_argument("--b-workers", type=int, default=1)
    p.add_argument("--b-units", type=int, default=3)
    p.add_argument("--duration", type=float, default=30.0, help="seconds of workload on cluster A")
    p.add_argument("--every", type=float, default=5.0, help="seconds between snapshots")
    p.add_argument("--feature-mib", type=float, default=64.0, help="MiB of static sample data besides the rollouts")
    p.add_argument("--rtt-ms", type=float, default=20.0)
    p.add_argument("--jitter-ms", type=float, default=1.0)
    p.add_argument("--rate-mbit", type=float, default=None, help="cap on every host's link (tbf)")
    p.add_argument("--timeout", type=float, default=300.0, help="bound on each start-up and step")
    p.add_argument("--work", type=Path, default=None, help="directory for logs (default: a temporary one)")
    p.add_argument("--cleanup", action="store_true", help="only remove what a crashed run left behind")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.cleanup:
        print("removed:", cleanup_stale() or "nothing")
        return 0
    work = args.work or Path(tempfile.mkdtemp(prefix="tqsc-"))
    report = run(args, work)
    problems = check(report)
    summary = {k: report[k] for k in ("x_uploads", "y_downloads", "link_tx_during_source", "total_s")}
    print(json.dumps(summary, indent=1))
    print("problems:", problems or "none")
    print("report:", work / "report.json")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
