"""A store on a local (or network-mounted) file system.

Objects are plain files under the root directory. ``put_if_absent`` writes a temporary file,
fsyncs it, and ``os.link``s it into place: the link fails if the key exists, and a reader can
never see a half-written object. LastModified is the file's mtime.

The store is a box (docs/security.md). A repository may come from someone else, so:

- every path below the root is walked one component at a time from a directory descriptor,
  each opened with ``O_NOFOLLOW``: a symlink anywhere below the root is refused, never
  followed, for reads, lists, writes and deletes (the root itself may be a symlink: that is
  the user's own choice);
- only regular files are objects; a directory, FIFO, socket or device named as a key is a
  typed error, and files are opened ``O_NONBLOCK`` so a FIFO cannot block the open;
- every read is bounded by the file's real size (``fstat``), never by what a caller expects;
- a listing that cannot see everything raises :class:`~tqsnap.errors.IncompleteListingError`
  instead of yielding fewer keys;
- nothing is created until the first write, so reading a mistyped path or a read-only
  medium changes nothing.
"""

from __future__ import annotations

import errno
import os
import stat
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from urllib.parse import unquote, urlparse

from ..errors import (
    AccessDeniedError,
    BucketNotFoundError,
    IncompleteListingError,
    InvalidKeyError,
    ObjectNotFoundError,
    StoreError,
    UnsafeObjectError,
)
from .base import Buffer, ObjectInfo, ObjectStore, PendingUpload, StoreSpec, batched

_TMP_DIR = ".tmp"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_MAX_SEGMENT = 255  # bytes in one file name on every common Linux file system
#: Errors of the medium rather than of the key: reported as a StoreError naming the key.
_DENIED = (errno.EACCES, errno.EPERM)


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symlink"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


