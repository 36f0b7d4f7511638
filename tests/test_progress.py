"""Progress on a terminal, silence elsewhere, and what Ctrl-C reports: the real command in a pty."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
import torch

import tqsnap


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "TQSNAP_"))}
    env["PYTHONPATH"] = os.getcwd()
    env["COLUMNS"] = "100"
    return env


def _spawn(
    args: list[str], *, stdout_pipe: bool = True, extra_env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``tqsnap ARGS`` with stderr (and stdout unless piped) on a new pseudo-terminal."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))  # a 100x30 terminal
    proc = subprocess.Popen(
        [sys.executable, "-m", "tqsnap.faces.cli", *args],
        stdin=slave,
        stdout=subprocess.PIPE if stdout_pipe else slave,
        stderr=slave,
        env=_env() | (extra_env or {}),
        start_new_session=True,
    )
    os.close(slave)
    return proc, master


def _read_terminal(master: int, proc: subprocess.Popen[bytes], *, until: bytes | None = None, timeout: float = 60) -> bytes:
    """What the program wrote to its terminal: until it exits, or until ``until`` shows up."""
    out = b""
    deadline = time.monotonic() + timeout
    poller = select.poll()  # not select.select: a long test session may hold descriptors past 1024
    poller.register(master, select.POLLIN)
    while time.monotonic() < deadline:
        ready = poller.poll(50)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the child closed its end
                break
            if not chunk:
                break
            out += chunk
            if until is not None and until in out:
                return out
        elif proc.poll() is not None:
            break
    return out


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> str:
    url = str(tmp_path_factory.mktemp("progress") / "repo")
    gen = torch.Generator().manual_seed(0)
    tqsnap.save(url, {f"t{i}": torch.randn(2_000_000, generator=gen) for i in range(6)}, stream="s")  # 48 MB
    return url


def test_a_person_sees_a_live_progress_line(repo: str) -> None:
    proc, master = _spawn(["verify", repo, "--stream", "s"])
    screen = _read_terminal(master, proc)
    os.close(master)
    stdout = proc.stdout.read().decode()
    assert proc.wait(60) == 0
    assert b"B/s" in screen and b"\r" in screen, f"a bar with a rate, redrawn in place: {screen[:300]!r}"
    assert "OK" in stdout and "B/s" not in stdout, "the bar is on stderr; stdout keeps the result"


def test_json_keeps_stdout_pure_and_the_terminal_quiet(repo: str) -> None:
    proc, master = _spawn(["verify", repo, "--stream", "s", "--json"])
    screen = _read_terminal(master, proc)
    os.close(master)
    stdout = proc.stdout.read().decode()
    assert proc.wait(60) == 0
    docs = [json.loads(line) for line in stdout.splitlines()]
    assert docs and docs[0]["ok"] is True, "nothing but JSON on stdout"
    assert b"B/s" not in screen, "no bar under --json"


def test_nothing_on_stderr_when_it_is_not_a_terminal(repo: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tqsnap.faces.cli", "verify", repo, "--stream", "s"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0 and proc.stderr == ""


@pytest.mark.s3
def test_ctrl_c_says_what_was_left_and_exits_130(tmp_path: Path, faulty_s3) -> None:
    # Many shards, each PUT to the destination held 1 s by a real proxy: the copy is still
    # uploading, in several waves, when the first shards are done and the bar has moved.
    src = str(tmp_path / "src")
    gen = torch.Generator().manual_seed(1)
    tqsnap.save(src, {f"t{i}": torch.randn(500_000, generator=gen) for i in range(40)}, stream="s")
    dst = faulty_s3(rate=1.0, kinds=["latency"], classes=["put"], latency_s=1.0)
    env_creds = {
        "AWS_ACCESS_KEY_ID": dst.options["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": dst.options["aws_secret_access_key"],
    }
    proc, master = _spawn(
        ["copy", src, dst.url, "--stream", "s", "--dst-endpoint-url", dst.options["endpoint_url"]], extra_env=env_creds
    )
    seen = _read_terminal(master, proc, until=b"MiB [", timeout=60)  # the bar counts MiB: shards have landed
    if proc.poll() is not None:
        pytest.fail(f"the copy finished before it could be interrupted: {seen[-300:]!r}")
    os.killpg(proc.pid, signal.SIGINT)
    rest = _read_terminal(master, proc, timeout=60)
    os.close(master)
    assert proc.wait(60) == 130
    text = (seen + rest).decode(errors="replace")
    assert "interrupted: the copy in progress committed nothing;" in text, text[-500:]
    assert "MiB of unreferenced shards it uploaded will be collected by gc after" in text and " UTC" in text
    assert tqsnap.snapshots(dst.url, storage_options=dst.options) == [], "nothing was committed"
