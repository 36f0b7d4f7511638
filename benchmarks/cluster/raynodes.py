"""Real Ray nodes inside the simulated hosts: ``ray start --block`` in each namespace.

A cluster is a head (where its driver runs: a Ray driver needs a raylet on its own host) and
workers that join it over the bridge. Storage units get a custom resource, ``tq_storage``,
that only the workers offer, so TransferQueue's round-robin placement
(``backend.SimpleStorage.required_node_resource``) puts every unit on a worker host and none
on the driver's. Each node keeps its session files in a directory of its own and a small
object store, so several nodes share this machine.

``--block`` keeps each node's ``ray start`` in the foreground: the run stops nodes by
killing the processes inside its own namespaces (:func:`netns.kill_namespace_processes`),
never with ``ray stop``, which would stop every Ray process on the machine.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .netns import Host, kill_namespace_processes, pids_in

log = logging.getLogger(__name__)

RAY_PORT = 6380
STORAGE_RESOURCE = "tq_storage"

#: Environment for every Ray process and driver of the simulated clusters.
RAY_ENV = {
    "RAY_DEDUP_LOGS": "1",
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "TQ_NUM_THREADS": "2",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1",  # "0" forbids workers joining and pins Ray to loopback
    # On a loaded machine a node's agents take far longer than Ray's defaults allow to start.
    "RAY_agent_register_timeout_ms": "300000",
    "RAY_raylet_start_wait_time_s": "300",
}

#: A node starts at a higher CPU priority, and returns to normal once it runs: its raylet
#: aborts if its agents (Python processes importing for seconds of CPU) have not written
#: their port files within Ray's fixed wait, which on a busy 2-core machine they miss.
START_NICENESS = -10

STARTED_LINE = b"Ray runtime started"
RAYLET_DIED = b"Check failed"


def host_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment for a child on a simulated host: the venv first on PATH,
    the repository importable, Ray's settings, and no AWS_* (SeaweedFS and the S3 clients
    get their keys explicitly)."""
    root = str(Path(__file__).resolve().parents[2])
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env["PYTHONPATH"] = root + (f":{env['PYTHONPATH']}" if env.get("PYTHONPATH") else "")
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    env.update(RAY_ENV)
    env.update(extra or {})
    return env


#: The agents' ports, fixed by ``ray start`` flags (each host has its own port space).
AGENT_PORTS = {
    "metrics_export_port": 9100,
    "metrics_agent_port": 9101,
    "dashboard_agent_listen_port": 9102,
    "runtime_env_agent_port": 9103,
}


def _raylet_args(host: Host) -> dict[str, str] | None:
    """``--node_id`` and ``--session_dir`` of the raylet running on ``host``, once it runs."""
    for pid in pids_in(host.ns):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not argv or not argv[0].endswith(b"/raylet"):
            continue
        args = dict(a.decode().lstrip("-").split("=", 1) for a in argv[1:] if b"=" in a)
        if "node_id" in args and "session_dir" in args:
            return args
    return None


def announce_agent_ports(host: Host) -> bool:
    """Write the agents' port files for the raylet on ``host``, as the agents would.

    A raylet waits a fixed time (Ray's, not configurable) for its Python agents to write
    their port files, and aborts when they are late; on a busy machine they are, because
    each spends seconds of CPU importing. The ports are fixed by flags, so the files' content
    is known before the agents start: writing it ahead (with Ray's own ``persist_port``) lets
    the raylet start, and it connects to each agent once that listens (its clients retry).
    Returns whether the files were written (False: no raylet running yet).
    """
    from ray._raylet import persist_port

    args = _raylet_args(host)
    if args is None:
        return False
    session = Path(args["session_dir"])
    for name, port in AGENT_PORTS.items():
        if not any(session.glob(f"{name}_{args['node_id']}*")):
            persist_port(str(session), args["node_id"], name, port)
    return True


def restore_niceness(host: Host) -> None:
    """Put every process on ``host`` back at the normal CPU priority."""
    for pid in pids_in(host.ns):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.setpriority(os.PRIO_PROCESS, pid, 0)


