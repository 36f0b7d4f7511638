"""Writable buffers for bytes about to arrive from a store or a decoder.

``bytearray(n)`` zero-fills its memory in user space before anything is read into it: one
extra pass over every byte a reader loads. A large buffer is instead an anonymous memory
mapping, whose pages the kernel hands out already zeroed the first time they are written, so
the bytes are written once, by the read itself. Small buffers stay bytearrays: a mapping per
object would cost more system calls than it saves, and large ones keep the number of
mappings (``vm.max_map_count``, 65,530 by default) far below the limit.
"""

from __future__ import annotations

import mmap

#: Buffers of at least this many bytes are anonymous mappings.
MAPPED_MIN = 4 << 20


def writable_buffer(nbytes: int) -> memoryview:
    """A writable, zero-initialised byte buffer of ``nbytes``, kept alive by its views."""
    if nbytes >= MAPPED_MIN:
        return memoryview(mmap.mmap(-1, nbytes))
    return memoryview(bytearray(nbytes))
