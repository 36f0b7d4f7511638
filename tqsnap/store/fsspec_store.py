"""A store on any fsspec filesystem: ``gs://``, ``gcs://``, ``az://``, ``abfs://``, ``hdfs://``...

fsspec is the interface the Python data stack already speaks (pandas, zarr, torch DCP), and
its ``storage_options`` are what users already have written down for their buckets, so they
are taken unchanged: ``open_store("gs://bucket/ckpt", token="/path/key.json")`` opens
``fsspec.filesystem("gs", token=...)``. Reads, ranged reads, writes, listings (paged by the
filesystem) and deletes go through fsspec's verbs; the three things fsspec cannot promise in
general come from a per-service :class:`~.fsspec_backends.Backend`: the conditional create
(Google Cloud Storage ``ifGenerationMatch=0``, Azure ``If-None-Match: *``), the service's
clock, and batched deletes.

A filesystem without a native create (HDFS, SFTP, a local path through fsspec, ...) is opened
with ``atomic_create`` False: its ``put_if_absent`` is refused with
:class:`~tqsnap.errors.ConditionalWriteUnsupportedError` unless the store was opened with
``single_writer=True`` or its repository was made with ``tqsnap init --single-writer`` (recorded
in ``tqsnap.json`` and applied on every open: :meth:`~.base.ObjectStore.declare_single_writer`), and
``tqsnap init`` refuses such a store for shared use after probing it.

:func:`open_fsspec_store` wraps the store in the common retry policy (:mod:`.retry`); the
result pickles as its :class:`~.base.StoreSpec` (URL and options), so Ray actors and DCP ranks
reopen the same bucket with the same credentials.
"""

from __future__ import annotations

import datetime
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from ..errors import ConditionalWriteUnsupportedError, InvalidKeyError, InvalidURLError, StoreError
from .base import Buffer, ObjectInfo, ObjectStore, StoreSpec, batched
from .fsspec_backends import Backend, backend_for, parse_date
from .fsspec_errors import not_applied, retryable, status_of, translate
from .retry import RetryingStore, RetryPolicy

T = TypeVar("T")

_CLOCK_REFRESH = 60.0
#: ``info`` fields that hold the modification time, by backend (local, gcsfs, adlfs, s3fs, ...).
_MTIME_FIELDS = ("mtime", "last_modified", "LastModified", "updated", "modified", "created")


def _mtime(info: dict[str, Any]) -> float:
    for name in _MTIME_FIELDS:
        value = info.get(name)
        if isinstance(value, datetime.datetime):
            return value.timestamp() if value.tzinfo else value.replace(tzinfo=datetime.timezone.utc).timestamp()
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str) and value:
            try:
                return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return 0.0


def _check_key(key: str) -> str:
    if not isinstance(key, str) or not key:
        raise InvalidKeyError(f"invalid store key {key!r}: keys are non-empty strings")
    parts = key.split("/")
    if key.startswith("/") or "\x00" in key or "\\" in key or any(p in ("", ".", "..") for p in parts):
        raise InvalidKeyError(
            f"refusing store key {key!r}: it is absolute, or has an empty, '.', '..', NUL or backslash segment"
        )
    return key


