"""Zero-copy request and response bodies for the S3 store.

Uploads hand botocore a seekable read-only view of the caller's buffer; downloads read from the
socket straight into the caller's buffer. Either way a large tensor is never copied to cross the
network.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import sys
from typing import Any

from botocore.exceptions import IncompleteReadError

from .base import Buffer
from .s3_errors import _TRANSIENT_EXCEPTIONS, _describe, _Retry

logger = logging.getLogger(__name__)

_READ_CHUNK = 1 << 20

#: While a body has more than twice this much still to come, each socket read waits until this
#: much has arrived (``SO_RCVLOWAT``, Linux) instead of waking for every few KiB: on a capped or
#: distant link the bytes trickle in, and a thread woken per packet spends more CPU on the
#: wake-ups and system calls than on the bytes. The tail is read with no floor, so a read never
#: waits for bytes that will not come. A read timeout then means "less than this in the
#: timeout", not "nothing".
_READ_BATCH = 256 * 1024
_BATCH_READS = sys.platform.startswith("linux") and hasattr(socket, "SO_RCVLOWAT")

#: A quoted entity tag without quotes or spaces inside (RFC 9110), or a bare MD5 in hex.
_ETAG = re.compile(r'^(?:"[\x21\x23-\x7e]+"|[0-9a-fA-F]{32})$')
_MD5_QUOTED = re.compile(r'^"[0-9a-fA-F]*"$')


def valid_etag(etag: object) -> bool:
    """True for an ETag that can be sent back in a completion; a quoted hex one must be an MD5."""
    if not isinstance(etag, str) or not _ETAG.match(etag):
        return False
    return not _MD5_QUOTED.match(etag) or len(etag) == 34




class BufferReader:
    """A read-only, seekable file over a buffer, so botocore can send and re-send it uncopied.

    ``read`` returns ``memoryview`` slices of the caller's buffer; http.client and urllib3
    hand those straight to ``socket.sendall``. botocore needs ``seek``/``tell`` to rewind the
    body when it re-signs or re-sends a request, and ``len`` for the Content-Length header.
    """

    def __init__(self, data: Buffer) -> None:
        self._view = _byte_view(data)
        self._pos = 0

    def __len__(self) -> int:
        return len(self._view) - self._pos

    def read(self, size: int = -1) -> memoryview:
        end = len(self._view) if size is None or size < 0 else min(len(self._view), self._pos + size)
        chunk = self._view[self._pos : end]
        self._pos = max(self._pos, end)
        return chunk

    def readinto(self, buf: memoryview | bytearray) -> int:
        chunk = self.read(len(buf))
        memoryview(buf)[: len(chunk)] = chunk
        return len(chunk)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_SET:
            pos = offset
        elif whence == os.SEEK_CUR:
            pos = self._pos + offset
        elif whence == os.SEEK_END:
            pos = len(self._view) + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise ValueError("negative seek position")
        self._pos = pos
        return pos

    def tell(self) -> int:
        return self._pos

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        """Nothing to release: the buffer belongs to the caller."""

    @property
    def closed(self) -> bool:
        return False


def _byte_view(data: Buffer) -> memoryview:
    """A flat unsigned-byte view of any C-contiguous buffer, without copying it."""
    view = memoryview(data)
    if view.format == "B" and view.ndim == 1:
        return view
    if not view.c_contiguous:
        raise ValueError("buffers passed to the S3 store must be C-contiguous")
    return view.cast("B")


def _body(data: Buffer) -> bytes | BufferReader:
    return data if isinstance(data, bytes) else BufferReader(data)


def _nbytes(data: Buffer) -> int:
    return len(data) if isinstance(data, bytes | bytearray) else memoryview(data).nbytes


def _read_all(resp: dict[str, Any]) -> bytes:
    body = resp["Body"]
    try:
        data = body.read()
    except BaseException:
        body.close()
        raise
    expected = resp.get("ContentLength")
    if expected is not None and len(data) != int(expected):
        raise _Retry(IncompleteReadError(actual_bytes=len(data), expected_bytes=int(expected)))
    return data


def _read_into(resp: dict[str, Any], dest: memoryview) -> int:
    """Fill ``dest`` from a GetObject body; return how many bytes arrived before it ended or broke.

    When the body is a plain (not chunked, not encoded) HTTP response, the bytes go from the
    socket straight into ``dest`` through http.client's ``readinto``; urllib3's own
    ``readinto`` would read into a temporary object and copy. Otherwise read in chunks.
    """
    body = resp["Body"]
    raw = getattr(body, "_raw_stream", None)
    fp = getattr(raw, "_fp", None)
    direct = (
        fp is not None
        and hasattr(fp, "readinto")
        and not getattr(fp, "chunked", True)
        and getattr(raw, "_decoder", None) is None
        and (raw.headers.get("content-encoding") or "identity").strip().lower() == "identity"
    )
    done = 0
    sock = _batchable_socket(raw) if direct else None
    try:
        if direct:
            if sock is not None and len(dest) > 2 * _READ_BATCH:
                # A floor only while at least twice the floor is still to come (see _READ_BATCH).
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, _READ_BATCH)
                head = len(dest) - 2 * _READ_BATCH
                while done < head:
                    n = fp.readinto(dest[done:head])
                    if not n:
                        break
                    done += n
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
                sock = None
            while done < len(dest):
                n = fp.readinto(dest[done:])
                if not n:
                    break
                done += n
        else:
            while done < len(dest):
                chunk = body.read(min(_READ_CHUNK, len(dest) - done))
                if not chunk:
                    break
                dest[done : done + len(chunk)] = chunk
                done += len(chunk)
            if done == len(dest) and not body.read(1):
                return done  # drained: urllib3 has returned the connection to its pool
    except _TRANSIENT_EXCEPTIONS as exc:
        # Keep what arrived: the caller asks for the rest with a new ranged GET.
        logger.debug("response body broke after %d of %d bytes: %s", done, len(dest), _describe(exc))
        body.close()
        return done
    except BaseException:
        body.close()
        raise
    finally:
        if sock is not None:  # left early: never hand a connection with a floor back to the pool
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
    if direct and fp.isclosed():
        # Fully consumed: hand the connection back to urllib3's pool for reuse.
        raw.release_conn()
    elif done < len(dest) or (direct and not fp.isclosed()):
        body.close()
    return done


def _batchable_socket(raw: Any) -> socket.socket | None:
    """The TCP socket under a urllib3 response, if its reads may be batched (see _READ_BATCH)."""
    if not _BATCH_READS:
        return None
    sock = getattr(getattr(raw, "connection", None), "sock", None)
    if not isinstance(sock, socket.socket) or sock.type != socket.SOCK_STREAM:
        return None
    return sock
