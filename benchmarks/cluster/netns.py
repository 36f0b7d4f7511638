"""Hosts on one machine: network namespaces joined by a bridge, with capped links.

Each host is a network namespace ``tqsc-<run>-<host>`` with one interface, ``eth0``, whose
veth peer sits on a bridge inside a namespace of its own (``tqsc-<run>-sw``), so the root
namespace gets no interface, no address and no route: traffic between hosts never leaves the
run's namespaces. Addresses come from 10.77.0.0/24, private and visible only inside them.

A link may be capped with ``tbf`` on both ends (the host's egress, and the bridge port's
egress, which is the host's ingress). Latency is not added here: this kernel has no
``netem``, so :mod:`delayproxy` adds it in front of each S3 server.

Every name starts with ``tqsc-``, so :func:`cleanup_stale` can remove what a crashed run
left behind; a teardown kills only the processes that run inside the run's own namespaces
(``ip netns pids``), by their ids.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

PREFIX = "tqsc-"
SUBNET = "10.77.0"


class NamespaceError(RuntimeError):
    """A namespace operation failed, or namespaces are not permitted here."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise NamespaceError(f"`ip {' '.join(args)}` failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def _tc(ns: str, *args: str) -> None:
    proc = subprocess.run(["ip", "netns", "exec", ns, "tc", *args], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise NamespaceError(f"`tc {' '.join(args)}` in {ns} failed: {proc.stderr.strip()}")


def namespaces_permitted() -> str | None:
    """None when this process may create network namespaces, else why not (for a skip reason)."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add); this process is not root"
    probe = f"{PREFIX}probe-{uuid.uuid4().hex[:6]}"
    try:
        proc = _ip("netns", "add", probe, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`ip netns add` could not run: {exc}"
    if proc.returncode != 0:
        return f"`ip netns add` is refused here: {proc.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


def list_namespaces(prefix: str = PREFIX) -> list[str]:
    out = _ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(prefix)]


def pids_in(ns: str) -> list[int]:
    """The ids of the processes whose network namespace is ``ns``."""
    out = _ip("netns", "pids", ns, check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def kill_namespace_processes(ns: str, grace_s: float = 3.0) -> int:
    """SIGTERM, then SIGKILL after ``grace_s``, every process inside ``ns``; returns how many."""
    pids = pids_in(ns)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and pids_in(ns):
        time.sleep(0.1)
    for _ in range(20):  # bounded: a process may fork while being killed
        left = pids_in(ns)
        if not left:
            break
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    return len(pids)


def cleanup_stale(prefix: str = PREFIX) -> list[str]:
    """Remove every namespace named ``prefix``* and the processes in it (what a crashed run left)."""
    removed = []
    for ns in list_namespaces(prefix):
        kill_namespace_processes(ns, grace_s=1.0)
        _ip("netns", "del", ns, check=False)
        removed.append(ns)
    return removed


@dataclass
class Host:
    """One simulated machine: its namespace, its address and its link cap."""

    name: str
    ns: str
    address: str
    rate_mbit: float | None = None

    def cmd(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside this host's namespace."""
        return ["ip", "netns", "exec", self.ns, *argv]

    def counters(self) -> dict[str, int]:
        """Bytes and packets this host's ``eth0`` has sent and received since it was made."""
        out = _ip("-n", self.ns, "-j", "-s", "link", "show", "dev", "eth0").stdout
        stats = json.loads(out)[0]["stats64"]
        return {
            "tx_bytes": stats["tx"]["bytes"],
            "rx_bytes": stats["rx"]["bytes"],
            "tx_packets": stats["tx"]["packets"],
            "rx_packets": stats["rx"]["packets"],
        }


@dataclass
class Network:
    """The run's hosts and its bridge; ``close`` removes them all (and their processes)."""

    run: str
    hosts: dict[str, Host] = field(default_factory=dict)
    switch_ns: str = ""

    @classmethod
    def build(cls, names: Sequence[str], rate_mbit: dict[str, float] | None = None) -> Network:
        """Make one namespace per name, each linked to the bridge; cap the links named in ``rate_mbit``."""
        run = uuid.uuid4().hex[:6]
        net = cls(run=run, switch_ns=f"{PREFIX}{run}-sw")
        try:
            net._make_switch()
            for i, name in enumerate(names):
                net._add_host(name, f"{SUBNET}.{10 + i}", (rate_mbit or {}).get(name))
        except BaseException:
            net.close()
            raise
        return net

    def _make_switch(self) -> None:
        _ip("netns", "add", self.switch_ns)
        _ip("-n", self.switch_ns, "link", "set", "lo", "up")
        _ip("-n", self.switch_ns, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch_ns, "link", "set", "br0", "up")

    def _add_host(self, name: str, address: str, rate_mbit: float | None) -> None:
        ns = f"{PREFIX}{self.run}-{name}"
        _ip("netns", "add", ns)
        host = Host(name, ns, address, rate_mbit)
        self.hosts[name] = host
        port = f"p-{name}"[:15]
        _ip("link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", port, "netns", self.switch_ns)
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        _ip("-n", self.switch_ns, "link", "set", port, "master", "br0")
        _ip("-n", self.switch_ns, "link", "set", port, "up")
        if rate_mbit:
            self.cap(name, rate_mbit)

    def cap(self, name: str, rate_mbit: float) -> None:
        """Cap ``name``'s link at ``rate_mbit`` each way with tbf (burst sized for ~10 ms at the rate)."""
        host = self.hosts[name]
        burst = max(64 * 1024, int(rate_mbit * 1e6 / 8 * 0.01))
        spec = ["tbf", "rate", f"{rate_mbit}mbit", "burst", str(burst), "latency", "50ms"]
        _tc(host.ns, "qdisc", "replace", "dev", "eth0", "root", *spec)
        _tc(self.switch_ns, "qdisc", "replace", "dev", f"p-{name}"[:15], "root", *spec)
        host.rate_mbit = rate_mbit

    def counters(self) -> dict[str, dict[str, int]]:
        return {name: host.counters() for name, host in self.hosts.items()}

    def close(self) -> None:
        """Kill every process in the run's namespaces, then delete the namespaces (veths go with them)."""
        for host in self.hosts.values():
            with contextlib.suppress(Exception):
                kill_namespace_processes(host.ns)
        for ns in [h.ns for h in self.hosts.values()] + [self.switch_ns]:
            _ip("netns", "del", ns, check=False)
        self.hosts.clear()

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
