"""One local Ray cluster and two TransferQueues for the whole tests/tq session.

``tq_main`` is started with ``tq.init`` (3 storage units), so tqsnap's default "attached"
lookup is what the tests exercise; ``tq_two`` is a second TransferQueue with 2 units in the
same cluster, the usual restore target. Starting them (each actor is a process importing
torch) dominates the suite's time, so they start once and at the same time.

Tests leave these systems in any state; ``wipe`` resets one to empty by force-restoring the
snapshot of an empty TransferQueue taken at session start.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tqsystem import RAY_ENV, TQ, finish, launch, start_ray, stop_tq  # noqa: E402

os.environ.update(RAY_ENV)  # before transfer_queue is imported: it reads some at import time
pytest.importorskip("transfer_queue")
pytest.importorskip("ray")

EMPTY_STREAM = "empty"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.tq)


@pytest.fixture(scope="session")
def tq_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    start_ray(num_cpus=4 + 3 + 2)
    from tqsnap.adapters.transferqueue import TransferQueueSystem, snapshot_system
    from tqsnap.engine import Repository
    from tqsnap.faces.demo import init_transferqueue

    launched = launch(2, "two")  # its actors start while tq.init starts the others
    tq = init_transferqueue(3)
    main = TQ("main", TransferQueueSystem.attached(), tq.get_client(), {}, None)
    two = finish("two", *launched)
    empty_repo = Repository.open(str(tmp_path_factory.mktemp("empty-repo")), create=True)
    snapshot_system(two.system, empty_repo, EMPTY_STREAM)
    yield {"main": main, "two": two, "empty_repo": empty_repo}
    stop_tq(two)
    tq.close()
    import ray

    ray.shutdown()


@pytest.fixture
def wipe(tq_cluster: dict[str, Any]) -> Callable[[TQ], None]:
    from tqsnap.adapters.transferqueue import restore_system

    def run(t: TQ) -> None:
        restore_system(t.system, tq_cluster["empty_repo"], EMPTY_STREAM, force=True)

    return run


@pytest.fixture
def tq_main(tq_cluster: dict[str, Any], wipe: Callable[[TQ], None]) -> TQ:
    """The 3-unit TransferQueue made by ``tq.init``, emptied."""
    wipe(tq_cluster["main"])
    return tq_cluster["main"]


@pytest.fixture
def tq_two(tq_cluster: dict[str, Any], wipe: Callable[[TQ], None]) -> TQ:
    """A 2-unit TransferQueue in the same cluster, emptied."""
    wipe(tq_cluster["two"])
    return tq_cluster["two"]


@pytest.fixture
def repo_url(tmp_path: Path) -> str:
    return str(tmp_path / "repo")
