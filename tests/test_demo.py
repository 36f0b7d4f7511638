"""The README's first command: the main job runs end to end and verifies its own restore."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

import tqsnap


@pytest.mark.tq
@pytest.mark.slow
def test_demo_snapshots_a_live_transferqueue_and_restores_it_into_two_units(tmp_path) -> None:
    repo = tmp_path / "tqsnap-demo"
    env = dict(os.environ, CI="true", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    env.pop("RAY_ADDRESS", None)
    exe = shutil.which("tqsnap") or ""
    cmd = [exe, "demo"] if exe else [sys.executable, "-m", "tqsnap.faces.demo"]
    proc = subprocess.run(
        [*cmd, "--repo", str(repo), "--duration", "12", "--every", "3"],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "EQUAL" in out, out[-3000:]
    snaps = tqsnap.snapshots(str(repo))
    assert len(snaps) >= 2, "periodic snapshots were taken"
    assert all(s.kind == "transferqueue" for s in snaps)
    assert snaps[-1].stats["reused_shards"] > 0, "later snapshots reuse unchanged shards"
    for s in snaps:  # each snapshot was reported as it landed
        assert f"  {s.stream}@{s.seq}: " in proc.stdout, proc.stdout
