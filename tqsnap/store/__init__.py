"""Store layer: bytes on an object store, addressed by URL."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import unquote, urlparse

from .base import DELETE_BATCH, Buffer, ObjectInfo, ObjectStore, PendingUpload, StoreSpec
from .counting import CountingStore
from .local import LocalStore
from .memory import MemoryStore
from .retry import RetryingStore, RetryPolicy


def open_store(url: str | StoreSpec | ObjectStore, **options: Any) -> ObjectStore:
    """Open the store a URL (or a :class:`StoreSpec`, from ``store.spec()``) names.

    - ``file:///abs/path`` or a bare path: :class:`LocalStore`.
    - ``s3://bucket/prefix``: :class:`~tqsnap.store.s3.S3Store` (endpoint from ``endpoint_url``
      or ``AWS_ENDPOINT_URL``; credentials from the normal boto3 chain or options).
    - ``obs://bucket/prefix``: the S3 store in Huawei OBS conditional mode.
    - ``memory://name``: :class:`MemoryStore`, shared by name within the process.

    An already opened store is returned as is, so every API accepts either.
    """
    if isinstance(url, ObjectStore):
        return url
    if isinstance(url, StoreSpec):
        url, options = url.url, {**url.options, **options}
    parsed = urlparse(url)
    scheme = parsed.scheme.lower()
    if scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt"):
        path = unquote(parsed.path) if scheme == "file" else url
        return LocalStore(path, **options)
    if scheme == "memory":
        return MemoryStore(parsed.netloc + parsed.path, **options)
    if scheme in ("s3", "obs"):
        from .s3 import S3Store

        if scheme == "obs":
            options.setdefault("conditional_mode", "obs")
        return S3Store(parsed.netloc, parsed.path.strip("/"), **options)
    raise ValueError(f"unsupported store URL {url!r}: use file://, s3://, obs:// or memory://")


__all__ = [
    "DELETE_BATCH",
    "Buffer",
    "CountingStore",
    "LocalStore",
    "MemoryStore",
    "ObjectInfo",
    "ObjectStore",
    "PendingUpload",
    "RetryPolicy",
    "RetryingStore",
    "StoreSpec",
    "open_store",
]
