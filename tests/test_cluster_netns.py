"""Multi-host end to end on simulated hosts: network namespaces, a 20 ms delay proxy, real Ray.

A small run of ``benchmarks/cluster/e2e.py``: cluster A (a head and 2 workers, 2 storage
units, placed on the workers only) runs the RL workload with periodic snapshots to region X;
``tqsnap copy --all`` mirrors X to Y; cluster B (a head and 1 worker, 3 units) restores from Y.
It asserts what an operator would check: each unit uploaded its data from its own host and
the driver's host sent none of it, every snapshot reached Y, the restore on B equals A's final
state, and B's units fetched their samples themselves.

Needs root and ``ip netns`` (skipped otherwise, saying which). Starting Ray nodes and the
TransferQueue actors dominates its time: about 3 minutes on an idle 2-core machine, much more on a
busy one, hence the long timeout.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.cluster import e2e  # noqa: E402
from benchmarks.cluster.netns import namespaces_permitted  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.tq]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    why = namespaces_permitted()
    if why is not None:
        pytest.skip(f"simulated hosts need network namespaces: {why}")
    pytest.importorskip("transfer_queue")
    args = e2e.build_parser().parse_args(
        [
            "--a-workers=2",
            "--a-units=2",
            "--b-workers=1",
            "--b-units=3",
            "--duration=8",
            "--every=4",
            "--feature-mib=8",
            "--rtt-ms=20",
            "--timeout=400",
        ]
    )
    # A short path: Ray's socket paths under it must stay within the 107-byte limit.
    work = Path(tempfile.mkdtemp(prefix="tqsc-test-", dir="/tmp"))
    try:
        yield e2e.run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.mark.timeout(1800)
def test_units_upload_from_their_own_hosts_and_the_driver_sends_no_sample_data(report: dict) -> None:
    src = report["source"]
    addr = {v: k for k, v in report["addresses"].items()}
    unit_hosts = {addr[u] for u in src["units"]}
    assert unit_hosts == {"a1", "a2"}, "the units must be spread over the workers, none on the head"
    up = {h: c["up"] for h, c in report["x_uploads"].items()}
    data = sum(up.get(h, 0) for h in unit_hosts)
    assert all(up.get(h, 0) > 1_000_000 for h in unit_hosts), up
    assert up.get("a0", 0) < e2e.DRIVER_SHARE_LIMIT * data, f"the driver's host sent sample data: {up}"


@pytest.mark.timeout(1800)
def test_copy_mirrors_every_snapshot_and_cluster_b_restores_the_same_state(report: dict) -> None:
    assert len(report["source"]["snapshots"]) >= 2
    assert [c["status"] for c in report["copy"]] == ["copied"] * len(report["source"]["snapshots"])
    rst = report["restore"]
    assert rst["source_units"] == 2 and len(rst["units"]) == 3
    assert rst["diffs"] == []
    assert rst["samples"] > 0


@pytest.mark.timeout(1800)
def test_cluster_b_units_fetch_their_own_samples(report: dict) -> None:
    assert e2e.check(report) == []
    down = report["y_downloads"]
    assert down.get("b1", 0) > 1_000_000, down
