"""Shared fixtures: real S3 servers on loopback and fresh buckets on them.

``seaweedfs_endpoint``, ``seaweedfs_auth_endpoint`` and ``moto_endpoint`` are session-scoped
:class:`~s3servers.S3Server` objects (``.endpoint_url``, ``.access_key``, ``.secret_key``,
``.options()``, ``.client()``, ``.make_bucket()``). The servers a session's tests need are
started together, in the background, when the first of them is asked for.
``make_bucket(server)`` creates a fresh bucket and returns ``(url, options)`` for
``open_store(url, **options)``; ``s3_repo_url`` does the same once on SeaweedFS and once on
moto. Tests that use any of them, or are parametrized with "seaweedfs" or "moto", are marked
``s3`` (``-m "not s3"`` skips them).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# boto3 must never go looking for real credentials, a real region, or instance metadata.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "tqsnap-any")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "tqsnap-any-secret")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")

sys.path.insert(0, str(Path(__file__).parent))

from emulators import azurite, gcs_emulator  # noqa: E402, F401 - GCS and Azure emulator fixtures
from faultproxy import ProxiedBucket, proxied_bucket  # noqa: E402
from s3servers import S3Server, ServerPool  # noqa: E402

#: fixture name -> server kind
SERVER_FIXTURES = {
    "seaweedfs_endpoint": "seaweedfs",
    "seaweedfs_auth_endpoint": "seaweedfs-auth",
    "moto_endpoint": "moto",
}
S3_SERVERS = ["seaweedfs", "moto"]
_S3_FIXTURES = frozenset(SERVER_FIXTURES) | {"s3_server", "s3_repo_url", "make_bucket", "faulty_s3"}
_NEEDED = pytest.StashKey[set]()


def _kinds_used(item: pytest.Item) -> set[str]:
    names = set(getattr(item, "fixturenames", ()))
    kinds = {SERVER_FIXTURES[n] for n in names & SERVER_FIXTURES.keys()}
    callspec = getattr(item, "callspec", None)
    if callspec is not None:
        kinds |= {v for v in callspec.params.values() if isinstance(v, str) and v in S3_SERVERS}
    if names & {"s3_server", "s3_repo_url"} and not kinds:
        kinds |= set(S3_SERVERS)
    return kinds


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # First, so that ``-m "not s3"`` sees the marks.
    for item in items:
        if _kinds_used(item) or _S3_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.s3)


def pytest_collection_finish(session: pytest.Session) -> None:
    # After -k/-m deselection: start only the servers the selected tests use.
    needed: set[str] = set()
    for item in session.items:
        needed |= _kinds_used(item)
    session.config.stash[_NEEDED] = needed


@pytest.fixture(scope="session")
def s3_server_pool(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerPool]:
    """Starts and stops the loopback S3 servers; one fresh data directory each per session."""
    pool = ServerPool(tmp_path_factory.mktemp("s3servers"), request.config.stash.get(_NEEDED, set()))
    yield pool
    pool.stop_all()


@pytest.fixture(scope="session")
def seaweedfs_endpoint(s3_server_pool: ServerPool) -> S3Server:
    """SeaweedFS accepting any credentials; the server for races and concurrency."""
    return s3_server_pool.get("seaweedfs")


@pytest.fixture(scope="session")
def seaweedfs_auth_endpoint(s3_server_pool: ServerPool) -> S3Server:
    """SeaweedFS with one identity (``tqsnap-test`` / ``tqsnap-secret``); other keys get 403."""
    return s3_server_pool.get("seaweedfs-auth")


@pytest.fixture(scope="session")
def moto_endpoint(s3_server_pool: ServerPool) -> S3Server:
    """moto_server: single requests behave like AWS, but conditional writes are not race-safe."""
    return s3_server_pool.get("moto")


@pytest.fixture(scope="session")
def make_bucket() -> Callable[..., tuple[str, dict[str, str]]]:
    """``make_bucket(server, prefix="repo")`` -> ``("s3://tqsnap-<random>/repo", options)``."""

    def make(server: S3Server, prefix: str = "repo") -> tuple[str, dict[str, str]]:
        return server.make_bucket(prefix)

    return make


@pytest.fixture(params=[pytest.param(name, marks=pytest.mark.s3) for name in S3_SERVERS])
def s3_server(request: pytest.FixtureRequest) -> S3Server:
    """Each S3 server in turn (SeaweedFS, moto)."""
    return request.getfixturevalue(f"{request.param}_endpoint")


@pytest.fixture
def s3_repo_url(s3_server: S3Server) -> tuple[str, dict[str, str]]:
    """``(url, options)`` of a fresh bucket, once on SeaweedFS and once on moto."""
    return s3_server.make_bucket()


@pytest.fixture
def faulty_s3(seaweedfs_endpoint: S3Server) -> Iterator[Callable[..., ProxiedBucket]]:
    """``faulty_s3(seed=0, rate=0.0, server=None, **proxy_options)`` -> a fresh bucket behind a
    fault-injecting proxy (:mod:`faultproxy`), on SeaweedFS unless ``server`` says otherwise."""
    made: list[ProxiedBucket] = []

    def make(server: S3Server | None = None, **proxy_options: object) -> ProxiedBucket:
        bucket = proxied_bucket(server or seaweedfs_endpoint, **proxy_options)
        made.append(bucket)
        return bucket

    yield make
    for bucket in made:
        bucket.proxy.close()
