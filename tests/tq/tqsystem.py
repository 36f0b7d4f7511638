"""Start extra TransferQueue systems beside the one ``tq.init`` made, for restore targets.

``tq.init`` keeps one system in module globals and names its controller
``TransferQueueController``. A restore test needs targets with other unit counts in the same
Ray cluster, so this module builds controller, storage units and a client the way
``tq.init`` does, under names of its own. Starting actors is the slow part of the suite
(each is a process that imports torch), so the fixtures start them once per session.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from typing import Any

RAY_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # keeps ZMQ on loopback; without it tq.init hangs here
    "TQ_NUM_THREADS": "2",
    "RAY_DEDUP_LOGS": "1",
    "RAY_AUTH_MODE": "disabled",
}


def start_ray(num_cpus: int) -> None:
    """A local Ray cluster on loopback with ``num_cpus`` logical CPUs (>= units + 2)."""
    os.environ.update(RAY_ENV)
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=num_cpus,
            _node_ip_address="127.0.0.1",
            include_dashboard=False,
            logging_level="WARNING",
            log_to_driver=False,
        )


@dataclass
class TQ:
    """One TransferQueue: the handles tqsnap needs and a client to put and get with."""

    name: str
    system: Any  # TransferQueueSystem
    client: Any  # TransferQueueClient
    handles: dict[str, Any]
    controller: Any

    @property
    def units(self) -> int:
        return len(self.handles)


def default_conf(units: int) -> Any:
    from importlib import resources

    from omegaconf import OmegaConf

    base = OmegaConf.create({}, flags={"allow_objects": True})  # as tq.init: zmq_info holds objects
    conf = OmegaConf.merge(base, OmegaConf.load(resources.files("transfer_queue") / "config.yaml"))
    conf.backend.SimpleStorage.num_data_storage_units = units
    return conf


def launch(units: int, name: str | None = None, polling_mode: bool = True) -> tuple[Any, dict[str, Any], Any]:
    """Create (but do not wait for) a controller and ``units`` storage units.

    ``polling_mode`` makes ``get_meta`` answer "nothing yet" at once instead of sleeping in the
    controller's request thread, which a workload that polls needs.
    """
    from transfer_queue.controller import TransferQueueController
    from transfer_queue.sampler import SequentialSampler
    from transfer_queue.storage.simple_storage import SimpleStorageUnit

    name = name or f"t{uuid.uuid4().hex[:6]}"
    conf = default_conf(units)
    conf.controller.polling_mode = polling_mode
    controller = TransferQueueController.options(name=f"tqsnap-{name}", namespace="transfer_queue").remote(
        sampler=SequentialSampler, polling_mode=polling_mode
    )
    unit_conf = dict(conf.backend.SimpleStorage)
    handles = {
        f"{name}-unit#{i}": SimpleStorageUnit.options(name=f"{name}-unit#{i}").remote(config=unit_conf)
        for i in range(units)
    }
    return controller, handles, conf


def finish(name: str, controller: Any, handles: dict[str, Any], conf: Any) -> TQ:
    """Wire a launched system together: config on the controller, a client, tqsnap's handles."""
    import ray
    from transfer_queue.client import TransferQueueClient
    from transfer_queue.utils.zmq_utils import process_zmq_server_info

    from tqsnap.adapters.transferqueue import TransferQueueSystem

    conf.controller.zmq_info = process_zmq_server_info(controller)
    conf.backend.SimpleStorage.zmq_info = process_zmq_server_info(handles)
    ray.get(controller.store_config.remote(conf))
    client = TransferQueueClient(client_id=f"tqsnap-test-{name}", controller_info=conf.controller.zmq_info)
    client.initialize_storage_manager(manager_type="SimpleStorage", config=conf.backend.SimpleStorage)
    system = TransferQueueSystem.from_controller(controller, handles)
    return TQ(name, system, client, handles, controller)


def start_tq(units: int, name: str | None = None, polling_mode: bool = True) -> TQ:
    name = name or f"t{uuid.uuid4().hex[:6]}"
    controller, handles, conf = launch(units, name, polling_mode)
    return finish(name, controller, handles, conf)


def stop_tq(t: TQ) -> None:
    import ray

    try:
        t.client.close()
    except Exception:  # noqa: BLE001 - teardown
        pass
    for h in [*t.handles.values(), t.controller]:
        try:
            ray.kill(h)
        except Exception:  # noqa: BLE001 - teardown
            pass
