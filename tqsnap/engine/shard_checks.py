"""What makes stored shard bytes trustworthy (docs/format.md §4), as plain functions.

The shard layer (:mod:`.shards`) calls these around every read, and only it: a reference's
declared sizes are checked before anything is allocated or requested, the object's length
must be exactly the declared stored size, and the bytes are decoded (bounded by the declared
size) and hashed before a caller sees one of them. They live apart from the I/O so that each
rule reads on its own, without the threads and buffers around it.
"""

from __future__ import annotations

import zstandard

from ..errors import CorruptShardError, FormatError, ManifestError
from ..format.manifest import ShardRef
from ..format.shard import CODECS, content_hash, decode

#: The largest shard, in declared ``size`` or ``stored_size``, that this code reads or writes.
#: tqsnap cuts shards of 16 MiB by default; the limit exists so that a crafted manifest
#: declaring a terabyte is refused before anything is allocated (docs/format.md §4).
MAX_SHARD_SIZE = 2 << 30

#: No zstd frame decodes to more than this many times its own length: a block holds at most
#: 128 KiB and takes at least 4 bytes (an RLE block). A declared ``size`` beyond it is a lie.
ZSTD_MAX_EXPANSION = 32 * 1024


def check_ref(ref: ShardRef, max_shard_size: int = MAX_SHARD_SIZE) -> None:
    """Refuse a reference whose declared sizes are negative, absurd or inconsistent.

    Made before any allocation or request, so a crafted manifest cannot make a reader
    allocate more than ``max_shard_size`` per shard.
    """
    for name in ("size", "stored_size"):
        value = getattr(ref, name)
        if type(value) is not int or not 0 <= value <= max_shard_size:
            raise ManifestError(
                f"shard {ref.key!r} declares {name} {value!r:.40}: sizes must be integers from 0 to "
                f"{max_shard_size}; the manifest referencing it is damaged or crafted"
            )
    if ref.codec not in CODECS:
        raise ManifestError(f"shard {ref.key!r} has unknown codec {ref.codec!r:.40}")
    if ref.codec == "raw" and ref.size != ref.stored_size:
        raise ManifestError(
            f"raw shard {ref.key!r} declares size {ref.size} but stored_size {ref.stored_size}; "
            "for raw shards they are equal"
        )
    if ref.codec == "zstd" and ref.size > ref.stored_size * ZSTD_MAX_EXPANSION:
        raise ManifestError(
            f"zstd shard {ref.key!r} declares {ref.size} bytes from {ref.stored_size} stored: more than "
            f"zstd's {ZSTD_MAX_EXPANSION}x maximum expansion"
        )


def check_length(ref: ShardRef, got: int, longer: bool) -> None:
    """Refuse an object longer than, or shorter than (``got`` bytes), its declared stored size."""
    if longer:
        raise CorruptShardError(ref.key, ref.hash, f"an object longer than its stored_size of {ref.stored_size} bytes")
    if got != ref.stored_size:
        raise CorruptShardError(ref.key, ref.hash, f"a truncated object ({got} of {ref.stored_size} bytes)")


def decode_verified(ref: ShardRef, stored: memoryview, into: memoryview | None, verify: bool) -> memoryview:
    """Decode (into ``into`` when given) and verify; the zstd frame header is checked first.

    ``verify=False`` skips only the hash: the decoded length is always checked.
    """
    if ref.codec == "zstd":
        try:
            declared = zstandard.frame_content_size(stored)
        except zstandard.ZstdError:
            raise CorruptShardError(ref.key, ref.hash, "an object that is not a zstd frame") from None
        if declared >= 0 and declared != ref.size:
            raise CorruptShardError(ref.key, ref.hash, f"a zstd frame of {declared} bytes where {ref.size} were declared")
    try:
        data = memoryview(decode(stored, ref.codec, ref.size, out=into))
    except FormatError as exc:
        raise CorruptShardError(ref.key, ref.hash, f"undecodable ({exc})") from None
    if data.nbytes != ref.size:
        raise CorruptShardError(ref.key, ref.hash, f"{data.nbytes} decoded bytes, not {ref.size}")
    if verify:
        actual = content_hash(data)
        if actual != ref.hash:
            raise CorruptShardError(ref.key, ref.hash, actual)
    return data
