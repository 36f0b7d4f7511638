"""The README's first command: the RL job is snapshotted whole, killed, resumed elsewhere and verified."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

import tqsnap
import tqsnap.job


@pytest.mark.tq
@pytest.mark.slow
@pytest.mark.timeout(1200)  # Ray, two TransferQueues and three trainer processes start on a busy machine
def test_demo_kills_the_job_and_resumes_it_bit_exact_on_fewer_ranks_and_units(tmp_path) -> None:
    repo = tmp_path / "tqsnap-demo"
    env = dict(os.environ, CI="true", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    env.pop("RAY_ADDRESS", None)
    exe = shutil.which("tqsnap") or ""
    cmd = [exe, "demo"] if exe else [sys.executable, "-m", "tqsnap.faces.demo"]
    proc = subprocess.run(
        [*cmd, "--repo", str(repo), "--duration", "6", "--every", "2"],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=900,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "verification: EQUAL" in proc.stdout, out[-4000:]
    assert "model and optimizer BIT-EXACT at every step" in proc.stdout, out[-4000:]
    assert "SIGKILL" in proc.stdout
    assert "fresh job with 1 trainer rank(s) and 2 units" in proc.stdout, proc.stdout

    snaps = tqsnap.snapshots(str(repo))
    assert len(snaps) >= 2, "periodic job snapshots were taken"
    assert all(s.kind == "job" for s in snaps)
    for s in snaps:
        assert tqsnap.job.parts(str(repo), s.stream, s.seq) == {
            "trainer": "dcp",
            "queue": "transferqueue",
            "loop": "state_dict",
        }
        assert f"  {s.stream}@{s.seq}: step " in proc.stdout, proc.stdout  # reported as it landed
    assert snaps[-1].stats["reused_bytes"] > 0, "a later job snapshot reuses the unchanged shards"
    # the loop state of the restored snapshot is what a user would read back
    loop = tqsnap.load(str(repo), stream=snaps[-1].stream, snapshot=snaps[-1].seq, part="loop")
    assert loop["step"] >= 1 and set(loop) >= {"step", "sampler", "rng", "rollouts"}
    assert f"restore: {snaps[-1].stream}@{snaps[-1].seq} -> " in proc.stdout, proc.stdout
