"""Multi-host end to end on simulated hosts: network namespaces, a 20 ms delay proxy, real Ray.

A small run of ``benchmarks/cluster/e2e.py``: cluster A (a head and 2 workers, 2 storage
units, placed on the workers only) runs the RL workload with periodic snapshots to region X;
``tqsnap copy --all`` mirrors X to Y; cluster B (a head and 1 worker, 3 units) restores from Y.
It asserts what an operator would check: each unit uploaded its data from its own host and
the driver's host sent none of it, every snapshot reached Y, the restore on B equals A's final
state, and B's units fetched their samples themselves.

Needs root and ``ip netns`` (skipped otherwise, saying which). Starting Ray nodes and the
TransferQueue actors (each a process importing torch) dominates its time: 8 minutes on the
shared 2-core machine under a load average of 30-40, hence the long timeout.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.cluster import e2e  # noqa: E402
from benchmarks.cluster.delayproxy import DelayProxy, Shaping  # noqa: E402
from benchmarks.cluster.netns import namespaces_permitted  # noqa: E402


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


@pytest.mark.slow
@pytest.mark.tq
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


@pytest.mark.slow
@pytest.mark.tq
@pytest.mark.timeout(1800)
def test_copy_mirrors_every_snapshot_and_cluster_b_restores_the_same_state(report: dict) -> None:
    assert len(report["source"]["snapshots"]) >= 2
    assert [c["status"] for c in report["copy"]] == ["copied"] * len(report["source"]["snapshots"])
    rst = report["restore"]
    assert rst["source_units"] == 2 and len(rst["units"]) == 3
    assert rst["diffs"] == []
    assert rst["samples"] > 0


@pytest.mark.slow
@pytest.mark.tq
@pytest.mark.timeout(1800)
def test_cluster_b_units_fetch_their_own_samples(report: dict) -> None:
    assert e2e.check(report) == []
    down = report["y_downloads"]
    assert down.get("b1", 0) > 1_000_000, down


async def _round_trips(shaping: Shaping, payload: bytes, trips: int) -> tuple[list[float], dict]:
    """Echo ``payload`` ``trips`` times through a proxy with ``shaping``; the times and the proxy's counters."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    proxy = DelayProxy(("127.0.0.1", 0), ("127.0.0.1", server.sockets[0].getsockname()[1]), shaping)
    ready, stop = asyncio.Event(), asyncio.Event()
    serving = asyncio.ensure_future(proxy.serve(ready, stop))
    await ready.wait()
    reader, writer = await asyncio.open_connection(*proxy._server.sockets[0].getsockname()[:2])
    times = []
    for _ in range(trips):
        t0 = time.monotonic()
        writer.write(payload)
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(len(payload)), 10) == payload
        times.append(time.monotonic() - t0)
    writer.close()
    await asyncio.sleep(0.2)
    stop.set()
    await serving
    server.close()
    return times, dict(proxy.stats)


def test_delay_proxy_adds_its_round_trip_and_counts_bytes_per_client() -> None:
    times, stats = asyncio.run(_round_trips(Shaping(delay_s=0.02), b"x" * 1000, 3))
    assert times[0] >= 0.08, "the first round trip also pays the handshake's"
    assert all(0.04 <= t < 0.04 + 0.15 for t in times[1:]), times
    assert stats["127.0.0.1"] == {"up": 3000, "down": 3000, "connections": 1}


def test_delay_proxy_stalls_hold_a_chunk_as_a_lost_segment_would() -> None:
    times, _ = asyncio.run(_round_trips(Shaping(delay_s=0.01, stall_probability=1.0, stall_s=0.1), b"y", 2))
    assert all(t >= 0.02 + 0.2 for t in times), times
