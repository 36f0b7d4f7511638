"""Run the real ``tqsnap`` command in a child process, against a local directory or an S3 bucket.

Operator-facing behaviour (exit codes, what reaches stdout and stderr) is only honest when the
command runs as a user runs it: a fresh interpreter, real argv, real pipes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

import pytest


@dataclass
class Target:
    """A repository URL and what a child process needs to reach it."""

    url: str
    options: dict[str, str] = field(default_factory=dict)

    def cli_args(self) -> list[str]:
        return ["--endpoint-url", self.options["endpoint_url"]] if "endpoint_url" in self.options else []

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "TQSNAP_"))}
        if "aws_access_key_id" in self.options:
            env["AWS_ACCESS_KEY_ID"] = self.options["aws_access_key_id"]
            env["AWS_SECRET_ACCESS_KEY"] = self.options["aws_secret_access_key"]
            env["AWS_DEFAULT_REGION"] = "us-east-1"
        env["PYTHONPATH"] = os.pathsep.join(p for p in (os.getcwd(), env.get("PYTHONPATH", "")) if p)
        return env

    def storage_options(self) -> dict[str, str]:
        return dict(self.options)


def tqsnap(target: Target, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``tqsnap <command> <url> [store flags] <rest>``; never raises on a non-zero exit."""
    command, *rest = args
    argv = [sys.executable, "-m", "tqsnap.faces.cli", command, target.url, *rest, *target.cli_args()]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=target.env(), check=False)


def json_lines(proc: subprocess.CompletedProcess[str]) -> list[Any]:
    """Every JSON document a successful ``--json`` run printed, one per line (JSON Lines)."""
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def json_any(proc: subprocess.CompletedProcess[str]) -> Any:
    """The one JSON document a ``--json`` run printed, whatever its exit code."""
    docs = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert len(docs) == 1, (proc.stdout, proc.stderr)
    return docs[0]


def json_out(proc: subprocess.CompletedProcess[str]) -> Any:
    """The one JSON document a successful ``--json`` run printed."""
    docs = json_lines(proc)
    assert len(docs) == 1, proc.stdout
    return docs[0]


@pytest.fixture(name="target", params=["local", pytest.param("seaweedfs", marks=pytest.mark.s3)])
def target_fixture(request: pytest.FixtureRequest, tmp_path) -> Target:
    """A fresh repository: a local directory, then a bucket on the real S3 server (as ``s3_repo_url``)."""
    if request.param == "local":
        return Target(str(tmp_path / "repo"))
    url, options = request.getfixturevalue(f"{request.param}_endpoint").make_bucket()
    return Target(url, options)


def run_tqsnap(
    *args: str, env: dict[str, str] | None = None, options: dict[str, str] | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """``python -m tqsnap ARGS`` with a clean environment (no TQSNAP_*, no stray config file);
    ``options`` of an S3 bucket become the child's credentials. A traceback fails the test."""
    child = {k: v for k, v in os.environ.items() if not k.startswith(("TQSNAP_", "AWS_"))}
    child["XDG_CONFIG_HOME"] = "/nonexistent-tqsnap-test-config"
    if options and "aws_access_key_id" in options:
        child |= {
            "AWS_ACCESS_KEY_ID": options["aws_access_key_id"],
            "AWS_SECRET_ACCESS_KEY": options["aws_secret_access_key"],
            "AWS_DEFAULT_REGION": "us-east-1",
        }
    child |= env or {}
    proc = subprocess.run(
        [sys.executable, "-m", "tqsnap", *args], capture_output=True, text=True, timeout=timeout, env=child
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc
