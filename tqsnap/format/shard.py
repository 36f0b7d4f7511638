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


def decode(stored: Buffer, codec: str, size: int) -> Buffer:
    """Decode a stored shard back to its ``size`` uncompressed bytes."""
    if codec == "raw":
        return stored
    if codec == "zstd":
        try:
            return zstandard.ZstdDecompressor().decompress(stored, max_output_size=size)
        except zstandard.ZstdError as exc:
            raise FormatError(f"zstd shard does not decode: {exc}") from exc
    raise FormatError(f"unknown shard codec {codec!r}; known codecs: {', '.join(CODECS)}")
