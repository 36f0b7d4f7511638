"""Every store backend, and every wrapper, passes the same contract (:mod:`tqsnap.testing`)."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from s3servers import S3Server

from tqsnap.errors import CommitOutcomeUnknownError, ObjectNotFoundError
from tqsnap.store import (
    CountingStore,
    LocalStore,
    MemoryStore,
    ObjectStore,
    RetryingStore,
    RetryPolicy,
    open_store,
)
from tqsnap.store.base import Buffer, ObjectInfo
from tqsnap.testing import StoreContract

MiB = 2**20
NO_WAIT = RetryPolicy(max_attempts=6, base_s=0.0, budget_s=10.0)


class TestLocalStore(StoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[ObjectStore]:
        s = LocalStore(tmp_path / "repo")
        yield s
        s.close()


class TestMemoryStore(StoreContract):
    @pytest.fixture
    def store(self) -> Iterator[ObjectStore]:
        s = MemoryStore()
        yield s
        s.close()


class TestS3OnSeaweedFS(StoreContract):
    race_rounds = 1  # contended conditional PUTs stall SeaweedFS for seconds a round

    @pytest.fixture
    def store(self, seaweedfs_endpoint: S3Server) -> Iterator[ObjectStore]:
        url, options = seaweedfs_endpoint.make_bucket("repo")
        s = open_store(url, **options, multipart_threshold=5 * MiB, multipart_chunk=5 * MiB)
        yield s
        s.close()


class TestS3OnMoto(StoreContract):
    race_safe = False  # moto's conditional PUT is check-then-write

    @pytest.fixture
    def store(self, moto_endpoint: S3Server) -> Iterator[ObjectStore]:
        url, options = moto_endpoint.make_bucket("repo")
        s = open_store(url, **options)
        yield s
        s.close()


class TestCountingStore(StoreContract):
    @pytest.fixture
    def store(self) -> Iterator[ObjectStore]:
        s = CountingStore(MemoryStore())
        yield s
        s.close()


class Flaky(ObjectStore):
    """A store whose every third request fails before it is applied (the first included), and
    whose listings break every few keys: what a flaky NFS mount or network does. A commit's
    failure is a refused connection, which a retry may repeat without doubt."""

    def __init__(self, inner: ObjectStore, every: int = 3) -> None:
        self.inner, self.url, self.atomic_create = inner, inner.url, inner.atomic_create
        self._calls = itertools.count(1)
        self._every = every
        self._lock = threading.Lock()
        self.failures = 0

    def _maybe_fail(self, error: type[OSError] = ConnectionResetError) -> None:
        with self._lock:
            fail = next(self._calls) % self._every == 1 % self._every
            self.failures += fail
        if fail:
            raise error("injected failure")

    def get(self, key: str) -> bytes:
        self._maybe_fail()
        return self.inner.get(key)

    def get_range(self, key: str, start: int, length: int) -> bytes:
        self._maybe_fail()
        return self.inner.get_range(key, start, length)

    def put(self, key: str, data: Buffer) -> None:
        self._maybe_fail()
        self.inner.put(key, data)

    def put_if_absent(self, key: str, data: Buffer) -> bool:
        self._maybe_fail(ConnectionRefusedError)
        return self.inner.put_if_absent(key, data)

    def head(self, key: str) -> ObjectInfo | None:
        self._maybe_fail()
        return self.inner.head(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        for n, info in enumerate(self.inner.list(prefix)):
            if n == 3:  # a listing breaks part-way, after yielding some keys
                self._maybe_fail()
            yield info

    def delete_many(self, keys: Iterable[str]) -> int:
        self._maybe_fail()
        return self.inner.delete_many(keys)

    def now(self) -> float:
        self._maybe_fail()
        return self.inner.now()


class TestRetryingStoreOverAFlakyStore(StoreContract):
    """Through the retry wrapper, a store that fails a third of its requests keeps the contract."""

    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[ObjectStore]:
        s = RetryingStore(Flaky(LocalStore(tmp_path / "repo")), NO_WAIT)
        yield s
        assert isinstance(s.inner, Flaky) and s.inner.failures > 0
        s.close()


def test_retrying_store_gives_up_on_errors_that_do_not_pass(tmp_path: Path) -> None:
    flaky = Flaky(MemoryStore(), every=1)
    store = RetryingStore(flaky, RetryPolicy(max_attempts=3, base_s=0.0))
    with pytest.raises(ConnectionResetError):
        store.get("k")
    assert flaky.failures == 3
    plain = RetryingStore(MemoryStore(), NO_WAIT)
    with pytest.raises(ObjectNotFoundError):  # not transient: one attempt, raised as is
        plain.get("k")


class AppliedThenLost(MemoryStore):
    """put_if_absent applies the write and then loses the reply, once."""

    def __init__(self) -> None:
        super().__init__()
        self.lost = 0

    def put_if_absent(self, key: str, data: Buffer) -> bool:
        created = super().put_if_absent(key, data)
        if not self.lost:
            self.lost += 1
            raise ConnectionResetError("reply lost after the write was applied")
        return created


def test_retrying_store_never_guesses_a_commit() -> None:
    inner = AppliedThenLost()
    store = RetryingStore(inner, NO_WAIT)
    with pytest.raises(CommitOutcomeUnknownError) as err:
        store.put_if_absent("snapshots/s/1.json", b"mine")
    assert err.value.key == "snapshots/s/1.json"
    assert inner.get("snapshots/s/1.json") == b"mine"


def test_retry_policy_is_bounded_by_time() -> None:
    clock = itertools.count(0.0, 1.0)  # every look at the clock is a second later
    slept: list[float] = []
    policy = RetryPolicy(max_attempts=100, budget_s=5.0, base_s=0.001, clock=lambda: next(clock), sleep=slept.append)
    calls = 0

    def fail() -> None:
        nonlocal calls
        calls += 1
        raise TimeoutError("slow")

    with pytest.raises(TimeoutError):
        policy.run(fail, retryable=lambda exc: True)
    assert 2 <= calls < 10 and len(slept) == calls - 1
