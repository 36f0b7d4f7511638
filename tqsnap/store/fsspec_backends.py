"""Per-filesystem parts of the fsspec store: the conditional create, the clock, batched deletes.

fsspec gives every filesystem the same read and write verbs, but not the one verb a commit
needs: its ``pipe_file(mode="create")`` is, in the base class, an ``exists()`` followed by a
write (two racers can both pass the check), and backends that override it do so with
different guarantees. So the conditional create is never taken from fsspec in general. Each
filesystem whose service has a native precondition gets a :class:`Backend` that sends it
(:mod:`.fsspec_gcs`, :mod:`.fsspec_azure`); every other filesystem gets the plain
:class:`Backend`, whose create is not atomic and is allowed only for a single writer.
"""

from __future__ import annotations

import datetime
import email.utils
from collections.abc import Iterator
from typing import Any

from .base import ObjectInfo


class Backend:
    """A filesystem with no atomic create, no readable server clock and one delete per key."""

    #: True when :meth:`create` is decided by the service: exactly one racer can win.
    atomic_create = False
    #: Keys handed to one :meth:`delete` call, and keys one delete request removes.
    delete_batch = 1
    keys_per_request = 1
    #: What the docs and errors call the precondition this backend sends.
    precondition = "none (exists-then-write)"

    def __init__(self, fs: Any, options: dict[str, Any]) -> None:
        self.fs = fs
        self.options = options

    def create(self, path: str, data: bytes) -> bool:
        """Write ``path`` unless it exists; return False if it did. Not atomic here: the caller
        allows it only for a repository that has a single writer."""
        if self.fs.exists(path):
            return False
        self.write(path, data)
        return True

    def write(self, path: str, data: bytes) -> None:
        """Write (or overwrite) ``path``; on a filesystem with directories (local, HDFS, SFTP),
        the missing parents are made first."""
        try:
            self.fs.pipe_file(path, data)
        except FileNotFoundError:
            self.fs.makedirs(self.fs._parent(path), exist_ok=True)
            self.fs.pipe_file(path, data)

    def list_objects(self, root: str, prefix: str, page_size: int | None) -> Iterator[ObjectInfo] | None:
        """The objects whose key (relative to ``root``) starts with ``prefix``, in key order,
        one request per page; None where the store should walk the filesystem instead."""
        return None

    def server_date(self, root: str) -> str | datetime.datetime | None:
        """The service's ``Date`` header (RFC 7231), or None when the backend has no server."""
        return None

    def delete(self, paths: list[str]) -> list[tuple[str, BaseException]]:
        """Delete at most :attr:`delete_batch` paths; return the ones that failed, absent keys
        excluded (deleting an absent key is not an error)."""
        failed: list[tuple[str, BaseException]] = []
        for path in paths:
            try:
                self.fs.rm_file(path)
            except FileNotFoundError:
                pass
            except Exception as exc:  # reported with the others, each one named
                failed.append((path, exc))
        return failed


def parse_date(value: str | datetime.datetime) -> float:
    """Epoch seconds of an HTTP ``Date`` header (text, or a datetime azure-core already parsed),
    placed in the middle of its second."""
    if not isinstance(value, datetime.datetime):
        value = email.utils.parsedate_to_datetime(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.timezone.utc)
    return value.timestamp() + 0.5


#: fsspec protocol -> module and class of its backend (imported only when that protocol is opened).
NATIVE_BACKENDS = {
    "gs": ("fsspec_gcs", "GcsBackend"),
    "gcs": ("fsspec_gcs", "GcsBackend"),
    "az": ("fsspec_azure", "AzureBackend"),
    "abfs": ("fsspec_azure", "AzureBackend"),
    "abfss": ("fsspec_azure", "AzureBackend"),
}


def backend_for(protocol: str, fs: Any, options: dict[str, Any]) -> Backend:
    """The backend of ``protocol``: a native one where the service has a precondition."""
    import importlib

    found = NATIVE_BACKENDS.get(protocol)
    if found is None:
        return Backend(fs, options)
    module = importlib.import_module(f"{__package__}.{found[0]}")
    cls: type[Backend] = getattr(module, found[1])
    return cls(fs, options)
