"""A wrapper that counts requests and bytes per verb, for stats, tests and benchmarks."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable, Iterator

from .base import Buffer, ObjectInfo, ObjectStore, PendingUpload


class CountingStore(ObjectStore):
    """Delegates every verb to ``inner`` and tallies ``requests[verb]`` and ``bytes[verb]``."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self.url = inner.url
        self.atomic_create = inner.atomic_create
        self.requests: Counter[str] = Counter()
        self.bytes: Counter[str] = Counter()
        self._lock = threading.Lock()

    def _tally(self, verb: str, nbytes: int = 0, requests: int = 1) -> None:
        with self._lock:
            self.requests[verb] += requests
            self.bytes[verb] += nbytes

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.bytes.clear()

    def get(self, key: str) -> bytes:
        data = self.inner.get(key)
        self._tally("get", len(data))
        return data

    def get_range(self, key: str, start: int, length: int) -> bytes:
        data = self.inner.get_range(key, start, length)
        self._tally("get", len(data))
        return data

    def get_into(self, key: str, buf: memoryview, start: int = 0) -> int:
        n = self.inner.get_into(key, buf, start)
        self._tally("get", n)
        return n

    def declare_single_writer(self) -> None:
        self.inner.declare_single_writer()

    def get_into_sized(self, key: str, buf: memoryview, start: int = 0) -> tuple[int, int | None]:
        n, size = self.inner.get_into_sized(key, buf, start)
        self._tally("get", n)
        return n, size

    def put(self, key: str, data: Buffer) -> None:
        self.inner.put(key, data)
        self._tally("put", memoryview(data).nbytes)

    def put_if_absent(self, key: str, data: Buffer) -> bool:
        created = self.inner.put_if_absent(key, data)
        self._tally("put_if_absent", memoryview(data).nbytes)
        return created

    def head(self, key: str) -> ObjectInfo | None:
        self._tally("head")
        return self.inner.head(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        self._tally("list")
        return self.inner.list(prefix)

    def delete_many(self, keys: Iterable[str]) -> int:
        n = self.inner.delete_many(keys)
        self._tally("delete", requests=n)
        return n

    def now(self) -> float:
        return self.inner.now()

    def list_uploads(self, prefix: str = "") -> Iterator[PendingUpload]:
        self._tally("list_uploads")
        return self.inner.list_uploads(prefix)

    def abort_upload(self, upload: PendingUpload) -> None:
        self._tally("abort_upload")
        self.inner.abort_upload(upload)

    def close(self) -> None:
        self.inner.close()
