"""Reading a columnar body (docs/format.md, section 6.1): validate it, then view it lazily.

Every check a JSON body gets per item happens here once per column, with numpy, before any
row is used: each column's length is compared with the real size of the shard (and with what
the header's counts require) before anything is allocated for it; offsets start at 0, never
decrease and end at their data; dictionary codes are below their dictionary's size; extents
name a shard of the manifest and lie inside it; extent lengths add up to item sizes; paths are
UTF-8, unique and sorted by ``path_sort``. Only then does :class:`ColumnarItems` hand out
``Item`` objects, one at a time, as callers ask for them; finding an item by path is a binary
search over ``path_sort``, not a dict of every path.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, overload

from ..errors import ManifestError
from . import strict
from .body_columnar import (
    BODY_FORMAT,
    COLUMNS,
    FLAG_HASH,
    FLAG_SHAPE,
    MAGIC,
    MAX_COLUMNAR_EXTENTS,
    MAX_COLUMNAR_ITEMS,
    MAX_DICTIONARY,
    MAX_EXTENT_LENGTH,
    MAX_HEADER_BYTES,
)
from .manifest import MAX_DIMS, Extent, Item, decode_body
from .strict import MAX_BYTES, MAX_EXTENTS

if TYPE_CHECKING:
    import numpy as np

#: Paths are at most 4096 characters, so at most 4 x 4096 UTF-8 bytes.
MAX_PATH_CHARS = 4096
#: After this many lookups by path, one dict of every path is cheaper than more binary searches.
LOOKUPS_BEFORE_INDEX = 4096
#: Items built together when iterating (bounds the Python lists one block converts).
ITER_BLOCK = 4096


class ColumnarItems(Sequence[Item]):
    """The items of a columnar body: a read-only sequence that builds each ``Item`` on access."""

    def __init__(self, data: bytes | memoryview, key: str) -> None:
        self.key = key
        self._data = data = memoryview(data).cast("B") if isinstance(data, memoryview) else data
        cols, header = _columns(data, key)
        self._n = n = header["items"]
        self._kinds, self._dtypes = header["kinds"], header["dtypes"]
        self._c = cols
        self._path_bytes = bytes(cols["path_data"])
        self._meta = _check_rows(self, cols, n)
        self.extra: dict[str, Any] = strict.obj(
            strict.load_json(bytes(cols["extra"]), key, "body shard", max_bytes=len(data)), key, "body shard", "extra"
        )
        self._index: dict[str, int] | None = None
        self._lookups = 0

    def __len__(self) -> int:
        return self._n

    @overload
    def __getitem__(self, i: int) -> Item: ...
    @overload
    def __getitem__(self, i: slice) -> list[Item]: ...
    def __getitem__(self, i: int | slice) -> Item | list[Item]:
        if isinstance(i, slice):
            return [self._item(j) for j in range(*i.indices(self._n))]
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError(i)
        return self._item(i)

    def __iter__(self) -> Iterator[Item]:
        for start in range(0, self._n, ITER_BLOCK):
            yield from self._block(start, min(self._n, start + ITER_BLOCK))

    def _block(self, a: int, b: int) -> list[Item]:
        """Items ``a .. b-1``, each column converted to Python values once per block (about 4x
        faster per item than :meth:`_item`, which indexes numpy arrays one value at a time)."""
        c, pb, kinds, dtypes = self._c, self._path_bytes, self._kinds, self._dtypes
        po = c["path_offsets"][a : b + 1].tolist()
        so = c["shape_offsets"][a : b + 1].tolist()
        eo = c["extent_offsets"][a : b + 1].tolist()
        dims = c["shape_dims"][so[0] : so[-1]].tolist()
        xs, xo, xl = (c[name][eo[0] : eo[-1]].tolist() for name in ("extent_shard", "extent_offset", "extent_length"))
        hashes = c["hash"][a:b].tobytes()
        out = []
        for j, (kind, dtype, flags, size) in enumerate(
            zip(c["kind"][a:b].tolist(), c["dtype"][a:b].tolist(), c["flags"][a:b].tolist(),
                c["size"][a:b].tolist(), strict=True)
        ):
            e0, e1 = eo[j] - eo[0], eo[j + 1] - eo[0]
            meta = self._meta.get(a + j)
            out.append(Item(
                path=pb[po[j] : po[j + 1]].decode("utf-8"),
                kind=kinds[kind],
                size=size,
                extents=[Extent(xs[k], xo[k], xl[k]) for k in range(e0, e1)],
                dtype=dtypes[dtype],
                shape=dims[so[j] - so[0] : so[j + 1] - so[0]] if flags & FLAG_SHAPE else None,
                meta=dict(meta) if meta else {},
                hash=hashes[16 * j : 16 * j + 16].hex() if flags & FLAG_HASH else None,
            ))
        return out

    def path(self, i: int) -> str:
        o = self._c["path_offsets"]
        return self._path_bytes[int(o[i]) : int(o[i + 1])].decode("utf-8")

    def _item(self, i: int) -> Item:
        c = self._c
        flags = int(c["flags"][i])
        e0, e1 = int(c["extent_offsets"][i]), int(c["extent_offsets"][i + 1])
        shape = None
        if flags & FLAG_SHAPE:
            s0, s1 = int(c["shape_offsets"][i]), int(c["shape_offsets"][i + 1])
            shape = c["shape_dims"][s0:s1].tolist()
        return Item(
            path=self.path(i),
            kind=self._kinds[c["kind"][i]],
            size=int(c["size"][i]),
            extents=list(map(Extent, c["extent_shard"][e0:e1].tolist(), c["extent_offset"][e0:e1].tolist(),
                             c["extent_length"][e0:e1].tolist())),
            dtype=self._dtypes[c["dtype"][i]],
            shape=shape,
            meta=dict(self._meta.get(i, {})),
            hash=bytes(c["hash"][i]).hex() if flags & FLAG_HASH else None,
        )

    def find(self, path: str) -> int | None:
        """The index of the item at ``path``: binary search over ``path_sort``, then one dict."""
        if self._index is not None:
            return self._index.get(path)
        self._lookups += 1
        if self._lookups > LOOKUPS_BEFORE_INDEX:
            self._index = {self.path(i): i for i in range(self._n)}
            return self._index.get(path)
        try:
            want = path.encode("utf-8")
        except UnicodeEncodeError:
            return None
        o, order, data = self._c["path_offsets"], self._c["path_sort"], self._path_bytes
        lo, hi = 0, self._n
        while lo < hi:
            mid = (lo + hi) // 2
            i = int(order[mid])
            here = data[int(o[i]) : int(o[i + 1])]
            if here < want:
                lo = mid + 1
            elif here > want:
                hi = mid
            else:
                return i
        return None

    def check_shards(self, shard_sizes: Sequence[int], key: str) -> None:
        """Refuse an extent that names no shard of the manifest or reaches past its shard's end."""
        import numpy as np  # imported on first use: `import tqsnap` stays light
        c = self._c
        shard, offset, length = c["extent_shard"], c["extent_offset"], c["extent_length"]
        if not shard.size:
            return
        if int(shard.max()) >= len(shard_sizes):
            raise ManifestError(
                f"body shard {self.key!r} of manifest {key!r}: an extent names shard {int(shard.max())}, "
                f"but the manifest lists {len(shard_sizes)} shards"
            )
        sizes = np.asarray(shard_sizes, dtype=np.uint64)
        if bool(np.any(offset + length > sizes[shard])):
            bad = int(np.argmax(offset + length > sizes[shard]))
            raise ManifestError(
                f"body shard {self.key!r} of manifest {key!r}: extent {bad} lies outside its shard"
            )