class LocalStore(ObjectStore):
    """Objects as files below ``root``; temp files live in ``root/.tmp`` and are never listed.

    ``create=False`` refuses a missing root at once; with ``create=True`` (the default) the
    root and ``.tmp/`` are made by the first write, never by a read.
    """

    #: Another process on this machine (or one mounting the same file system) sees the same files.
    shareable_across_processes = True

    def __init__(self, root: str | os.PathLike[str], *, create: bool = True, fsync: bool = True) -> None:
        self.root = Path(root).expanduser().absolute()
        self.url = self.root.as_uri()
        self.fsync = fsync
        self.create = create
        if self.root.exists() and not self.root.is_dir():
            raise BucketNotFoundError(f"{self.root} is not a directory; a local repository is a directory")
        if not create and not self.root.exists():
            raise BucketNotFoundError(f"directory {self.root} does not exist; create it or pass create=True")

    def spec(self) -> StoreSpec:
        return StoreSpec(self.url, {"create": self.create, "fsync": self.fsync})

    @classmethod
    def from_spec(cls, spec: StoreSpec) -> LocalStore:
        return cls(unquote(urlparse(spec.url).path), **spec.options)

    # --- keys and paths ----------------------------------------------------------------------

    def _parts(self, key: str) -> list[str]:
        """The path segments of a legal key; anything that could leave its place is refused."""
        if not isinstance(key, str) or not key:
            raise InvalidKeyError(f"invalid store key {key!r}: keys are non-empty strings")
        bad = (
            "\x00" in key
            or "\\" in key
            or key.startswith("/")
            or any(ord(c) < 0x20 or ord(c) == 0x7F for c in key)
        )
        parts = key.split("/")
        if (
            bad
            or any(p in ("", ".", "..") for p in parts)
            or parts[0] == _TMP_DIR
            or any(len(p.encode("utf-8", "surrogateescape")) > _MAX_SEGMENT for p in parts)
        ):
            raise InvalidKeyError(
                f"refusing store key {key!r}: it is absolute, has an empty, '.', '..', NUL, "
                "backslash or control-character segment, or names the temp directory"
            )
        return parts

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*self._parts(key))

    def _fail(self, exc: OSError, key: str, action: str) -> StoreError:
        """A typed error for an OSError met while doing ``action`` on ``key``."""
        where = f"{key!r} in {self.url}"
        if exc.errno in _DENIED:
            return AccessDeniedError(f"permission denied to {action} {where}: {exc.strerror}")
        if exc.errno == errno.ELOOP:
            return UnsafeObjectError(f"refusing to {action} {where}: a path segment is a symlink")
        if exc.errno == errno.ENOSPC or exc.errno == errno.EDQUOT:
            return StoreError(f"cannot {action} {where}: the file system is full ({exc.strerror})")
        if exc.errno == errno.EROFS:
            return StoreError(f"cannot {action} {where}: the file system is read-only")
        return StoreError(f"cannot {action} {where}: {exc.strerror or exc}")

    def _open_root(self) -> int | None:
        try:
            return os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except NotADirectoryError:
            raise BucketNotFoundError(f"{self.root} is not a directory") from None

    def _open_dirs(self, parts: list[str], key: str, action: str, *, make: bool = False) -> int | None:
        """A descriptor of the directory ``parts`` below the root, every segment ``O_NOFOLLOW``.

        Returns None when a segment is missing (and ``make`` is false) or is a regular file
        (then nothing can exist below it, as on S3).
        """
        if make:
            self._make_root(key)
        fd = self._open_root()
        if fd is None:
            return None
        try:
            for part in parts:
                if make:
                    try:
                        os.mkdir(part, dir_fd=fd)
                    except FileExistsError:
                        pass
                    except OSError as exc:
                        raise self._fail(exc, key, action) from None
                try:
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except (FileNotFoundError, NotADirectoryError) as exc:
                    st = self._lstat_at(fd, part)
                    if st is not None and stat.S_ISLNK(st.st_mode):
                        raise UnsafeObjectError(
                            f"refusing to {action} {key!r} in {self.url}: {part!r} is a symlink"
                        ) from None
                    if make:
                        raise self._fail(exc, key, action) from None
                    os.close(fd)
                    return None
                except OSError as exc:
                    raise self._fail(exc, key, action) from None
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    @staticmethod
    def _lstat_at(dir_fd: int, name: str) -> os.stat_result | None:
        try:
            return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def _make_root(self, key: str) -> None:
        if self.root.is_dir():
            return
        if not self.create:
            raise BucketNotFoundError(f"directory {self.root} does not exist; create it or pass create=True")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._fail(exc, key, "create the repository directory for") from None

    # --- reads -------------------------------------------------------------------------------

    def _open_object(self, key: str) -> tuple[int, os.stat_result]:
        """An open descriptor of the regular file ``key`` and its ``fstat``."""
        parts = self._parts(key)
        parent = self._open_dirs(parts[:-1], key, "read")
        if parent is None:
            raise ObjectNotFoundError(key)
        try:
            try:
                fd = os.open(parts[-1], _READ_FLAGS, dir_fd=parent)
            except FileNotFoundError:
                raise ObjectNotFoundError(key) from None
            except OSError as exc:
                st = self._lstat_at(parent, parts[-1])  # a socket answers ENXIO, a link ELOOP
                if st is not None and not stat.S_ISREG(st.st_mode):
                    raise UnsafeObjectError(
                        f"refusing to read {key!r} in {self.url}: it is {_kind(st.st_mode)}, not a regular file"
                    ) from None
                raise self._fail(exc, key, "read") from None
        finally:
            os.close(parent)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise UnsafeObjectError(
                f"refusing to read {key!r} in {self.url}: it is {_kind(st.st_mode)}, not a regular file"
            )
        return fd, st

    def _pread(self, fd: int, key: str, buf: memoryview, start: int) -> int:
        done = 0
        while done < len(buf):
            try:
                n = os.preadv(fd, [buf[done:]], start + done)
            except OSError as exc:
                raise self._fail(exc, key, "read") from None
            if not n:
                break
            done += n
        return done

    def get(self, key: str) -> bytes:
        fd, st = self._open_object(key)
        try:
            buf = bytearray(st.st_size)
            got = self._pread(fd, key, memoryview(buf), 0)
        finally:
            os.close(fd)
        del buf[got:]  # the file shrank under us: return what it holds now, never more
        return bytes(buf)

    @staticmethod
    def _check_range(key: str, start: int, length: int) -> None:
        if start < 0 or length < 0:
            raise InvalidKeyError(f"invalid range of {key!r}: start {start}, length {length}")

    def get_range(self, key: str, start: int, length: int) -> bytes:
        self._check_range(key, start, length)
        fd, st = self._open_object(key)
        try:
            want = max(0, min(length, st.st_size - start))
            buf = bytearray(want)
            got = self._pread(fd, key, memoryview(buf), start)
        finally:
            os.close(fd)
        del buf[got:]
        return bytes(buf)

    def get_into(self, key: str, buf: memoryview, start: int = 0) -> int:
        return self.get_into_sized(key, buf, start)[0]

    def get_into_sized(self, key: str, buf: memoryview, start: int = 0) -> tuple[int, int | None]:
        self._check_range(key, start, len(buf))
        fd, st = self._open_object(key)
        try:
            want = max(0, min(len(buf), st.st_size - start))
            return self._pread(fd, key, memoryview(buf).cast("B")[:want], start), st.st_size
        finally:
            os.close(fd)

    def head(self, key: str) -> ObjectInfo | None:
        parts = self._parts(key)
        parent = self._open_dirs(parts[:-1], key, "stat")
        if parent is None:
            return None
        try:
            st = self._lstat_at(parent, parts[-1])
        except OSError as exc:
            raise self._fail(exc, key, "stat") from None
        finally:
            os.close(parent)
        if st is None:
            return None
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeObjectError(
                f"refusing {key!r} in {self.url}: it is {_kind(st.st_mode)}, not a regular file"
            )
        return ObjectInfo(key, st.st_size, st.st_mtime)

    # --- listing -----------------------------------------------------------------------------

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every regular file under ``prefix``, sorted; raises instead of skipping anything."""
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        parts = self._parts(base) if base else []
        try:
            fd = self._open_dirs(parts, prefix, "list")
        except (UnsafeObjectError, AccessDeniedError) as exc:
            raise IncompleteListingError(f"listing {prefix!r} in {self.url} is incomplete: {exc}") from None
        if fd is None:
            return
        found: list[ObjectInfo] = []
        try:
            self._walk(fd, base + "/" if base else "", prefix, found)
        finally:
            os.close(fd)
        found.sort(key=lambda info: info.key)
        yield from found

    def _walk(self, fd: int, rel: str, prefix: str, found: list[ObjectInfo]) -> None:
        """Collect the files below directory ``fd`` (key prefix ``rel``) whose keys match."""

        def incomplete(what: str) -> IncompleteListingError:
            return IncompleteListingError(
                f"listing {prefix!r} in {self.url} is incomplete: {what}. Nothing was read as "
                "absent; fix the repository (or its permissions) and retry"
            )

        names: list[tuple[str, os.stat_result]] = []
        try:
            with os.scandir(fd) as entries:
                for entry in entries:
                    try:
                        names.append((entry.name, entry.stat(follow_symlinks=False)))
                    except FileNotFoundError:
                        continue  # deleted between the read of the directory and the stat
        except FileNotFoundError:
            return  # the directory was removed while we walked: it held nothing then
        except OSError as exc:
            raise incomplete(f"directory {rel or '/'!r} cannot be read ({exc.strerror})") from None
        for name, st in names:
            key = rel + name
            if not rel and name == _TMP_DIR:
                continue
            if stat.S_ISDIR(st.st_mode):
                sub = key + "/"
                if not (sub.startswith(prefix) or prefix.startswith(sub)):
                    continue
                try:
                    child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    raise incomplete(f"directory {key!r} cannot be opened ({exc.strerror})") from None
                try:
                    self._walk(child, sub, prefix, found)
                finally:
                    os.close(child)
            elif not key.startswith(prefix):
                continue
            elif stat.S_ISREG(st.st_mode):
                found.append(ObjectInfo(key, st.st_size, st.st_mtime))
            else:
                raise incomplete(f"{key!r} is {_kind(st.st_mode)}, which a store never holds")

    # --- writes ------------------------------------------------------------------------------

    def _write_temp(self, data: Buffer, key: str) -> tuple[int, str]:
        """Write ``data`` to a new file in ``.tmp/``; return (descriptor of .tmp, file name)."""
        tmp_dir = self._open_dirs([_TMP_DIR], key, "write", make=True)
        assert tmp_dir is not None
        name = uuid.uuid4().hex
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                         dir_fd=tmp_dir)
        except OSError as exc:
            os.close(tmp_dir)
            raise self._fail(exc, key, "write") from None
        try:
            view = memoryview(data).cast("B")
            while view:
                n = os.write(fd, view)
                view = view[n:]
            if self.fsync:
                os.fsync(fd)
        except OSError as exc:
            self._remove_temp(tmp_dir, name)
            raise self._fail(exc, key, "write") from None
        except BaseException:
            self._remove_temp(tmp_dir, name)
            raise
        finally:
            os.close(fd)
        return tmp_dir, name

    @staticmethod
    def _remove_temp(tmp_dir: int, name: str) -> None:
        try:
            os.unlink(name, dir_fd=tmp_dir)
        except OSError:
            pass

    def _fsync_dir(self, fd: int) -> None:
        if self.fsync:
            os.fsync(fd)

    def _store(self, key: str, data: Buffer, *, exclusive: bool) -> bool:
        parts = self._parts(key)
        tmp_dir, name = self._write_temp(data, key)  # first: a failed write leaves no directories
        try:
            parent = self._open_dirs(parts[:-1], key, "write", make=True)
        except BaseException:
            self._remove_temp(tmp_dir, name)
            os.close(tmp_dir)
            raise
        assert parent is not None
        try:
            try:
                if exclusive:
                    os.link(name, parts[-1], src_dir_fd=tmp_dir, dst_dir_fd=parent, follow_symlinks=False)
                else:
                    st = self._lstat_at(parent, parts[-1])
                    if st is not None and not stat.S_ISREG(st.st_mode):
                        raise UnsafeObjectError(
                            f"refusing to overwrite {key!r} in {self.url}: it is {_kind(st.st_mode)}"
                        )
                    os.replace(name, parts[-1], src_dir_fd=tmp_dir, dst_dir_fd=parent)
            except FileExistsError:
                return False
            except OSError as exc:
                if exc.errno in (errno.EPERM, errno.ENOTSUP) and exclusive:
                    raise StoreError(
                        f"{self.root} does not support hard links; exclusive create of {key!r} is impossible"
                    ) from exc
                raise self._fail(exc, key, "write") from None
            finally:
                self._remove_temp(tmp_dir, name)
                os.close(tmp_dir)
            self._fsync_dir(parent)
            return True
        finally:
            os.close(parent)

    def put(self, key: str, data: Buffer) -> None:
        self._store(key, data, exclusive=False)

    def put_if_absent(self, key: str, data: Buffer) -> bool:
        return self._store(key, data, exclusive=True)

    def delete_many(self, keys: Iterable[str]) -> int:
        """Unlink regular files only; a symlink, directory or special file is refused."""
        requests = 0
        for batch in batched(keys):
            requests += 1
            for key in batch:
                self._delete(key)
        return requests

    def _delete(self, key: str) -> None:
        parts = self._parts(key)
        parent = self._open_dirs(parts[:-1], key, "delete")
        if parent is None:
            return
        try:
            st = self._lstat_at(parent, parts[-1])
            if st is None:
                return
            if not stat.S_ISREG(st.st_mode):
                raise UnsafeObjectError(
                    f"refusing to delete {key!r} in {self.url}: it is {_kind(st.st_mode)}"
                )
            os.unlink(parts[-1], dir_fd=parent)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise self._fail(exc, key, "delete") from None
        finally:
            os.close(parent)

    # --- local temporaries: this store's incomplete uploads ------------------------------------

    def list_uploads(self, prefix: str = "") -> Iterator[PendingUpload]:
        """Files in ``.tmp/``: writes that never became objects (a killed or failed save).

        A temp file is the local form of an incomplete multipart upload, so gc treats both
        alike: it removes those older than its grace period. Keys are ``.tmp/<name>``.
        """
        tmp_dir = self._open_dirs([_TMP_DIR], _TMP_DIR, "list")
        if tmp_dir is None:
            return iter(())
        out: list[PendingUpload] = []
        try:
            with os.scandir(tmp_dir) as entries:
                for e in entries:
                    key = f"{_TMP_DIR}/{e.name}"
                    try:
                        st = e.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue  # a write that finished (or was removed) meanwhile
                    if stat.S_ISREG(st.st_mode) and key.startswith(prefix):
                        out.append(PendingUpload(key, e.name, st.st_mtime))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise IncompleteListingError(
                f"listing {_TMP_DIR!r} in {self.url} is incomplete: {exc.strerror}"
            ) from None
        finally:
            os.close(tmp_dir)
        return iter(sorted(out, key=lambda u: u.key))

    def abort_upload(self, upload: PendingUpload) -> None:
        """Remove one temp file (a regular file directly in ``.tmp/``); one already gone is fine."""
        name = upload.upload_id
        if upload.key != f"{_TMP_DIR}/{name}" or "/" in name or name in ("", ".", ".."):
            raise InvalidKeyError(f"{upload.key!r} is not a temporary file of {self.url}")
        tmp_dir = self._open_dirs([_TMP_DIR], upload.key, "delete")
        if tmp_dir is None:
            return
        try:
            st = self._lstat_at(tmp_dir, name)
            if st is None:
                return
            if not stat.S_ISREG(st.st_mode):
                raise UnsafeObjectError(f"refusing to delete {upload.key!r} in {self.url}: it is {_kind(st.st_mode)}")
            os.unlink(name, dir_fd=tmp_dir)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise self._fail(exc, upload.key, "delete") from None
        finally:
            os.close(tmp_dir)

    def now(self) -> float:
        return time.time()
