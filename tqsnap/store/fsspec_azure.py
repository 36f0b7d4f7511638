"""Azure Blob Storage through adlfs: a create with ``If-None-Match: *``, never repeated blindly.

Azure refuses a Put Blob, and a Put Block List, that carries ``If-None-Match: *`` when the
blob exists (409 ``BlobAlreadyExists`` or 412 ``ConditionNotMet``). azure-storage-blob sends
the header for ``upload_blob(overwrite=False)``; objects above :attr:`AzureBackend.block_size`
are staged as blocks and committed with ``commit_block_list(match_condition=
MatchConditions.IfMissing)``, which sends the same header on the request that makes the
blob appear, so a large create is as atomic as a small one. Both are sent with
``retry_total=0``: azure-core's own retry would repeat a create whose reply was lost, meet the
writer's own blob and report a lost race; repeating is the retry wrapper's decision. aiohttp
still repeats a PUT once when its connection drops, below any setting, so each create also
writes a random token as blob metadata: a refused create whose blob carries its own token
was this create's, landed by that hidden repeat, and answers True.

Requests go through adlfs's async ``BlobServiceClient`` (``fs.service_client``), so every
credential adlfs accepts (connection string, account key, SAS, service principal,
``DefaultAzureCredential``) works unchanged.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
from collections.abc import Iterator
from typing import Any

from .base import ObjectInfo
from .fsspec_backends import Backend

#: Metadata name of the random token each create writes, to recognise its own blob.
CREATE_TOKEN = "tqsnapcreate"
#: Objects larger than this are created from staged blocks (Put Block + Put Block List).
DEFAULT_BLOCK_SIZE = 32 * 2**20


class AzureBackend(Backend):
    """``az://container/prefix`` (adlfs): native create, the server's ``Date``, batch deletes."""

    atomic_create = True
    delete_batch = 256  # Delete Blob requests sent concurrently, one per key
    precondition = "If-None-Match: * (Put Blob, Put Block List)"

    def __init__(self, fs: Any, options: dict[str, Any]) -> None:
        super().__init__(fs, options)
        self.block_size = int(options.get("block_size") or DEFAULT_BLOCK_SIZE)

    def _run(self, fn: Any, *args: Any) -> Any:
        """Run the coroutine function ``fn(*args)`` on adlfs's event loop and wait for it."""
        from fsspec.asyn import sync

        return sync(self.fs.loop, fn, *args)

    def create(self, path: str, data: bytes) -> bool:
        container, blob, _ = self.fs.split_path(path)
        created = self._run(self._create, container, blob, data)
        self.fs.invalidate_cache(self.fs._parent(path))
        return created

    async def _create(self, container: str, blob: str, data: bytes) -> bool:
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceExistsError, ResourceModifiedError
        from azure.storage.blob import BlobBlock

        token = {CREATE_TOKEN: secrets.token_hex(16)}
        async with self.fs.service_client.get_blob_client(container=container, blob=blob) as client:
            try:
                if len(data) <= self.block_size:
                    await client.upload_blob(data, overwrite=False, metadata=token, retry_total=0)
                    return True
                tag = secrets.token_hex(8)  # block ids of one blob must have one length
                blocks = []
                view = memoryview(data)
                for n, start in enumerate(range(0, len(data), self.block_size)):
                    block_id = base64.b64encode(f"{tag}-{n:08d}".encode()).decode()
                    await client.stage_block(block_id, bytes(view[start : start + self.block_size]))
                    blocks.append(BlobBlock(block_id=block_id))
                # IfMissing is sent as If-None-Match: * (azure-storage-blob's _get_match_headers).
                await client.commit_block_list(
                    blocks, metadata=token, match_condition=MatchConditions.IfMissing, retry_total=0
                )
                return True
            except (ResourceExistsError, ResourceModifiedError):
                pass
            # Refused: a rival's blob, or this create's own, landed by an attempt whose reply was
            # lost and that aiohttp repeated on its own (it repeats a PUT once on a dropped
            # connection, below every retry setting): the token tells them apart.
            props = await client.get_blob_properties()
            return (props.metadata or {}).get(CREATE_TOKEN) == token[CREATE_TOKEN]

    def write(self, path: str, data: bytes) -> None:
        """A plain upload: a missing bucket is an error, never created by a write."""
        self.fs.pipe_file(path, data)

    def list_objects(self, root: str, prefix: str, page_size: int | None) -> Iterator[ObjectInfo]:
        """List Blobs with the key prefix, page by page (the service's continuation marker)."""
        container, _, base = root.partition("/")
        full = f"{base}/{prefix}" if base else prefix
        cut = len(base) + 1 if base else 0
        token: str | None = None
        while True:
            items, token = self._run(self._page, container, full, token, page_size)
            for name, size, modified in items:
                yield ObjectInfo(name[cut:], size, modified)
            if not token:
                return

    async def _page(
        self, container: str, full: str, token: str | None, page_size: int | None
    ) -> tuple[list[tuple[str, int, float]], str | None]:
        async with self.fs.service_client.get_container_client(container) as client:
            pages = client.list_blobs(name_starts_with=full, results_per_page=page_size or 5000).by_page(
                continuation_token=token
            )
            async for page in pages:
                items = [(b.name, int(b.size), b.last_modified.timestamp()) async for b in page]
                return items, pages.continuation_token
        return [], None

    def server_date(self, root: str) -> Any:
        """Container properties carry the service's ``Date`` header."""
        container = root.split("/", 1)[0]

        async def date() -> Any:
            async with self.fs.service_client.get_container_client(container) as client:
                headers = await client._client.container.get_properties(cls=lambda _r, _d, h: h)
            return headers.get("Date") or headers.get("date")

        return self._run(date)

    def delete(self, paths: list[str]) -> list[tuple[str, BaseException]]:
        """Deletes of one container, sent concurrently; absent blobs are not errors."""
        return self._run(self._delete, paths)

    async def _delete(self, paths: list[str]) -> list[tuple[str, BaseException]]:
        from azure.core.exceptions import ResourceNotFoundError

        split = [self.fs.split_path(p)[:2] for p in paths]
        failed: list[tuple[str, BaseException]] = []
        by_container: dict[str, list[tuple[str, str]]] = {}
        for path, (container, blob) in zip(paths, split, strict=True):
            by_container.setdefault(container, []).append((path, blob))
        for container, items in by_container.items():
            async with self.fs.service_client.get_container_client(container) as client:
                results = await asyncio.gather(
                    *(client.delete_blob(blob) for _, blob in items), return_exceptions=True
                )
            for (path, _), result in zip(items, results, strict=True):
                if isinstance(result, BaseException) and not isinstance(result, ResourceNotFoundError):
                    failed.append((path, result))
        self.fs.invalidate_cache()
        return failed
