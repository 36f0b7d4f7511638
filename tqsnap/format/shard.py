"""Shard encoding: the content hash and the per-shard codec (docs/format.md, "Shards").

A shard's name carries the xxh3-128 of its *uncompressed* bytes, so dedup works the same
whatever codec a writer picked, and a reader can verify what it decoded.
"""

from __future__ import annotations

from collections.abc import Sequence

import xxhash
import zstandard

from ..errors import FormatError
from ..store.base import Buffer
from ..store.buffers import writable_buffer

HASH_NAME = "xxh3-128"
CODECS = ("raw", "zstd")


def content_hash(data: Buffer) -> str:
    """xxh3-128 of the bytes, as 32 lowercase hex digits."""
    return xxhash.xxh3_128_hexdigest(data)


def content_hash_parts(parts: Sequence[Buffer]) -> str:
    """xxh3-128 of the concatenation of ``parts``, without concatenating them."""
    h = xxhash.xxh3_128()
    for part in parts:
        h.update(part)
    return h.hexdigest()


def encode(data: Buffer, codec: str, level: int = 1) -> Buffer:
    """Encode a shard's bytes for storage. ``raw`` returns the buffer itself (no copy)."""
    if codec == "raw":
        return data
    if codec == "zstd":
        return zstandard.ZstdCompressor(level=level).compress(data)
    raise FormatError(f"unknown shard codec {codec!r}; known codecs: {', '.join(CODECS)}")


def decode(stored: Buffer, codec: str, size: int, out: memoryview | None = None) -> Buffer:
    """Decode a stored shard back to its ``size`` uncompressed bytes.

    A zstd shard decompresses straight into a fresh writable buffer (or ``out``, a writable
    buffer of ``size`` bytes), so tensors can be built over it without a copy (read-only
    ``bytes`` would need one). Raw shards are returned as they are; ``out`` is for zstd.
    """
    if codec == "raw":
        return stored
    if codec == "zstd":
        out = writable_buffer(size, "a decoded zstd shard") if out is None else out
        try:
            reader = zstandard.ZstdDecompressor().stream_reader(stored, read_across_frames=False)
            done = 0
            while done < size:
                n = reader.readinto(out[done:])
                if not n:
                    break
                done += n
            extra = reader.read(1)  # a shard that decodes to more than ``size`` is not this shard
        except zstandard.ZstdError as exc:
            raise FormatError(f"zstd shard does not decode: {exc}") from exc
        if done != size or extra:
            raise FormatError(f"zstd shard decodes to {'more' if extra else done} bytes, not {size}")
        return out
    raise FormatError(f"unknown shard codec {codec!r}; known codecs: {', '.join(CODECS)}")
