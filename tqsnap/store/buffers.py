"""Writable buffers for bytes about to arrive from a store or a decoder.

``bytearray(n)`` zero-fills its memory in user space before anything is read into it: one
extra pass over every byte a reader loads. A large buffer is instead an anonymous memory
mapping, whose pages the kernel hands out already zeroed the first time they are written, so
the bytes are written once, by the read itself. Small buffers stay bytearrays: a mapping per
object would cost more system calls than it saves, and large ones keep the number of
mappings (``vm.max_map_count``, 65,530 by default) far below the limit.
"""

from __future__ import annotations

import errno
import mmap

from ..errors import OutOfMemoryError

#: Buffers of at least this many bytes are anonymous mappings.
MAPPED_MIN = 4 << 20


def writable_buffer(nbytes: int, what: str = "a buffer") -> memoryview:
    """A writable, zero-initialised byte buffer of ``nbytes``, kept alive by its views.

    A refused allocation is an :class:`~tqsnap.errors.OutOfMemoryError` naming ``what`` (a
    shard key, an item path), so a load under a memory limit fails with a typed error.
    """
    try:
        if nbytes >= MAPPED_MIN:
            return memoryview(mmap.mmap(-1, nbytes))
        return memoryview(bytearray(nbytes))
    except MemoryError:
        raise OutOfMemoryError(f"cannot allocate {nbytes} bytes for {what}") from None
    except OSError as exc:
        if exc.errno != errno.ENOMEM:
            raise
        raise OutOfMemoryError(
            f"cannot allocate {nbytes} bytes for {what}: {exc.strerror}; free memory or raise the limit"
        ) from None
