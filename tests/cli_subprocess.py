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
    argv = [sys.executable, "-m", "tqsnap.faces.cli", command, target.url, *target.cli_args(), *rest]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=target.env(), check=False)


def json_out(proc: subprocess.CompletedProcess[str]) -> Any:
    """The JSON a ``--json`` run printed (one document, or one per line)."""
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout.strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture(name="target", params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def target_fixture(request: pytest.FixtureRequest, tmp_path) -> Target:
    """A fresh repository location: a local directory, then a bucket on the real S3 server."""
    if request.param == "local":
        return Target(str(tmp_path / "repo"))
    url, options = request.getfixturevalue("s3_repo_url")
    return Target(url, options)