class FsspecStore(ObjectStore):
    """Objects under ``protocol://bucket/prefix`` of an fsspec filesystem.

    Parameters:
        url: ``gs://bucket/prefix``, ``az://container/prefix``, ``hdfs://host/path``, ...
        single_writer: allow a filesystem without an atomic create; the caller guarantees
            that one writer at a time uses the repository (its create is exists-then-write).
        block_size: Azure only: objects above this many bytes are created from staged blocks.
        list_page_size: keys per listing request on GCS (default 1000) and Azure (5000).
        **storage_options: passed to ``fsspec.filesystem(protocol, ...)`` unchanged.
    """

    shareable_across_processes = True
    #: ``tqsnap init`` probes the create before trusting it (see :mod:`.probe`).
    probe_on_init = True

    def __init__(
        self,
        url: str,
        *,
        single_writer: bool = False,
        block_size: int | None = None,
        list_page_size: int | None = None,
        **storage_options: Any,
    ) -> None:
        protocol, sep, _ = url.partition("://")
        if not sep or not protocol:
            raise InvalidURLError(f"{url!r} is not an fsspec URL: write PROTOCOL://BUCKET/PREFIX")
        self.protocol = protocol.lower()
        self._options = {"single_writer": single_writer, **storage_options}
        for name, value in (("block_size", block_size), ("list_page_size", list_page_size)):
            if value is not None:
                self._options[name] = value
        self.list_page_size = list_page_size
        try:
            import fsspec

            fs_class = fsspec.get_filesystem_class(self.protocol)
        except (ImportError, ValueError) as exc:
            raise InvalidURLError(
                f"cannot open {url!r}: fsspec has no usable filesystem for {self.protocol!r} ({exc}). "
                "Install its package: gcsfs for gs://, adlfs for az:// and abfs://"
            ) from exc
        self.root = str(fs_class._strip_protocol(url)).rstrip("/")
        if not self.root.strip("/"):
            raise InvalidURLError(f"{url!r} names no bucket or directory: write {self.protocol}://BUCKET/PREFIX")
        self.fs = fsspec.filesystem(self.protocol, **{"use_listings_cache": False, **storage_options})
        self.url = f"{self.protocol}://{self.root}"
        self.single_writer = single_writer
        self.backend: Backend = backend_for(self.protocol, self.fs, self._options)
        self.atomic_create = self.backend.atomic_create
        self._clock_lock = threading.Lock()
        self._clock: tuple[float, float] | None = None  # (offset to the server, when measured)

    def declare_single_writer(self) -> None:
        self.single_writer = True
        self._options["single_writer"] = True

    def spec(self) -> StoreSpec:
        """The URL and the options as given (credentials included: never log its options)."""
        return StoreSpec(self.url, dict(self._options))

    @classmethod
    def from_spec(cls, spec: StoreSpec) -> FsspecStore:
        return cls(spec.url, **spec.options)

    def _path(self, key: str) -> str:
        return f"{self.root}/{_check_key(key)}"

    def _call(self, action: str, key: str | None, fn: Callable[[], T], *, writing: bool = False) -> T:
        try:
            return fn()
        except Exception as exc:
            raise translate(exc, key=key, url=self.url, action=action, writing=writing) from exc

    # --- reads -------------------------------------------------------------------------------

    def get(self, key: str) -> bytes:
        path = self._path(key)
        return bytes(self._call("read", key, lambda: self.fs.cat_file(path)))

    def get_range(self, key: str, start: int, length: int) -> bytes:
        if start < 0 or length < 0:
            raise ValueError(f"invalid range start={start} length={length}")
        path = self._path(key)
        if length == 0:
            if self.head(key) is None:
                raise translate(FileNotFoundError(path), key=key, url=self.url, action="read")
            return b""
        try:
            return bytes(self.fs.cat_file(path, start=start, end=start + length))
        except Exception as exc:
            if status_of(exc) == 416 or "InvalidRange" in str(exc):
                if self.head(key) is not None:  # a range wholly past the end: no bytes
                    return b""
            raise translate(exc, key=key, url=self.url, action="read") from exc

    def head(self, key: str) -> ObjectInfo | None:
        path = self._path(key)

        def info() -> ObjectInfo | None:
            try:
                found = self.fs.info(path)
            except FileNotFoundError:
                return None
            if found.get("type", "file") != "file":
                return None
            return ObjectInfo(key, int(found.get("size") or 0), _mtime(found))

        return self._call("head", key, info)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object under ``prefix`` in key order.

        On an object store (GCS, Azure) this is the service's prefix listing, one request per
        page of ``list_page_size`` keys, streamed. On other filesystems the walk starts at the
        deepest directory the prefix names and keeps the keys that start with the prefix, so
        ``snapshots/s1`` matches ``snapshots/s1/...`` and ``snapshots/s10/...`` as on S3.
        """
        native = self.backend.list_objects(self.root, prefix, self.list_page_size)
        if native is not None:
            return self._guarded(native, prefix)
        return self._walk(prefix)

    def _guarded(self, pages: Iterator[ObjectInfo], prefix: str) -> Iterator[ObjectInfo]:
        while True:
            try:
                info = next(pages)
            except StopIteration:
                return
            except Exception as exc:
                raise translate(exc, key=None, url=self.url, action=f"list {prefix!r} of") from exc
            yield info

    def _walk(self, prefix: str) -> Iterator[ObjectInfo]:
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        top = f"{self.root}/{base}" if base else self.root

        def find() -> dict[str, dict[str, Any]]:
            try:
                return dict(self.fs.find(top, withdirs=False, detail=True))
            except FileNotFoundError:
                return {}

        found = self._call("list", prefix, find)
        head = self.root + "/"
        items = []
        for name, info in found.items():
            name = str(self.fs._strip_protocol(name))
            if not name.startswith(head) or info.get("type", "file") != "file":
                continue
            key = name[len(head) :]
            if key.startswith(prefix):
                items.append(ObjectInfo(key, int(info.get("size") or 0), _mtime(info)))
        items.sort(key=lambda o: o.key)
        return iter(items)

    def now(self) -> float:
        """The service's clock (its ``Date`` header, measured at most once a minute); this
        machine's clock for a filesystem without a server clock."""
        mono = time.monotonic()
        with self._clock_lock:
            if self._clock is not None and mono - self._clock[1] < _CLOCK_REFRESH:
                return time.time() + self._clock[0]
        before = time.time()
        date = self._call("read the clock of", None, lambda: self.backend.server_date(self.root))
        after = time.time()
        offset = 0.0 if not date else parse_date(date) - (before + after) / 2
        with self._clock_lock:
            self._clock = (offset, mono)
        return time.time() + offset

    # --- writes ------------------------------------------------------------------------------

    def put(self, key: str, data: Buffer) -> None:
        path, blob = self._path(key), bytes(data)
        self._call("write", key, lambda: self.backend.write(path, blob), writing=True)

    def put_if_absent(self, key: str, data: Buffer) -> bool:
        """Create ``key`` unless it exists, with the service's own precondition.

        On a filesystem without one this is refused unless the store is single-writer.
        """
        path = self._path(key)
        if not self.atomic_create and not self.single_writer:
            raise ConditionalWriteUnsupportedError(
                f"{self.url}: the {self.protocol!r} filesystem has no atomic create, so concurrent "
                f"writers could overwrite each other's commit of {key!r}. Use gs:// or az:// (or "
                "s3://), or create the repository for one writer at a time with `tqsnap init "
                "--single-writer` and pass single_writer=True"
            )
        blob = bytes(data)
        return self._call("create", key, lambda: self.backend.create(path, blob), writing=True)

    def delete_many(self, keys: Iterable[str]) -> int:
        requests = 0
        for batch in batched((self._path(k) for k in keys), self.backend.delete_batch):
            requests += -(-len(batch) // self.backend.keys_per_request)
            failed = self._call("delete", batch[0][len(self.root) + 1 :], lambda b=batch: self.backend.delete(b))
            if failed:
                shown = ", ".join(f"{p[len(self.root) + 1 :]!r} ({e!r})" for p, e in failed[:5])
                first = translate(failed[0][1], key=failed[0][0], url=self.url, action="delete")
                if isinstance(first, StoreError) and type(first) is not StoreError:
                    raise type(first)(f"deleting {len(failed)} keys in {self.url} failed: {shown}") from failed[0][1]
                raise StoreError(
                    f"deleting {len(failed)} keys in {self.url} failed: {shown}. The other keys were "
                    "deleted; re-run the deletion once the cause is fixed"
                ) from failed[0][1]
        return requests


class RetryingFsspecStore(RetryingStore):
    """An :class:`FsspecStore` under the retry policy; it reopens (and pickles) as the store does."""

    shareable_across_processes = True
    probe_on_init = True

    def spec(self) -> StoreSpec:
        spec = self.inner.spec()
        options = dict(spec.options)
        if self.policy != RetryPolicy():
            options["retries"] = self.policy
        return StoreSpec(spec.url, options)

    @classmethod
    def from_spec(cls, spec: StoreSpec) -> ObjectStore:
        return open_fsspec_store(spec.url, **spec.options)


def open_fsspec_store(
    url: str, *, retries: int | RetryPolicy | None = None, retry_budget_s: float | None = None, **options: Any
) -> RetryingFsspecStore:
    """An :class:`FsspecStore` for ``url`` wrapped in the common retry policy.

    ``retries``: retries after the first attempt, or a :class:`~.retry.RetryPolicy`.
    """
    policy = retries if isinstance(retries, RetryPolicy) else RetryPolicy()
    if isinstance(retries, int):
        policy = policy.with_attempts(retries + 1)
    if retry_budget_s is not None:
        policy = RetryPolicy(policy.max_attempts, retry_budget_s, policy.base_s, policy.cap_s)
    return RetryingFsspecStore(FsspecStore(url, **options), policy, retryable=retryable, not_applied=not_applied)
