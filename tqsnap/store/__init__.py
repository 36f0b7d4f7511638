"""Store layer: bytes on an object store, addressed by URL."""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import unquote

from ..errors import InvalidURLError
from .base import DELETE_BATCH, Buffer, ObjectInfo, ObjectStore, PendingUpload, StoreSpec
from .counting import CountingStore
from .local import LocalStore
from .memory import MemoryStore
from .retry import RetryingStore, RetryPolicy

#: ``file:/x`` or ``s3:bucket``: a scheme we know, written without ``//`` (not a relative path).
_SCHEME_WITHOUT_SLASHES = re.compile(r"(?i)(file|s3|obs|memory):(?!//)")


def split_protocol(url: str) -> tuple[str | None, str]:
    """``"s3://b/p"`` -> ``("s3", "b/p")``; a path without ``://`` -> ``(None, path)``.

    The rule of ``fsspec.core.split_protocol``, written out so that tqsnap does not need fsspec
    at run time: the protocol is what precedes the first ``://`` and must be longer than one
    character (``C://x`` is a Windows drive, not a protocol).
    """
    if "://" in url:
        protocol, path = url.split("://", 1)
        if len(protocol) > 1:
            return protocol.lower(), path
    return None, url


def local_path(url: str, path: str) -> str:
    """The file system path of ``file://<path>``; a host other than ``localhost`` is refused.

    ``file://tmp/x`` reads as host ``tmp`` and path ``/x`` by RFC 8089, and as the relative
    path ``tmp/x`` by fsspec; either guess could write a repository where the user did not
    mean, so neither is made.
    """
    if path.startswith("/"):
        return unquote(path)
    host, _, rest = path.partition("/")
    if host.lower() == "localhost":
        return unquote("/" + rest)
    raise InvalidURLError(
        f"the URL {url!r} names the host {host!r}; tqsnap opens local paths only: write "
        f"file:///{path} for the absolute path /{path}, or the bare path {path} for a relative one"
    )


def open_store(url: str | StoreSpec | ObjectStore, **options: Any) -> ObjectStore:
    """Open the store a URL (or a :class:`StoreSpec`, from ``store.spec()``) names.

    - ``file:///abs/path``, ``file://localhost/abs/path`` or a bare path: :class:`LocalStore`
      (a ``file://`` URL with another host is refused with :class:`~tqsnap.errors.InvalidURLError`).
    - ``s3://bucket/prefix``: :class:`~tqsnap.store.s3.S3Store` (endpoint from ``endpoint_url``
      or ``AWS_ENDPOINT_URL``; credentials from the normal boto3 chain or options, boto3-style
      or s3fs-style: :mod:`tqsnap.store.s3_options`).
    - ``obs://bucket/prefix``: the S3 store in Huawei OBS conditional mode.
    - ``memory://name``: :class:`MemoryStore`, shared by name within the process.
    - any other ``PROTOCOL://``: an fsspec filesystem (``gs://``, ``az://``, ``hdfs://``...),
      options passed to it unchanged (:mod:`tqsnap.store.fsspec_store`, docs/stores.md).

    URLs are split as fsspec splits them (:func:`split_protocol`). An already opened store is
    returned as is, so every API accepts either.
    """
    if isinstance(url, ObjectStore):
        return url
    if isinstance(url, StoreSpec):
        url, options = url.url, {**url.options, **options}
    if not isinstance(url, str):
        url = os.fspath(url)
    scheme, path = split_protocol(url)
    if scheme is None:
        if _SCHEME_WITHOUT_SLASHES.match(url):
            raise InvalidURLError(f"the URL {url!r} lacks '//' after its scheme: write e.g. file:///abs/path")
        return LocalStore(url, **options)
    if scheme == "file":
        return LocalStore(local_path(url, path), **options)
    if scheme == "memory":
        return MemoryStore(path, **options)
    if scheme in ("s3", "obs"):
        from .s3 import S3Store
        from .s3_options import normalize_s3_options

        if "?" in path or "#" in path:
            raise InvalidURLError(
                f"the URL {url!r} has a query or fragment; an S3 URL is s3://BUCKET/PREFIX, "
                "with options passed as storage options"
            )
        bucket, _, prefix = path.partition("/")
        options = normalize_s3_options(options)
        if scheme == "obs":
            options.setdefault("conditional_mode", "obs")
        return S3Store(bucket, prefix.strip("/"), **options)
    from .fsspec_store import open_fsspec_store

    return open_fsspec_store(url, **options)  # gs://, az://, hdfs://...: any fsspec filesystem


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
    "split_protocol",
]
