"""The whole engine under a flaky store: seeded mixes of user operations through the fault proxy.

Saves (small, multipart, several-part, and ones whose manifest is itself a multipart upload),
loads, verifies, listings, forgets, gcs, copies to a second bucket and tags run through the
fault proxy in front of SeaweedFS, which injects every fault kind it knows (HTTP 500/503/429,
resets before and during a reply, cut bodies, latency spikes, cut ETags, requests applied with
their reply lost, requests applied late). What a user must be able to count on, checked against
the server itself once the faults stop (:mod:`fault_workload`):

- every operation completes: faults are ridden out, never passed on;
- every visible snapshot verifies and loads exactly what was saved; every save that reported
  success is visible unless a forget's policy removed it; no save is committed twice; forget
  tombstones nothing its policy keeps and reports what it wrote; tags name what they were given;
- after the grace period, gc leaves no unreferenced shard and no incomplete multipart upload.

Two mixes: 300 operations at 5% faults on every request, and a shorter one with a quarter of
all writes faulted, which puts many commits, tombstones and tags in doubt.
``TQSNAP_FAULT_OPS`` and ``TQSNAP_FAULT_SEED`` change the size and the seed of the first;
``benchmarks/stress_faults.py`` runs the full version over several seeds.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable

from fault_results import OPS as OPERATIONS
from fault_results import WorkloadResult
from fault_workload import MULTIPART, WRITES, WorkloadConfig, run_workload
from faultproxy import ProxiedBucket
from s3servers import S3Server

from tqsnap.store import open_store
from tqsnap.store.retry import RetryPolicy

OPS = int(os.environ.get("TQSNAP_FAULT_OPS") or 160)
SEED = int(os.environ.get("TQSNAP_FAULT_SEED") or 20261129)


def _assert_goals(result: WorkloadResult, ops: int) -> None:
    report = result.describe()
    # The run was the one asked for, and the proxy really struck.
    assert sum(result.attempted.values()) == ops, report
    assert sum(result.injected.values()) >= ops // 10, report
    # Every operation kind ran, and multipart uploads were among the requests.
    assert all(result.attempted[kind] for kind in OPERATIONS), report
    assert result.requests["multipart"] > 0, report
    assert result.visible_snapshots > 0, report
    # The goal figures.
    assert result.goal_failures() == [], report


def test_every_operation_completes_exactly_once_under_five_percent_faults(seaweedfs_endpoint: S3Server) -> None:
    config = WorkloadConfig(seed=SEED, ops=OPS, rate=0.05, time_limit_s=360)
    result = run_workload(seaweedfs_endpoint, config)
    _assert_goals(result, OPS)
    struck = {kind for (_, kind), n in result.injected.items() if n}
    assert struck == set(config.kinds), result.describe()  # ~250 faults: every kind, many times


def test_commits_happen_exactly_once_when_a_quarter_of_writes_fail(seaweedfs_endpoint: S3Server) -> None:
    config = WorkloadConfig(
        seed=SEED + 1,
        ops=40,
        rate=0.25,
        classes=WRITES,
        multipart_fraction=0.35,
        wide_fraction=0.1,
        time_limit_s=240,
    )
    result = run_workload(seaweedfs_endpoint, config)
    _assert_goals(result, 40)
    # Writes applied whose replies were lost or wrong: the outcomes a commit must settle.
    in_doubt = sum(n for (_, kind), n in result.injected.items() if kind.startswith("apply_"))
    assert in_doubt >= 3, result.describe()


def test_an_upload_completed_by_a_late_request_is_not_reported_missing(
    faulty_s3: Callable[..., ProxiedBucket],
) -> None:
    """Found by the workload: a shard's CompleteMultipartUpload reached the server late, beside
    its own retry; the retry was answered NoSuchUpload and the save failed with "object does
    not exist" although the object was there. (About one such upload in eight failed.)"""
    bucket = faulty_s3(latency_s=0.001, late_s=0.0)
    # Retries at once, so the retry and the late completion reach the server together.
    store = open_store(bucket.url, **bucket.options, **MULTIPART, retries=RetryPolicy(base_s=0.0005))
    data = random.Random(5).randbytes(200 * 1024)
    for i in range(40):
        bucket.proxy.script("multipart", "latency", 2)  # CreateMultipartUpload, UploadPart
        bucket.proxy.script("multipart", "apply_late")  # CompleteMultipartUpload
        store.put(f"shards/{i:02d}", data)
        assert store.get(f"shards/{i:02d}") == data
    assert bucket.proxy.injected[("multipart", "apply_late")] == 40
