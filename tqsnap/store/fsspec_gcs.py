"""Google Cloud Storage through gcsfs: a create with ``ifGenerationMatch=0``, in one request.

GCS refuses a write whose ``ifGenerationMatch`` precondition fails with 412; generation 0
means "no live object", so exactly one of many concurrent creates succeeds. gcsfs sends it
for ``pipe_file(mode="create")``, but through its ``_request``, which repeats a failed request
up to six times on its own: after a reply lost in transit, the repeat of the writer's own
create meets its own object and answers 412, and the commit would read as lost when it was
made. So the create is one multipart upload (metadata and bytes in one request; commits are small)
sent here through gcsfs's aiohttp session, headers and credentials, once; repeating it is the
retry wrapper's decision, which knows that a repeat after a lost reply proves nothing.
"""

from __future__ import annotations

import datetime
import json
import secrets
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

from ..errors import StoreError
from .base import ObjectInfo
from .fsspec_backends import Backend


def _timestamp(value: Any) -> float:
    """Epoch seconds of an RFC 3339 time as GCS writes it (``2026-11-29T11:20:55.873Z``)."""
    if not value:
        return 0.0
    return datetime.datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


class GcsBackend(Backend):
    """``gs://bucket/prefix`` (gcsfs): native create, the server's ``Date``, batch deletes."""

    atomic_create = True
    delete_batch = keys_per_request = 100  # objects per JSON-API batch request (gcsfs's batch delete)
    precondition = "ifGenerationMatch=0"

    def create(self, path: str, data: bytes) -> bool:
        from fsspec.asyn import sync

        bucket, key, _ = self.fs.split_path(path)
        return sync(self.fs.loop, self._create, bucket, key, data)

    async def _create(self, bucket: str, key: str, data: bytes) -> bool:
        from gcsfs.retry import validate_response

        fs = self.fs
        boundary = "tqsnap-" + secrets.token_hex(16)
        meta = json.dumps({"name": key})
        body = b"".join(
            (
                f"--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{meta}\r\n".encode(),
                f"--{boundary}\r\nContent-Type: application/octet-stream\r\n\r\n".encode(),
                data,
                f"\r\n--{boundary}--\r\n".encode(),
            )
        )
        await fs._set_session()
        url = f"{fs._location}/upload/storage/v1/b/{quote(bucket, safe='')}/o"
        params = fs._get_params({"uploadType": "multipart", "ifGenerationMatch": "0"})
        headers = fs._get_headers({"Content-Type": f'multipart/related; boundary="{boundary}"'})
        async with fs.session.request(
            "POST", url, params=params, headers=headers, data=body, timeout=fs.requests_timeout
        ) as reply:
            contents = await reply.read()
            if reply.status == 412:
                return False
            validate_response(reply.status, contents, f"{bucket}/{key}")
        fs.invalidate_cache(f"{bucket}/{key}")
        return True

    def write(self, path: str, data: bytes) -> None:
        """A plain upload: a missing bucket is an error, never created by a write."""
        self.fs.pipe_file(path, data)

    def list_objects(self, root: str, prefix: str, page_size: int | None) -> Iterator[ObjectInfo]:
        """Objects.list with the key prefix and no delimiter, page by page (``pageToken``)."""
        from fsspec.asyn import sync

        bucket, _, base = root.partition("/")
        full = f"{base}/{prefix}" if base else prefix
        cut = len(base) + 1 if base else 0
        token: str | None = None
        while True:
            params: dict[str, Any] = {"prefix": full, "maxResults": page_size or 1000}
            if token:
                params["pageToken"] = token
            page = sync(self.fs.loop, self.fs._call_list_objects, bucket, **params)
            for item in page.get("items", []):
                name = str(item.get("name", ""))
                if not name.startswith(full) or "size" not in item:
                    raise StoreError(f"listing {root}/{prefix} returned an unusable entry {item!r:.200}")
                yield ObjectInfo(name[cut:], int(item["size"]), _timestamp(item.get("updated")))
            token = page.get("nextPageToken")
            if not token:
                return

    def server_date(self, root: str) -> Any:
        """A bucket GET (metadata only) carries the service's ``Date``."""
        headers, _ = self.fs.call("GET", "b/{}", root.split("/", 1)[0], fields="name")
        return headers.get("Date") or headers.get("date")

    def delete(self, paths: list[str]) -> list[tuple[str, BaseException]]:
        """One batch request; a key that failed is reported unless it is absent afterwards."""
        from fsspec.asyn import sync

        results: list[Any] = sync(self.fs.loop, self.fs._rm_files, paths)
        failed: list[tuple[str, BaseException]] = []
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            for path in paths:
                if self.fs.exists(path):
                    failed.append((path, errors[0]))
        return failed
