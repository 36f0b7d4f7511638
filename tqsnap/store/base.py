"""The byte-level object store interface every backend implements.

The store knows nothing of snapshots: it moves opaque bytes under string keys. Keys are
relative to the store's root (the URL's path or prefix) and always use ``/`` separators.

Conditional create (:meth:`ObjectStore.put_if_absent`) is a first-class verb, not a flag on
:meth:`ObjectStore.put`, because it is the single mutable decision of the whole system: the
commit of a manifest.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

Buffer = bytes | bytearray | memoryview

#: S3's DeleteObjects accepts at most this many keys per request.
DELETE_BATCH = 1000


@dataclass(frozen=True)
class ObjectInfo:
    """What a listing or HEAD says about one object."""

    key: str
    size: int
    last_modified: float  # seconds since the epoch, in the store's clock


#: Option names whose values a spec's repr never shows.
_SECRET_WORDS = ("secret", "token", "password", "access_key", "account_key", "connection_string", "credential", "sas")


@dataclass(frozen=True)
class StoreSpec:
    """How to open a store again, in another process: its URL and constructor options.

    fsspec's ``to_json``/``from_json`` is the model. A spec may hold credentials that were
    passed explicitly (an S3 secret key), because the store it reopens needs them: its repr
    masks them, and it must be handled like the credentials themselves (never logged).
    """

    url: str
    options: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """``{"url": ..., "options": {...}}``; options that are not JSON values stay as they are."""
        return {"url": self.url, "options": dict(self.options)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StoreSpec:
        return cls(str(data["url"]), dict(data.get("options") or {}))

    def __repr__(self) -> str:
        shown = {
            name: "***" if any(w in name.lower() for w in _SECRET_WORDS) and value is not None else value
            for name, value in self.options.items()
        }
        return f"StoreSpec({self.url!r}, {shown!r})"


@dataclass(frozen=True)
class PendingUpload:
    """A multipart upload that was started and never completed nor aborted.

    Its parts are stored (and billed) until someone aborts it; a killed or failed save leaves
    such uploads behind, so gc lists them and aborts the ones older than its grace period.
    """

    key: str  # relative to the store's root, like every key
    upload_id: str
    initiated: float  # seconds since the epoch, in the store's clock


class ObjectStore(abc.ABC):
    """Bytes on an object store: get, ranged get, put, put-if-absent, head, list, delete.

    Implementations must be safe to call from many threads at once.
    """

    #: The URL the store was opened from (``file:///...``, ``s3://bucket/prefix``, ``memory://x``).
    url: str

    #: True when :meth:`put_if_absent` is an atomic create that exactly one racer can win.
    atomic_create: bool = True

    #: True when another process (a Ray actor, a DCP rank) that reopens :meth:`spec` sees the
    #: same objects. An in-process store cannot be shared; wrappers are not shared by default.
    shareable_across_processes: bool = False

    def declare_single_writer(self) -> None:
        """The repository says one writer at a time uses it (``single_writer`` in ``tqsnap.json``).

        Why: a store without an atomic create refuses ``put_if_absent`` unless told so, and a
        repository made with ``tqsnap init --single-writer`` records that choice once, so that
        every later writer need not repeat it. Stores whose creates are atomic ignore it.
        """
        return None

    @abc.abstractmethod
    def get(self, key: str) -> bytes:
        """Return the whole object. Raises :class:`~tqsnap.errors.ObjectNotFoundError`."""

    @abc.abstractmethod
    def get_range(self, key: str, start: int, length: int) -> bytes:
        """Return ``length`` bytes from ``start``. Shorter only if the object is shorter."""

    def get_into(self, key: str, buf: memoryview, start: int = 0) -> int:
        """Read ``len(buf)`` bytes at ``start`` into ``buf``; return the count read.

        Backends override this to avoid an intermediate copy; the default goes through
        :meth:`get_range`.
        """
        data = self.get_range(key, start, len(buf))
        buf[: len(data)] = data
        return len(data)

    def get_into_sized(self, key: str, buf: memoryview, start: int = 0) -> tuple[int, int | None]:
        """Like :meth:`get_into`, and also the object's whole size when the reply told it.

        Why: a reader that fills a caller's buffer with exactly the bytes it expects must still
        see an object that is *longer* than declared. A store whose reads carry the object's
        size (S3's ``Content-Range`` total, ``fstat`` on disk) reports it here at no cost; the
        default answers ``None`` and the caller asks with one more small read instead.
        """
        return self.get_into(key, buf, start), None

    @abc.abstractmethod
    def put(self, key: str, data: Buffer) -> None:
        """Write (or overwrite) an object. Used only for keys no one else writes."""

    @abc.abstractmethod
    def put_if_absent(self, key: str, data: Buffer) -> bool:
        """Create the object only if the key is absent; return False if it already existed.

        A concurrent racer sees exactly one True. On S3 this is ``If-None-Match: *``.

        When the store cannot tell (a reply was lost after the request may have been applied),
        it raises :class:`~tqsnap.errors.CommitOutcomeUnknownError` rather than answer: a False
        could hide the caller's own create. True is always definite.
        """

    @abc.abstractmethod
    def head(self, key: str) -> ObjectInfo | None:
        """Return the object's size and LastModified, or None if absent."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Yield every object whose key starts with ``prefix``, in key order, paginating."""

    @abc.abstractmethod
    def delete_many(self, keys: Iterable[str]) -> int:
        """Delete keys (absent ones are ignored), batching requests; return the request count."""

    @abc.abstractmethod
    def now(self) -> float:
        """The store's current time in epoch seconds, the clock LastModified is stamped in."""

    def exists(self, key: str) -> bool:
        return self.head(key) is not None

    def list_uploads(self, prefix: str = "") -> Iterator[PendingUpload]:
        """Yield the incomplete multipart uploads whose key starts with ``prefix``.

        Only stores that upload in parts have any; the default is none.
        """
        return iter(())

    def abort_upload(self, upload: PendingUpload) -> None:  # noqa: B027 - nothing to abort by default
        """Abort an incomplete upload and free its parts; an upload already gone is not an error."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections. Safe to call twice."""

    def spec(self) -> StoreSpec:
        """How to open this store in another process (``open_store(spec)``).

        Only stores that are :attr:`shareable_across_processes` have one.
        """
        raise TypeError(
            f"{self!r} cannot be reopened in another process; use a local path or an s3:// URL"
        )

    @classmethod
    def from_spec(cls, spec: StoreSpec) -> ObjectStore:
        """Open a store of this class from its :meth:`spec` (``open_store(spec)`` does the same
        for any class, by the URL's scheme)."""
        raise TypeError(f"{cls.__name__} cannot be reopened from a spec")

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle as the store's spec: connections and locks are not sent, the store is reopened."""
        return (type(self).from_spec, (self.spec(),))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


def batched(keys: Iterable[str], size: int = DELETE_BATCH) -> Iterator[list[str]]:
    """Split keys into lists of at most ``size``."""
    batch: list[str] = []
    for key in keys:
        batch.append(key)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