@dataclass
class RayCluster:
    """One Ray cluster: the head's host, the workers' hosts, and how many units it should run."""

    name: str
    head: Host
    workers: list[Host]
    head_cpus: int = 2
    worker_cpus: int = 8  # logical: every TransferQueue actor asks for 1 CPU, whatever it uses
    object_store_mb: int = 256
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"{self.head.address}:{RAY_PORT}"

    @property
    def nodes(self) -> int:
        return 1 + len(self.workers)

    def _start(self, index: int, host: Host, args: list[str], work: Path) -> None:
        attempt = 0
        while (work / f"ray-{host.name}-{attempt}").exists():
            attempt += 1
        node_dir = work / f"ray-{host.name}-{attempt}"  # fresh per start: no stale session_latest
        node_dir.mkdir(parents=True)
        argv = [
            "nice",
            f"-n{START_NICENESS}",
            str(Path(sys.executable).parent / "ray"),
            "start",
            "--block",
            f"--node-ip-address={host.address}",
            f"--object-store-memory={self.object_store_mb * 1024 * 1024}",
            "--disable-usage-stats",
            f"--temp-dir={node_dir}",
            # Fixed ports (each host has its own port space): see announce_agent_ports.
            f"--metrics-export-port={AGENT_PORTS['metrics_export_port']}",
            f"--dashboard-agent-grpc-port={AGENT_PORTS['metrics_agent_port']}",
            f"--dashboard-agent-listen-port={AGENT_PORTS['dashboard_agent_listen_port']}",
            f"--runtime-env-agent-port={AGENT_PORTS['runtime_env_agent_port']}",
            *args,
        ]
        out = open(node_dir / "ray-start.log", "wb")  # noqa: SIM115 - owned by the child
        proc = subprocess.Popen(
            host.cmd(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=host_env(),
            start_new_session=True,
        )
        if index < len(self.processes):
            self.processes[index], self.logs[index] = proc, node_dir / "ray-start.log"
        else:
            self.processes.append(proc)
            self.logs.append(node_dir / "ray-start.log")

    def _wait_started(self, index: int, timeout: float) -> bool:
        """Until node ``index``'s ``ray start`` says the runtime started (True), or its raylet
        died, its ``ray start`` exited or ``timeout`` passed (False)."""
        deadline = time.monotonic() + timeout
        raylet_log = self.logs[index].parent / "session_latest" / "logs" / "raylet.out"
        host = self.head if index == 0 else self.workers[index - 1]
        announced = False
        while time.monotonic() < deadline:
            if not announced:
                announced = announce_agent_ports(host)
            if STARTED_LINE in self.logs[index].read_bytes():
                return True
            if self.processes[index].poll() is not None:
                return False
            if raylet_log.exists() and RAYLET_DIED in raylet_log.read_bytes():
                return False
            time.sleep(0.25)
        return False

    def _start_node(self, index: int, work: Path, timeout: float, attempts: int) -> None:
        """Start node ``index`` and wait for it, starting it afresh when it fails.

        On a loaded machine a raylet gives up waiting for its agents (Python processes that
        take tens of seconds to import there) and aborts; a second start finds their modules
        in the page cache and usually gets through.
        """
        host = self.head if index == 0 else self.workers[index - 1]
        for attempt in range(attempts):
            if index < len(self.processes):
                kill_namespace_processes(host.ns)
                self.processes[index].wait(timeout=10)
            self._launch(index, host, work)
            started = self._wait_started(index, timeout)
            restore_niceness(host)
            if started:
                return
            log.warning("Ray node %s did not start (attempt %d of %d)", host.name, attempt + 1, attempts)
        tail = self.logs[index].read_bytes()[-1500:].decode(errors="replace")
        raise RuntimeError(f"Ray node {host.name} of cluster {self.name} did not start: {tail}")

    def _launch(self, index: int, host: Host, work: Path) -> None:
        if index == 0:
            args = [
                "--head",
                f"--port={RAY_PORT}",
                f"--num-cpus={self.head_cpus}",
                "--include-dashboard=false",
                f"--resources={json.dumps({f'{self.name}_head': 1})}",
            ]
        else:
            args = [
                f"--address={self.address}",
                f"--num-cpus={self.worker_cpus}",
                f"--resources={json.dumps({STORAGE_RESOURCE: 16})}",
            ]
        self._start(index, host, args, work)

    def start(self, work: Path, timeout: float = 120.0, attempts: int = 3) -> None:
        """Start the head and wait for it, then each worker (one by one: starting them
        together on a 2-core machine makes each slower than Ray's own start-up timeouts)."""
        for index in range(self.nodes):
            self._start_node(index, work, timeout, attempts)

    def failed(self) -> str | None:
        """Why a node's ``ray start`` exited, if one did."""
        for p in self.processes:
            if p.poll() is not None:
                return f"`{' '.join(map(str, p.args[-8:]))}` exited with {p.returncode}"
        return None