class ItemsByPath(Mapping[str, Item]):
    """``{path: Item}`` over a :class:`ColumnarItems`, without a dict of every path up front."""

    def __init__(self, items: ColumnarItems) -> None:
        self._items = items

    def __getitem__(self, path: str) -> Item:
        i = self._items.find(path) if isinstance(path, str) else None
        if i is None:
            raise KeyError(path)
        return self._items[i]

    def __contains__(self, path: object) -> bool:
        return isinstance(path, str) and self._items.find(path) is not None

    def __iter__(self) -> Iterator[str]:
        return (self._items.path(i) for i in range(len(self._items)))

    def __len__(self) -> int:
        return len(self._items)

    def values(self) -> Any:  # the sequence itself: no lookup per path
        return self._items

    def items(self) -> Any:
        return ((item.path, item) for item in self._items)


def _fail(key: str, why: str) -> ManifestError:
    return ManifestError(f"body shard {key!r} ({BODY_FORMAT}): {why}")


def _columns(data: bytes, key: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The header, checked, and a zero-copy numpy view of each column, each checked in length."""
    import numpy as np
    size = len(data)
    if size < len(MAGIC) + 4 or data[: len(MAGIC)] != MAGIC:
        raise _fail(key, f"it does not start with {MAGIC!r}")
    (header_len,) = struct.unpack_from("<I", data, len(MAGIC))
    start = len(MAGIC) + 4
    if header_len > min(MAX_HEADER_BYTES, size - start):
        raise _fail(key, f"its header claims {header_len} bytes; the shard holds {size - start} after the magic")
    what = "body shard"
    header = strict.obj(strict.load_json(data[start : start + header_len], key, what, max_bytes=MAX_HEADER_BYTES),
                        key, what)
    if header.get("body_format") != BODY_FORMAT:
        raise _fail(key, f"its header names body_format {header.get('body_format')!r:.40}")
    n = strict.integer(header, "items", key, what, hi=MAX_COLUMNAR_ITEMS)
    e = strict.integer(header, "extents", key, what, hi=MAX_COLUMNAR_EXTENTS)
    d = strict.integer(header, "shape_dims", key, what, hi=MAX_DIMS * n)
    for name in ("kinds", "dtypes"):
        table = strict.array(header, name, key, what, max_len=MAX_DICTIONARY)
        if not all(type(v) is str and len(v) <= 256 or (name == "dtypes" and v is None) for v in table):
            raise _fail(key, f"its {name} dictionary holds a value that is not a short string")
    spans = strict.obj(header.get("columns"), key, what, "columns")
    counts = {"n": n, "n+1": n + 1, "e": e, "d": d}
    buf = memoryview(data)
    cols: dict[str, np.ndarray] = {}
    for col in COLUMNS:
        span = spans.get(col.name)
        if type(span) is not list or len(span) != 2:
            raise _fail(key, f"column {col.name!r} has no [offset, length] in the header")
        off = strict.check_int(span[0], f"body shard {key!r}: column {col.name!r} offset", hi=size)
        length = strict.check_int(span[1], f"body shard {key!r}: column {col.name!r} length", hi=size)
        if off < start + header_len or off + length > size:
            raise _fail(key, f"column {col.name!r} at [{off}, {off + length}) lies outside the columns "
                             f"of this {size}-byte shard")
        if col.rows in counts:
            want = counts[col.rows] * np.dtype(col.dtype).itemsize
            if length != want:
                raise _fail(key, f"column {col.name!r} has {length} bytes, but the header's counts need {want}")
        elif col.rows != "any":
            offsets = cols[col.rows]
            if length != int(offsets[-1]):
                raise _fail(key, f"column {col.name!r} has {length} bytes, but {col.rows} ends at {int(offsets[-1])}")
        cols[col.name] = np.frombuffer(buf[off : off + length], dtype=col.dtype or "u1")
        if col.rows == "n+1":
            _check_offsets(cols[col.name], col.name, key)
    if len(header["kinds"]) == 0 and n:
        raise _fail(key, "its kinds dictionary is empty")
    header["items"] = n
    return cols, header


def _check_offsets(o: np.ndarray, name: str, key: str) -> None:
    import numpy as np
    if int(o[0]) != 0 or bool(np.any(o[1:] < o[:-1])):
        raise _fail(key, f"column {name!r} does not start at 0 and never decrease")


def _check_rows(items: ColumnarItems, c: dict[str, np.ndarray], n: int) -> dict[int, dict[str, Any]]:
    """Every per-row rule, vectorised; returns the parsed ``meta`` of the rows that have one."""
    import numpy as np
    key = items.key
    _check_paths(items, c, n)  # first: later messages name items by path
    if int(c["extent_offsets"][-1]) != c["extent_shard"].size or int(c["shape_offsets"][-1]) != c["shape_dims"].size:
        raise _fail(key, "extent_offsets or shape_offsets does not end at its column's row count")
    for name, table in (("kind", items._kinds), ("dtype", items._dtypes)):
        if n and int(c[name].max()) >= len(table):
            raise _fail(key, f"column {name!r} holds code {int(c[name].max())}; the dictionary has {len(table)}")
    flags = c["flags"]
    if bool(np.any(flags & ~np.uint8(FLAG_SHAPE | FLAG_HASH))):
        raise _fail(key, "column 'flags' sets an undefined bit")
    ndim = np.diff(c["shape_offsets"])
    if bool(np.any(ndim > MAX_DIMS)) or bool(np.any(ndim[(flags & FLAG_SHAPE) == 0])):
        raise _fail(key, f"an item has more than {MAX_DIMS} dimensions, or dimensions without a shape")
    no_hash = c["hash"][(flags & FLAG_HASH) == 0]
    if no_hash.size and bytes(no_hash.tobytes()).count(0) != no_hash.size * 16:
        raise _fail(key, "an item without a hash has non-zero bytes in column 'hash'")
    if bool(np.any(c["size"] > MAX_BYTES)) or bool(np.any(c["shape_dims"] > MAX_BYTES)):
        raise _fail(key, f"a size or shape dimension exceeds {MAX_BYTES}")
    offset, length = c["extent_offset"], c["extent_length"]
    if bool(np.any(np.diff(c["extent_offsets"]) > MAX_EXTENTS)):
        raise _fail(key, f"an item has more than {MAX_EXTENTS} extents")
    if bool(np.any(offset > MAX_BYTES)) or bool(np.any(length > MAX_EXTENT_LENGTH)):
        raise _fail(key, f"an extent offset exceeds {MAX_BYTES} or a length exceeds {MAX_EXTENT_LENGTH}")
    total = np.zeros(length.size + 1, dtype=np.uint64)
    np.cumsum(length, out=total[1:])
    eo = c["extent_offsets"].astype(np.int64)
    sums = total[eo[1:]] - total[eo[:-1]]
    if bool(np.any(sums != c["size"])):
        bad = int(np.argmax(sums != c["size"]))
        raise _fail(key, f"the extents of item {items.path(bad)!r:.200} do not add up to its size")
    meta: dict[int, dict[str, Any]] = {}
    mo = c["meta_offsets"]
    for i in np.flatnonzero(np.diff(mo)).tolist():
        text = bytes(c["meta_data"][int(mo[i]) : int(mo[i + 1])])
        meta[i] = strict.obj(strict.load_json(text, key, "body shard", max_bytes=len(text)), key, "body shard", "meta")
    return meta


def _check_paths(items: ColumnarItems, c: dict[str, np.ndarray], n: int) -> None:
    """Paths: UTF-8 cut at character boundaries, at most 4096 characters, unique and sorted."""
    import numpy as np
    key, data = items.key, c["path_data"]
    o = c["path_offsets"]
    if bool(np.any(data >= 0x80)):  # ASCII needs no decoding; anything else is checked whole
        try:
            items._path_bytes.decode("utf-8")
        except UnicodeDecodeError:
            raise _fail(key, "column 'path_data' is not UTF-8") from None
        inner = o[(o > 0) & (o < data.size)].astype(np.int64)
        if bool(np.any((data[inner] & 0xC0) == 0x80)):
            raise _fail(key, "column 'path_offsets' cuts a UTF-8 character")
    for i in np.flatnonzero(np.diff(o) > MAX_PATH_CHARS).tolist():
        if len(items.path(i)) > MAX_PATH_CHARS:
            raise _fail(key, f"item {i} has a path longer than {MAX_PATH_CHARS} characters")
    order = c["path_sort"]
    if n and (int(order.max()) >= n or bool(np.any(np.bincount(order, minlength=n) != 1))):
        raise _fail(key, "column 'path_sort' is not a permutation of the items")
    offs, pb, prev = o.tolist(), items._path_bytes, None
    for i in order.tolist():
        here = pb[offs[i] : offs[i + 1]]
        if prev is not None and here <= prev:
            what = "lists item {!r:.200} twice" if here == prev else "'path_sort' is not in path order at {!r:.200}"
            raise _fail(key, what.format(here.decode("utf-8", "replace")))
        prev = here


def decode_any_body(data: bytes | memoryview, key: str, body_format: str | None) -> tuple[Sequence[Item], dict[str, Any]]:
    """A body shard's items and ``extra``: JSON (``body_format`` None), or ``columnar/1`` as a
    lazy sequence whose columns were all checked here (the manifest's ``validate`` then checks
    its extents against the shard table)."""
    if body_format == BODY_FORMAT:
        items = ColumnarItems(data, key)
        return items, items.extra
    return decode_body(bytes(data), key)


def items_by_path(items: Sequence[Item]) -> Mapping[str, Item]:
    """``{path: Item}``: a lazy view for a columnar body, a dict otherwise."""
    if isinstance(items, ColumnarItems):
        return ItemsByPath(items)
    return {item.path: item for item in items}
