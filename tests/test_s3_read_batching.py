"""Batched socket reads of large S3 bodies (``SO_RCVLOWAT``, :mod:`tqsnap.store.s3_io`).

While much of a body is still to come, the S3 store asks the kernel to wake its reading thread
only once a batch has arrived. The safety rules: the floor is lifted before the body's tail and
before the connection goes back to the pool (a pooled connection with a floor would wait for a
batch of bytes that a small reply never sends), and a body cut while the floor is set still
resumes from where it stopped. Real SeaweedFS over loopback, a real fault proxy for the cut.
"""

from __future__ import annotations

import random
import socket
import sys
import time
from collections.abc import Callable

import pytest
from botocore.config import Config
from faultproxy import ProxiedBucket
from s3servers import S3Server

from tqsnap.store import open_store
from tqsnap.store.s3 import S3Store
from tqsnap.store.s3_io import _READ_BATCH

pytestmark = [
    pytest.mark.s3,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads are batched on Linux only"),
]

MiB = 2**20


def _pooled_sockets(store: S3Store) -> list[socket.socket]:
    """The sockets of the idle connections in the store's urllib3 pools."""
    manager = store.client._endpoint.http_session._manager
    socks = []
    for key in list(manager.pools.keys()):
        pool = manager.pools.get(key)
        for conn in list(pool.pool.queue) if pool is not None else []:
            if conn is not None and conn.sock is not None:
                socks.append(conn.sock)
    return socks


def test_a_connection_goes_back_to_the_pool_without_a_floor(seaweedfs_endpoint: S3Server) -> None:
    # A short read timeout and no retries: a floor left on a pooled socket would make the next
    # small reply on it time out instead of answering.
    url, opts = seaweedfs_endpoint.make_bucket("repo")
    store = open_store(url, **opts, config=Config(read_timeout=3), retries=0)
    assert isinstance(store, S3Store)
    big = random.Random(5).randbytes(8 * _READ_BATCH + 12345)
    store.put("big", big)
    store.put("small", b"tiny reply")
    buf = bytearray(len(big))
    assert store.get_into("big", memoryview(buf)) == len(big) and buf == big

    socks = _pooled_sockets(store)
    assert socks, "the read handed its connection back to the pool"
    assert all(s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT) == 1 for s in socks)
    started = time.monotonic()
    for _ in range(5):  # on the connection the big read used
        assert store.get("small") == b"tiny reply"
        small = bytearray(4)
        assert store.get_into("small", memoryview(small)) == 4 and small == b"tiny"
    assert time.monotonic() - started < 3


def test_a_body_cut_while_the_floor_is_set_resumes(faulty_s3: Callable[..., ProxiedBucket]) -> None:
    bucket = faulty_s3()
    store = open_store(bucket.url, **bucket.options, config=Config(read_timeout=10))
    assert isinstance(store, S3Store)
    data = random.Random(6).randbytes(4 * MiB)
    store.put("obj", data)
    bucket.proxy.log.clear()
    bucket.proxy.script("get", "truncate")
    buf = bytearray(len(data))
    started = time.monotonic()
    assert store.get_into("obj", memoryview(buf)) == len(data) and buf == data
    assert time.monotonic() - started < 10, "the cut was seen at once, not after a read timeout"
    ranges = [r for klass, _, _, r, _ in bucket.proxy.log if klass == "get"]
    assert len(ranges) == 2 and ranges[0] == f"bytes=0-{len(data) - 1}", ranges
    cut = int(ranges[1].removeprefix("bytes=").split("-")[0])
    assert 0 < cut < len(data) - 2 * _READ_BATCH, "the reply was cut while the floor was set"
    assert ranges[1] == f"bytes={cut}-{len(data) - 1}"
    assert all(s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT) == 1 for s in _pooled_sockets(store))
