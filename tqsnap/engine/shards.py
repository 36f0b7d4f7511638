"""The shard layer: the only code that turns shard bytes into store requests and back.

Everything above it (packer, writer, reader, copy, verify, the DCP and TransferQueue adapters)
hands it :class:`~tqsnap.format.manifest.ShardRef` s and buffers; everything below it is an
:class:`~tqsnap.store.base.ObjectStore` moving opaque bytes. Keeping the rules of
docs/format.md §4 in one object means each is written, and each safety check made, once:

- **Fresh keys.** Every upload goes to ``shard_key(hash, <new upload id>, codec)``; the upload
  id is drawn in :func:`_fresh_ref` and nowhere else (why: docs/protocol.md, gc safety).
- **Reading.** Check the declared sizes before allocating anything, read exactly the stored
  size and refuse an object that is shorter or longer, decode (bounded by the declared size),
  compare the xxh3-128 with the name, and only then hand out a byte.
- **Zero copy.** A raw shard can be read straight into a caller's buffer (a destination
  tensor); large buffers are anonymous mappings (:mod:`tqsnap.store.buffers`); large shards
  are read as parallel ranged GETs.
- **Bounded memory.** :meth:`Shards.get_many` fetches many shards in parallel while keeping
  at most about ``window_bytes`` in flight.

A :class:`Shards` pickles as its store's spec and settings, so it can be sent to a Ray actor
or a DCP rank and reopened there. The checks themselves are in :mod:`.shard_checks`, the
bounded parallel runner in :mod:`.shard_window`, and extent renumbering in :mod:`.shard_table`.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import Generator, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from ..errors import FormatError, MissingShardError, ObjectNotFoundError
from ..format.keys import shard_key
from ..format.manifest import ShardRef
from ..format.shard import CODECS, content_hash_parts, encode
from ..store.base import Buffer, ObjectStore
from ..store.buffers import writable_buffer
from . import progress
from .shard_checks import MAX_SHARD_SIZE, check_length, check_ref, decode_verified
from .shard_window import windowed

log = logging.getLogger(__name__)

K = TypeVar("K")
MiB = 1 << 20


@dataclass(frozen=True)
class EncodedShard:
    """A shard ready to upload: its reference (fresh key included) and the bytes to store.

    ``owned`` is True when ``payload`` was allocated by encoding (a compressed copy) rather
    than being the caller's own buffer; packers count owned bytes against their memory budget.
    """

    ref: ShardRef
    payload: Buffer
    owned: bool


def _fresh_ref(digest: str, size: int, stored_size: int, codec: str) -> ShardRef:
    """A reference at a key no upload has used: the one place an upload id is drawn.

    Two uploads of the same bytes land at two keys, so gc never deletes a key that a writer
    may be re-uploading at that moment (docs/protocol.md).
    """
    return ShardRef(shard_key(digest, secrets.token_hex(8), codec), digest, size, stored_size, codec)


def _byte_view(buf: Buffer) -> memoryview:
    view = memoryview(buf)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


class Shards:
    """Shard I/O over one store: put, adopt, get, get_many. Safe to use from many threads.

    Args:
        store: where the shard objects live.
        threads: parallel requests of :meth:`get_many` (and ranged reads per big shard);
            0 runs every request in the calling thread, in order (deterministic simulations).
        range_size: shards stored larger than this are read as parallel ranges of this size.
        zstd_level: compression level of :meth:`encode`.
        max_shard_size: declared sizes above this are refused (see :data:`MAX_SHARD_SIZE`).
    """

    def __init__(
        self,
        store: ObjectStore,
        *,
        threads: int = 16,
        range_size: int = 32 * MiB,
        zstd_level: int = 1,
        max_shard_size: int = MAX_SHARD_SIZE,
    ) -> None:
        self.store = store
        self.threads = max(0, int(threads))
        self.range_size = max(1, int(range_size))
        self.zstd_level = zstd_level
        self.max_shard_size = int(max_shard_size)

    def __repr__(self) -> str:
        return f"Shards({self.store!r})"

    # --- writing -----------------------------------------------------------------------------

    def encode(
        self, parts: Sequence[Buffer], codec: str, *, digest: str | None = None, level: int | None = None
    ) -> EncodedShard:
        """Hash (unless ``digest`` is given), encode and name one shard; nothing is uploaded.

        ``parts`` are concatenated; a single part is not copied for the raw codec. A
        compressed shard that would not be smaller is stored raw. ``level`` overrides
        :attr:`zstd_level`.
        """
        if codec not in CODECS:
            raise FormatError(f"unknown shard codec {codec!r}; known codecs: {', '.join(CODECS)}")
        views = [_byte_view(p) for p in parts]
        size = sum(v.nbytes for v in views)
        if size > self.max_shard_size:
            raise ValueError(
                f"a shard of {size} bytes exceeds the {self.max_shard_size}-byte limit readers accept; "
                "cut smaller shards (PackOptions.chunk_size)"
            )
        digest = digest or content_hash_parts(views)
        body: Buffer = views[0] if len(views) == 1 else b"".join(views)
        stored = encode(body, codec, self.zstd_level if level is None else level)
        stored_size = memoryview(stored).nbytes
        if codec != "raw" and stored_size >= size:  # incompressible: keep it raw
            codec, stored, stored_size = "raw", body, size
        owned = not (len(views) == 1 and stored is views[0])
        return EncodedShard(_fresh_ref(digest, size, stored_size, codec), stored, owned)

    def upload(self, shard: EncodedShard) -> ShardRef:
        """Store an encoded shard at its fresh key (a plain PUT: no one else writes that key)."""
        self.store.put(shard.ref.key, shard.payload)
        progress.sink().uploaded(shard.ref.stored_size)
        progress.sink().advance(shard.ref.stored_size)
        return shard.ref

    def put(self, parts: Sequence[Buffer], codec: str, *, digest: str | None = None) -> ShardRef:
        """Encode and upload one shard; return its reference."""
        return self.upload(self.encode(parts, codec, digest=digest))

    def adopt(self, source: Shards, ref: ShardRef, *, snapshot: str = "") -> ShardRef:
        """Copy ``ref`` from ``source`` (another repository) to a fresh key here.

        The stored bytes are verified (decoded and hashed) before they are uploaded, so a
        damaged shard is never spread; they are uploaded as stored, without re-encoding.
        """
        return self._adopt(source, ref, snapshot, None)

    def adopt_many(
        self,
        source: Shards,
        refs: Mapping[K, ShardRef] | Iterable[tuple[K, ShardRef]],
        *,
        window_bytes: int = 256 * MiB,
        snapshot: str = "",
    ) -> Iterator[tuple[K, ShardRef]]:
        """:meth:`adopt` for many shards in parallel, in the given order, bounded by ``window_bytes``."""
        pairs = list(refs.items()) if isinstance(refs, Mapping) else list(refs)

        def one(_key: K, ref: ShardRef, ranges: ThreadPoolExecutor | None) -> ShardRef:
            return self._adopt(source, ref, snapshot, ranges)

        return windowed(pairs, one, threads=self.threads, window_bytes=window_bytes, return_exceptions=False)

    def _adopt(self, source: Shards, ref: ShardRef, snapshot: str, ranges: ThreadPoolExecutor | None) -> ShardRef:
        stored = source._read_stored(ref, snapshot, ranges)
        decode_verified(ref, stored, None, verify=True)
        new = _fresh_ref(ref.hash, ref.size, ref.stored_size, ref.codec)
        self.store.put(new.key, stored)
        progress.sink().uploaded(ref.stored_size)
        return new

    # --- reading -----------------------------------------------------------------------------

    def check_ref(self, ref: ShardRef) -> None:
        """Refuse a reference whose declared sizes are negative, absurd or inconsistent
        (:func:`.shard_checks.check_ref`, with this layer's :attr:`max_shard_size`)."""
        check_ref(ref, self.max_shard_size)

    def get(
        self, ref: ShardRef, into: memoryview | None = None, *, verify: bool = True, snapshot: str = ""
    ) -> memoryview:
        """One shard's uncompressed bytes, checked (docs/format.md §4).

        With ``into`` (a writable buffer of exactly ``ref.size`` bytes), the bytes land there
        and ``into`` is returned: a raw shard is read straight into it, with no other buffer.
        ``verify=False`` skips only the hash; sizes and decoding are always checked.
        """
        big = self.threads > 0 and ref.stored_size > self.range_size
        with ThreadPoolExecutor(self.threads, "tqsnap-range") if big else contextlib.nullcontext() as ranges:
            return self._get(ref, into, verify, snapshot, ranges)

    def get_many(
        self,
        refs: Mapping[K, ShardRef] | Iterable[tuple[K, ShardRef]],
        *,
        into: Mapping[K, memoryview] | None = None,
        window_bytes: int = 256 * MiB,
        verify: bool = True,
        snapshot: str = "",
        return_exceptions: bool = False,
    ) -> Generator[tuple[K, Any], None, None]:
        """Fetch shards in parallel; yield ``(key, view)`` in the order given.

        At most about ``window_bytes`` of shards are being fetched or wait to be yielded (at
        least one shard, however large). ``into`` maps keys to caller buffers, as for
        :meth:`get`. With ``return_exceptions``, a shard that fails yields ``(key, error)``
        (a :class:`~tqsnap.errors.TqsnapError`) and the others go on; otherwise the first
        failure stops the fetch and is raised. Closing the iterator early cancels the rest.
        """
        pairs = list(refs.items()) if isinstance(refs, Mapping) else list(refs)
        targets = dict(into or {})

        def one(key: K, ref: ShardRef, ranges: ThreadPoolExecutor | None) -> memoryview:
            return self._get(ref, targets.get(key), verify, snapshot, ranges)

        return windowed(
            pairs, one, threads=self.threads, window_bytes=window_bytes, return_exceptions=return_exceptions
        )

    def _get(
        self,
        ref: ShardRef,
        into: memoryview | None,
        verify: bool,
        snapshot: str,
        ranges: ThreadPoolExecutor | None,
    ) -> memoryview:
        self.check_ref(ref)
        if into is not None:
            into = _byte_view(into)
            if into.nbytes != ref.size or into.readonly:
                raise ValueError(f"reading shard {ref.key!r} needs a writable buffer of {ref.size} bytes")
            if ref.codec == "raw":
                self._read_exact(ref, into, snapshot, ranges)
                return decode_verified(ref, into, None, verify)
        stored = self._read_stored(ref, snapshot, ranges)
        return decode_verified(ref, stored, into, verify)

    def _read_stored(self, ref: ShardRef, snapshot: str, ranges: ThreadPoolExecutor | None) -> memoryview:
        """The stored object in a buffer of ours; one byte more is asked for, to see a longer object."""
        self.check_ref(ref)
        buf = writable_buffer(ref.stored_size + 1, f"shard {ref.key!r}")
        got = self._read(ref, buf, snapshot, ranges)
        check_length(ref, got, got > ref.stored_size)
        return buf[: ref.stored_size]

    def _read_exact(self, ref: ShardRef, into: memoryview, snapshot: str, ranges: ThreadPoolExecutor | None) -> None:
        """Read a raw shard into the caller's buffer, refusing an object of any other size.

        The caller's buffer holds exactly ``stored_size`` bytes, so a longer object cannot show
        itself by filling one byte more. Stores whose reads report the object's size (S3's
        ``Content-Range`` total, ``fstat`` on disk) settle it from the same replies; for any
        other store a one-byte read past the end does.
        """
        got, sizes = self._read_sized(ref, into, snapshot, ranges)
        if sizes:
            longer = max(sizes) > ref.stored_size or min(sizes) != max(sizes)
        else:
            longer = bool(self._probe_past_end(ref, snapshot))
        check_length(ref, got, longer)

    def _probe_past_end(self, ref: ShardRef, snapshot: str) -> bytes:
        try:
            return self.store.get_range(ref.key, ref.stored_size, 1)
        except ObjectNotFoundError:
            raise MissingShardError(ref.key, snapshot) from None

    def _read(self, ref: ShardRef, buf: memoryview, snapshot: str, ranges: ThreadPoolExecutor | None) -> int:
        """Fill ``buf`` from the object's start, in parallel ranges when large; return the bytes read."""
        return self._read_sized(ref, buf, snapshot, ranges)[0]

    def _read_sized(
        self, ref: ShardRef, buf: memoryview, snapshot: str, ranges: ThreadPoolExecutor | None
    ) -> tuple[int, list[int]]:
        """:meth:`_read`, also returning every object size the store's replies reported."""
        try:
            if ranges is None or len(buf) <= self.range_size:
                parts = [self.store.get_into_sized(ref.key, buf, 0)]
            else:
                starts = range(0, len(buf), self.range_size)
                futures = [
                    ranges.submit(self.store.get_into_sized, ref.key, buf[s : s + self.range_size], s) for s in starts
                ]
                parts = [f.result() for f in futures]
        except ObjectNotFoundError:
            raise MissingShardError(ref.key, snapshot) from None
        return sum(n for n, _ in parts), [size for _, size in parts if size is not None]
