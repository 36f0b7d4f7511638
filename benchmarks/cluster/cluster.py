"""The simulated deployment: hosts, two S3 regions behind delay proxies, and two Ray clusters.

    with SimCluster(Layout(a_workers=2, b_workers=1), work_dir) as sim:
        sim.start_regions()
        sim.start_ray("a")
        sim.run_on("a0", [...])

Hosts (network namespaces, :mod:`netns`): ``a0`` (cluster A's head, where its driver runs)
and ``a1..``; ``b0`` and ``b1..`` for cluster B; ``x`` and ``y``, one S3 region each
(:mod:`s3host`: SeaweedFS behind :mod:`delayproxy`). Leaving the ``with`` block kills every
process in the run's namespaces and removes them, whatever happened inside.
"""

from __future__ import annotations

import json
import logging
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .netns import Host, Network
from .raynodes import RayCluster, host_env

log = logging.getLogger(__name__)

S3_PORT = 9000


@dataclass
class Layout:
    """How many hosts of each kind, and what the network between them is like."""

    a_workers: int = 2
    b_workers: int = 1
    rtt_ms: float = 20.0
    jitter_ms: float = 1.0
    rate_mbit: float | None = None  # cap on every host's link, each way
    regions: Sequence[str] = ("x", "y")
    clients: Sequence[str] = ()  # plain hosts besides the clusters (a benchmark's client)

    def host_names(self) -> list[str]:
        """``a_workers=-1`` (or ``b_workers=-1``) leaves that cluster out."""
        a = [f"a{i}" for i in range(self.a_workers + 1)]
        b = [f"b{i}" for i in range(self.b_workers + 1)]
        return [*a, *b, *self.regions, *self.clients]


@dataclass
class Region:
    """One S3 endpoint as clients on other hosts see it (through its delay proxy)."""

    name: str
    host: Host
    stats_path: Path
    process: subprocess.Popen[bytes]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def endpoint_url(self) -> str:
        return self.info["endpoint_url"]

    def credentials_env(self) -> dict[str, str]:
        """The region's keys as the AWS_* variables the tqsnap CLI reads."""
        return {"AWS_ACCESS_KEY_ID": self.info["access_key"], "AWS_SECRET_ACCESS_KEY": self.info["secret_key"]}

    def client_bytes(self, hosts: dict[str, Host]) -> dict[str, dict[str, int]]:
        """Bytes each host sent up to this region and got back, from the proxy's counters."""
        by_ip = {h.address: name for name, h in hosts.items()}
        stats = json.loads(self.stats_path.read_text())["clients"]
        return {by_ip.get(ip, ip): counts for ip, counts in stats.items()}


class SimCluster:
    """Builds the hosts on enter; on exit kills what runs in them and removes them."""

    def __init__(self, layout: Layout, work: Path) -> None:
        self.layout = layout
        self.work = work
        self.net: Network | None = None
        self.regions: dict[str, Region] = {}
        self.clusters: dict[str, RayCluster] = {}

    def __enter__(self) -> SimCluster:
        self.work.mkdir(parents=True, exist_ok=True)
        rates = {n: self.layout.rate_mbit for n in self.layout.host_names()} if self.layout.rate_mbit else None
        self.net = Network.build(self.layout.host_names(), rates)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.net is not None:
            self.net.close()
            self.net = None

    @property
    def hosts(self) -> dict[str, Host]:
        assert self.net is not None, "use SimCluster in a with block"
        return self.net.hosts

    def start_regions(self, buckets: Sequence[str] = ("tqsnap-cluster",), timeout: float = 120.0) -> None:
        """Start every region's server and proxy together; wait until each serves, and make ``buckets``."""
        for name in self.layout.regions:
            host = self.hosts[name]
            ready = self.work / f"region-{name}.json"
            stats = self.work / f"region-{name}-stats.json"
            ready.unlink(missing_ok=True)
            argv = [
                "python",
                "-m",
                "benchmarks.cluster.s3host",
                f"--dir={self.work / f'weed-{name}'}",
                f"--listen={host.address}:{S3_PORT}",
                f"--ready={ready}",
                f"--stats={stats}",
                f"--rtt-ms={self.layout.rtt_ms}",
                f"--jitter-ms={self.layout.jitter_ms}",
            ]
            out = open(self.work / f"region-{name}.log", "wb")  # noqa: SIM115 - owned by the child
            proc = subprocess.Popen(
                host.cmd(argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=host_env(),
                cwd=Path(__file__).resolve().parents[2],
                start_new_session=True,
            )
            self.regions[name] = Region(name, host, stats, proc)
        deadline = time.monotonic() + timeout
        for name, region in self.regions.items():
            ready = self.work / f"region-{name}.json"
            while not ready.exists():
                if region.process.poll() is not None or time.monotonic() > deadline:
                    log_text = (self.work / f"region-{name}.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"region {name} did not start: {log_text}")
                time.sleep(0.2)
            region.info = json.loads(ready.read_text())
        for region in self.regions.values():
            for bucket in buckets:
                self.run_on(
                    region.name,
                    [
                        "python",
                        "-c",
                        "import sys, boto3; boto3.client('s3', endpoint_url=sys.argv[1], aws_access_key_id=sys.argv[2], "
                        "aws_secret_access_key=sys.argv[3], region_name='us-east-1').create_bucket(Bucket=sys.argv[4])",
                        region.info["direct_url"],
                        region.info["access_key"],
                        region.info["secret_key"],
                        bucket,
                    ],
                    timeout=60,
                )

    def start_ray(self, name: str, timeout: float = 240.0) -> RayCluster:
        """Start cluster ``name`` ("a" or "b"): its head on ``<name>0``, workers on the others."""
        workers = [self.hosts[h] for h in sorted(self.hosts) if h.startswith(name) and h != f"{name}0"]
        cluster = RayCluster(name, self.hosts[f"{name}0"], workers)
        self.clusters[name] = cluster
        cluster.start(self.work, timeout)
        return cluster

    def stop_ray(self, name: str) -> None:
        """Stop cluster ``name``: kill every process on its hosts (frees their CPU for the next step)."""
        from .netns import kill_namespace_processes

        cluster = self.clusters.pop(name)
        for host in [cluster.head, *cluster.workers]:
            kill_namespace_processes(host.ns)
        for p in cluster.processes:
            p.wait(timeout=10)

    def run_on(
        self,
        host: str,
        argv: Sequence[str],
        timeout: float,
        log_name: str | None = None,
        env: dict[str, str] | None = None,
    ) -> str:
        """Run ``argv`` on ``host`` from the repository root; return its output, raise if it fails.

        The output goes to ``<work>/<log_name>`` as it comes, so a step that hangs can be read.
        """
        log_path = self.work / (log_name or f"run-{host}.log")
        with open(log_path, "wb") as out:
            proc = subprocess.Popen(
                self.hosts[host].cmd(list(argv)),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=host_env(env),
                cwd=Path(__file__).resolve().parents[2],
            )
            try:
                code = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
                tail = log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"`{' '.join(argv[:4])} ...` on {host} ran past {timeout:.0f}s: {tail}") from None
        output = log_path.read_text(errors="replace")
        if code != 0:
            raise RuntimeError(f"`{' '.join(argv[:4])} ...` on {host} exited with {code}: {output[-4000:]}")
        return output

    def counters(self) -> dict[str, dict[str, int]]:
        assert self.net is not None
        return self.net.counters()
