"""The demo's processes: a local Ray cluster, a TransferQueue, and SIGKILL of a job's actors.

Everything here is plumbing the demo needs around the job: start Ray on 127.0.0.1 only, start
a TransferQueue with a given number of storage units, find the process ids of its controller
and units (code run inside each actor, so no Ray state API or dashboard is needed) and kill
them the way a crashed node would: SIGKILL, no clean shutdown.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from typing import Any

log = logging.getLogger("tqsnap.demo")

#: Ray gets this many CPUs whatever the machine has: the TransferQueue actors ask for one each
#: and the trainer ranks for none, so the demo fits a 2-core machine.
RAY_CPUS = 6


def start_ray() -> Any:
    """A local Ray cluster on loopback, quiet, without a dashboard."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("TQ_NUM_THREADS", str(min(4, os.cpu_count() or 1)))
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    import ray

    if not ray.is_initialized():
        # Ray gives its node a fixed 30 s to register; on a machine too busy for that it raises
        # "timed out during startup". No retry here: the failed start leaves its processes behind.
        ray.init(
            num_cpus=RAY_CPUS,
            _node_ip_address="127.0.0.1",
            include_dashboard=False,
            logging_level="ERROR",
            log_to_driver=False,
        )
    logging.getLogger("transfer_queue").setLevel(logging.ERROR)
    return ray


def init_transferqueue(units: int) -> Any:
    """``tq.init`` with ``units`` SimpleStorage units; polling mode, so an empty get returns at once."""
    import transfer_queue as tq
    from omegaconf import OmegaConf

    tq.init(
        OmegaConf.create(
            {
                "controller": {"polling_mode": True},
                "backend": {"SimpleStorage": {"num_data_storage_units": units}},
            }
        )
    )
    return tq


def wait_transferqueue_gone(ray: Any, timeout: float = 60.0) -> None:
    """Wait until no TransferQueue actor name is taken, so the next ``tq.init`` starts fresh ones."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        names = [a.get("name", "") for a in ray.util.list_named_actors(all_namespaces=True)]
        if not any(n.startswith("TransferQueue") for n in names):
            return
        time.sleep(0.2)
    raise TimeoutError(f"TransferQueue actors still registered after {timeout:.0f}s")


def _pid(_actor: Any = None) -> int:
    return os.getpid()


def transferqueue_pids() -> list[int]:
    """Process ids of the attached TransferQueue's controller and storage units."""
    from ..adapters.transferqueue import TransferQueueSystem

    system = TransferQueueSystem.attached()
    pids = [system.call_controller(_pid)]
    pids += system.call_units(_pid, [() for _ in system.units])
    return pids


def sigkill(pids: list[int], timeout: float = 20.0) -> None:
    """SIGKILL every process and wait until each is gone (a crash, not a shutdown)."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            raise TimeoutError(f"process {pid} survived SIGKILL for {timeout:.0f}s")


def forget_transferqueue(ray: Any) -> None:
    """After its actors were killed: drop this process's client and wait for the names to free.

    ``tq.close()`` asks the dead units to shut down (Ray answers at once that they are dead),
    kills the dead controller again and closes this process's client sockets.
    """
    import transfer_queue as tq

    quiet = logging.getLogger("transfer_queue.interface")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # it warns that the dead units did not shut down gracefully
    try:
        tq.close()
    finally:
        quiet.setLevel(level)
    wait_transferqueue_gone(ray)


def free_port() -> int:
    """A free TCP port on loopback for the trainer's gloo rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
