"""The whole engine under a flaky store: a seeded mix of ~300 user operations at 5% faults.

Saves (small, multipart, several-part), loads, verifies, listings, forgets, gcs, copies to a
second bucket and tags run through the fault proxy in front of SeaweedFS, which injects every
fault kind it knows (HTTP 500/503/429, resets before and during a reply, cut bodies, latency
spikes, cut ETags, requests applied with their reply lost, requests applied late). What a user
must be able to count on, checked against the server itself once the faults stop
(:mod:`fault_workload`):

- every operation completes: faults are ridden out, never passed on;
- every visible snapshot verifies and loads exactly what was saved; every save that reported
  success is visible unless a forget's policy removed it; no save is visible twice; forget
  tombstones nothing its policy keeps; tags name what they were given;
- after the grace period, gc leaves no unreferenced shard and no incomplete multipart upload.

``TQSNAP_FAULT_OPS`` and ``TQSNAP_FAULT_SEED`` change the size and the seed;
``benchmarks/stress_faults.py`` runs the full version over several seeds.
"""

from __future__ import annotations

import os

from fault_workload import OPS as OPERATIONS
from fault_workload import WorkloadConfig, run_workload
from s3servers import S3Server

OPS = int(os.environ.get("TQSNAP_FAULT_OPS") or 300)
SEED = int(os.environ.get("TQSNAP_FAULT_SEED") or 20261129)


def test_every_operation_completes_exactly_once_under_five_percent_faults(seaweedfs_endpoint: S3Server) -> None:
    result = run_workload(seaweedfs_endpoint, WorkloadConfig(seed=SEED, ops=OPS, rate=0.05, time_limit_s=420))

    report = result.describe()
    # The run was the one asked for, and the proxy really struck, with every fault kind.
    assert sum(result.attempted.values()) == OPS, report
    assert sum(result.injected.values()) >= OPS // 10, report
    struck = {kind for (_, kind), n in result.injected.items() if n}
    assert struck == set(result.config.kinds), report
    # Every operation kind ran, and multipart uploads were among the requests.
    assert all(result.attempted[kind] for kind in OPERATIONS), report
    assert result.requests["multipart"] > 0, report
    assert result.visible_snapshots > 0, report
    # The goal figures.
    assert result.goal_failures() == [], report
