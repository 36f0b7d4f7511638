"""An in-process store, for unit tests and the deterministic protocol simulation.

Stores opened with the same ``memory://name`` share their objects, so two writers in one
process see one repository. The clock is injectable so a simulation can drive time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator

from ..errors import ObjectNotFoundError
from .base import Buffer, ObjectInfo, ObjectStore, batched

_REGISTRY: dict[str, dict[str, tuple[bytes, float]]] = {}
_REGISTRY_LOCK = threading.Lock()


class MemoryStore(ObjectStore):
    """Objects in a dict, guarded by a lock; LastModified comes from ``clock``.

    It lives in one process: it has no spec and cannot be sent to another process.
    """

    shareable_across_processes = False

    def __init__(self, name: str = "", clock: Callable[[], float] = time.time) -> None:
        self.url = f"memory://{name}"
        self.clock = clock
        self._lock = threading.Lock()
        if name:
            with _REGISTRY_LOCK:
                self._objects = _REGISTRY.setdefault(name, {})
        else:
            self._objects = {}

    def _entry(self, key: str) -> tuple[bytes, float]:
        with self._lock:
            entry = self._objects.get(key)
        if entry is None:
            raise ObjectNotFoundError(key)
        return entry

    def get(self, key: str) -> bytes:
        return self._entry(key)[0]

    def get_range(self, key: str, start: int, length: int) -> bytes:
        return self._entry(key)[0][start : start + length]

    def get_into_sized(self, key: str, buf: memoryview, start: int = 0) -> tuple[int, int | None]:
        blob = self._entry(key)[0]
        data = blob[start : start + len(buf)]
        buf[: len(data)] = data
        return len(data), len(blob)

    def put(self, key: str, data: Buffer) -> None:
        blob = bytes(data)
        with self._lock:
            self._objects[key] = (blob, self.clock())

    def put_if_absent(self, key: str, data: Buffer) -> bool:
        blob = bytes(data)
        with self._lock:
            if key in self._objects:
                return False
            self._objects[key] = (blob, self.clock())
            return True

    def head(self, key: str) -> ObjectInfo | None:
        with self._lock:
            entry = self._objects.get(key)
        if entry is None:
            return None
        return ObjectInfo(key, len(entry[0]), entry[1])

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        with self._lock:
            items = sorted((k, len(v[0]), v[1]) for k, v in self._objects.items() if k.startswith(prefix))
        for key, size, mtime in items:
            yield ObjectInfo(key, size, mtime)

    def delete_many(self, keys: Iterable[str]) -> int:
        requests = 0
        for batch in batched(keys):
            requests += 1
            with self._lock:
                for key in batch:
                    self._objects.pop(key, None)
        return requests

    def now(self) -> float:
        return self.clock()


def forget_memory_store(name: str) -> None:
    """Drop a named in-memory repository (tests use this between cases)."""
    with _REGISTRY_LOCK:
        _REGISTRY.pop(name, None)
