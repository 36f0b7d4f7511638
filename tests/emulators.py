"""Real Google Cloud Storage and Azure Blob emulators on loopback, as session fixtures.

- ``azurite``: Azurite's blob service (the npm package ``azurite``, installed by ``.ci/run``
  into ``tests/.emulators/``), in memory, with the well-known development account; tqsnap
  reaches it through adlfs and azure-storage-blob.
- ``gcs_emulator``: ``gcp-storage-emulator`` (PyPI), in memory; tqsnap reaches it through
  gcsfs, anonymous, at ``endpoint_url``.

Each fixture object has ``make_bucket(prefix)`` -> ``(url, options)`` for ``open_store``.
When an emulator is not installed the tests that need it are skipped with the reason, except
under ``CI=true``, where they fail: CI installs both.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

# gcsfs's default filesystem asks a gRPC control API (which no emulator serves) for each bucket's
# type, and waits a minute for the answer; the plain JSON-API filesystem is the one under test.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

HERE = Path(__file__).parent
AZURITE_BIN = HERE / ".emulators" / "node_modules" / ".bin" / "azurite-blob"
#: Azurite's documented development account (public, the same in every Azurite).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
START_TIMEOUT_S = 60.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _unavailable(what: str) -> None:
    """Skip (or, under CI, fail) a test whose emulator is not installed."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{what} is not installed; .ci/run installs it (CI=true: emulator tests must run)")
    pytest.skip(f"{what} is not installed (run .ci/run, or see docs/stores.md)")


@dataclass
class Emulator:
    """One emulator process on 127.0.0.1:``port``."""

    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    buckets: list[str] = field(default_factory=list)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.2)
        self.stop()
        tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
        raise RuntimeError(f"{self.name} did not listen on 127.0.0.1:{self.port} within {START_TIMEOUT_S:g}s:\n{tail}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def _start(name: str, cmd: list[str], port: int, workdir: Path) -> Emulator:
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=workdir, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    emulator = Emulator(name, port, proc, log)
    emulator.wait_ready()
    return emulator


class AzuriteServer:
    """Azurite's blob service; ``make_bucket`` creates a fresh container."""

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator
        self.endpoint = f"http://127.0.0.1:{emulator.port}/{AZURITE_ACCOUNT}"
        self.connection_string = (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"BlobEndpoint={self.endpoint};"
        )

    def options(self) -> dict[str, Any]:
        return {"connection_string": self.connection_string}

    def make_bucket(self, prefix: str = "repo") -> tuple[str, dict[str, Any]]:
        import fsspec

        container = f"tqsnap-{uuid.uuid4().hex[:12]}"
        fsspec.filesystem("az", **self.options()).mkdir(container)
        return f"az://{container}/{prefix}", self.options()


class GcsEmulator:
    """gcp-storage-emulator; ``make_bucket`` creates a fresh bucket."""

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator
        self.endpoint = f"http://127.0.0.1:{emulator.port}"

    def options(self) -> dict[str, Any]:
        return {"endpoint_url": self.endpoint, "token": "anon", "project": "tqsnap-test"}

    def make_bucket(self, prefix: str = "repo") -> tuple[str, dict[str, Any]]:
        import fsspec

        bucket = f"tqsnap-{uuid.uuid4().hex[:12]}"
        fsspec.filesystem("gs", **self.options()).mkdir(bucket)
        return f"gs://{bucket}/{prefix}", self.options()


def _azurite_command() -> str | None:
    if AZURITE_BIN.exists():
        return str(AZURITE_BIN)
    return shutil.which("azurite-blob")


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzuriteServer]:
    """Azurite blob service in memory on a free loopback port, with adlfs importable."""
    binary = _azurite_command()
    if binary is None or shutil.which("node") is None:
        _unavailable("Azurite (npm package azurite, with node)")
    try:
        import adlfs  # noqa: F401
    except ImportError:
        _unavailable("adlfs")
    port = _free_port()
    cmd = [
        str(binary),
        "--blobHost", "127.0.0.1", "--blobPort", str(port),
        "--inMemoryPersistence", "--silent", "--disableTelemetry",
        # azure-storage-blob may be newer than the Azurite release; the blob API is the same.
        "--skipApiVersionCheck",
    ]  # fmt: skip
    emulator = _start("azurite", cmd, port, tmp_path_factory.mktemp("azurite"))
    yield AzuriteServer(emulator)
    emulator.stop()


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GcsEmulator]:
    """gcp-storage-emulator in memory on a free loopback port, with gcsfs importable."""
    try:
        import gcp_storage_emulator  # noqa: F401
        import gcsfs  # noqa: F401
    except ImportError:
        _unavailable("gcp-storage-emulator and gcsfs")
    port = _free_port()
    cmd = [
        sys.executable, "-m", "gcp_storage_emulator", "start",
        "--host", "127.0.0.1", "--port", str(port), "--in-memory", "-q",
    ]  # fmt: skip
    emulator = _start("gcp-storage-emulator", cmd, port, tmp_path_factory.mktemp("gcs"))
    yield GcsEmulator(emulator)
    emulator.stop()
