"""A store on a local (or network-mounted) file system.

Objects are plain files under the root directory. ``put_if_absent`` writes a temporary file,
fsyncs it, and ``os.link``s it into place: the link fails if the key exists, and a reader can
never see a half-written object. LastModified is the file's mtime.
"""

from __future__ import annotations

import errno
import os
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..errors import BucketNotFoundError, ObjectNotFoundError, StoreError
from .base import Buffer, ObjectInfo, ObjectStore, batched

_TMP_DIR = ".tmp"


class LocalStore(ObjectStore):
    """Objects as files below ``root``; temp files live in ``root/.tmp`` and are never listed."""

    def __init__(self, root: str | os.PathLike[str], *, create: bool = True, fsync: bool = True) -> None:
        self.root = Path(root).expanduser().absolute()
        self.url = self.root.as_uri()
        self.fsync = fsync
        if not self.root.exists():
            if not create:
                raise BucketNotFoundError(
                    f"directory {self.root} does not exist; create it or pass create=True"
                )
            self.root.mkdir(parents=True, exist_ok=True)
        (self.root / _TMP_DIR).mkdir(exist_ok=True)

    def _path(self, key: str) -> Path:
        if key.startswith("/") or ".." in key.split("/") or key.startswith(_TMP_DIR):
            raise StoreError(f"refusing key {key!r}: it would leave the store root")
        return self.root / key

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise ObjectNotFoundError(key) from None

    def get_range(self, key: str, start: int, length: int) -> bytes:
        try:
            with open(self._path(key), "rb") as f:
                f.seek(start)
                return f.read(length)
        except FileNotFoundError:
            raise ObjectNotFoundError(key) from None

    def get_into(self, key: str, buf: memoryview, start: int = 0) -> int:
        try:
            with open(self._path(key), "rb", buffering=0) as f:
                f.seek(start)
                done = 0
                while done < len(buf):
                    n = f.readinto(buf[done:])
                    if not n:
                        break
                    done += n
                return done
        except FileNotFoundError:
            raise ObjectNotFoundError(key) from None

    def _write_temp(self, data: Buffer) -> Path:
        tmp = self.root / _TMP_DIR / uuid.uuid4().hex
        with open(tmp, "wb", buffering=0) as f:
            view = memoryview(data).cast("B")
            while view:
                n = f.write(view)
                view = view[n:]
            if self.fsync:
                os.fsync(f.fileno())
        return tmp

    def _fsync_dir(self, path: Path) -> None:
        if not self.fsync:
            return
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def put(self, key: str, data: Buffer) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._write_temp(data)
        os.replace(tmp, target)
        self._fsync_dir(target.parent)

    def put_if_absent(self, key: str, data: Buffer) -> bool:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._write_temp(data)
        try:
            os.link(tmp, target)
        except FileExistsError:
            return False
        except OSError as exc:  # pragma: no cover - file systems without hard links
            if exc.errno in (errno.EPERM, errno.ENOTSUP):
                raise StoreError(
                    f"{self.root} does not support hard links; exclusive create is impossible"
                ) from exc
            raise
        finally:
            tmp.unlink(missing_ok=True)
        self._fsync_dir(target.parent)
        return True

    def head(self, key: str) -> ObjectInfo | None:
        try:
            st = self._path(key).stat()
        except FileNotFoundError:
            return None
        return ObjectInfo(key, st.st_size, st.st_mtime)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        # Walk only the directory that can contain the prefix, then filter by the full prefix.
        base_dir = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self.root / base_dir if base_dir else self.root
        if not start.is_dir():
            return
        found: list[ObjectInfo] = []
        for dirpath, dirnames, filenames in os.walk(start):
            rel_dir = os.path.relpath(dirpath, self.root).replace(os.sep, "/")
            rel_dir = "" if rel_dir == "." else rel_dir + "/"
            if rel_dir == "":
                dirnames[:] = [d for d in dirnames if d != _TMP_DIR]
            for name in filenames:
                key = rel_dir + name
                if not key.startswith(prefix):
                    continue
                try:
                    st = os.stat(os.path.join(dirpath, name))
                except FileNotFoundError:
                    continue
                found.append(ObjectInfo(key, st.st_size, st.st_mtime))
        found.sort(key=lambda info: info.key)
        yield from found

    def delete_many(self, keys: Iterable[str]) -> int:
        requests = 0
        for batch in batched(keys):
            requests += 1
            for key in batch:
                try:
                    self._path(key).unlink()
                except FileNotFoundError:
                    pass
        return requests

    def now(self) -> float:
        return time.time()
