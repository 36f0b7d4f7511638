"""The columnar body of a manifest (docs/format.md, section 6.1): encoding.

A JSON body costs about 60 us of CPU and 1.9 KB of memory per item to load (strict parsing, one
Python object per field), so a snapshot of a million tensor chunks took a minute and 1.8 GiB to
open. The columnar body stores the same item table as typed little-endian columns, which a
reader checks with a few array operations and turns into ``Item`` objects only when asked
(:mod:`.body_columnar_read`). Writers use it above a threshold of items; small snapshots keep
the JSON body that every 1.x reader knows.

numpy does the array work: it is a well-kept, ubiquitous library (torch needs it anyway), its
``frombuffer`` views columns without copying them, and its comparisons run at C speed.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import FormatError
from . import typed_json

if TYPE_CHECKING:
    import numpy as np

#: First bytes of a columnar body shard: a JSON body starts with ``{`` and never with these.
MAGIC = b"TQSNCOL1"
#: The value of the manifest's ``body_format`` (format 2.0) and of the header's.
BODY_FORMAT = "columnar/1"
#: The header (JSON) after the magic and its 4-byte length is at most this long.
MAX_HEADER_BYTES = 1 << 20
#: Columnar limits (docs/format.md 2.3): the body shard, items, extents of all items together.
MAX_COLUMNAR_BODY_BYTES = 1 << 30
MAX_COLUMNAR_ITEMS = 10_000_000
MAX_COLUMNAR_EXTENTS = 1 << 24
#: One extent never exceeds one shard, and no shard exceeds 2 GiB (docs/format.md section 4);
#: with at most 2^24 extents their total stays below 2^55, so 64-bit sums cannot wrap.
MAX_EXTENT_LENGTH = 1 << 31
#: Dictionary columns (kind, dtype) hold one byte per row.
MAX_DICTIONARY = 256
FLAG_SHAPE = 1
FLAG_HASH = 2


@dataclass(frozen=True)
class Column:
    """One column of the layout: its name, its numpy element type (None: raw bytes), and what
    its length in elements is, from the header's counts (``n`` items, ``e`` extents, ``d``
    shape dimensions; None: given by the last value of the offsets column named)."""

    name: str
    dtype: str | None
    rows: str


#: The columns of ``columnar/1``, in the order the writer lays them out.
COLUMNS: tuple[Column, ...] = (
    Column("path_offsets", "<u4", "n+1"),
    Column("path_data", None, "path_offsets"),
    Column("path_sort", "<u4", "n"),
    Column("kind", "u1", "n"),
    Column("dtype", "u1", "n"),
    Column("flags", "u1", "n"),
    Column("size", "<u8", "n"),
    Column("shape_offsets", "<u4", "n+1"),
    Column("shape_dims", "<u8", "d"),
    Column("extent_offsets", "<u4", "n+1"),
    Column("extent_shard", "<u4", "e"),
    Column("extent_offset", "<u8", "e"),
    Column("extent_length", "<u8", "e"),
    Column("hash", "V16", "n"),
    Column("meta_offsets", "<u4", "n+1"),
    Column("meta_data", None, "meta_offsets"),
    Column("extra", None, "any"),
)


def _offsets(lengths: Sequence[int], what: str) -> np.ndarray:
    import numpy as np  # imported on first use: `import tqsnap` stays light
    out = np.zeros(len(lengths) + 1, dtype=np.uint64)
    np.cumsum(np.asarray(lengths, dtype=np.uint64), out=out[1:])
    if out[-1] > 0xFFFFFFFF:
        raise FormatError(f"a columnar body: the {what} column would exceed 4 GiB")
    return out.astype("<u4")


def _dictionary(values: list[Any], what: str) -> tuple[list[Any], np.ndarray]:
    import numpy as np
    table = list(dict.fromkeys(values))
    if len(table) > MAX_DICTIONARY:
        raise FormatError(f"a columnar body holds {len(table)} distinct {what} values, more than {MAX_DICTIONARY}")
    code = {v: i for i, v in enumerate(table)}
    return table, np.fromiter((code[v] for v in values), dtype=np.uint8, count=len(values))


@dataclass
class Columns:
    """A body's columns before layout: the header's counts and dictionaries, each column's bytes."""

    n: int
    e: int
    d: int
    kinds: list[Any]
    dtypes: list[Any]
    data: dict[str, bytes]


def encode_columnar(items: Sequence[Any], extra: dict[str, Any], where: str = "a snapshot body") -> bytes:
    """``items`` (``Item`` objects) and ``extra`` as a ``columnar/1`` body shard payload.

    Refuses (``FormatError``, nothing written) what a reader would refuse: two items with one
    path, a path that is not Unicode, an extent longer than a shard can be, too many items.
    """
    return assemble(build_columns(items, extra, where))


def build_columns(items: Sequence[Any], extra: dict[str, Any], where: str = "a snapshot body") -> Columns:
    """The columns of ``items`` (see :func:`encode_columnar`), before :func:`assemble` lays them out."""
    import numpy as np
    n = len(items)
    if n > MAX_COLUMNAR_ITEMS:
        raise FormatError(f"{where} has {n} items, more than the {MAX_COLUMNAR_ITEMS} a columnar body holds")
    try:
        paths = [it.path.encode("utf-8") for it in items]
    except UnicodeEncodeError:
        raise FormatError(f"{where}: an item path holds a lone surrogate, which is not Unicode") from None
    order = sorted(range(n), key=paths.__getitem__)
    for a, b in zip(order, order[1:], strict=False):
        if paths[a] == paths[b]:
            raise FormatError(f"{where} lists item {items[a].path!r:.200} twice")
    kinds, kind_codes = _dictionary([it.kind for it in items], "kind")
    dtypes, dtype_codes = _dictionary([it.dtype for it in items], "dtype")
    flags = np.fromiter(
        ((it.shape is not None) * FLAG_SHAPE | (it.hash is not None) * FLAG_HASH for it in items), np.uint8, n
    )
    shapes = [it.shape or [] for it in items]
    extents = [it.extents for it in items]
    lengths = [e.length for ext in extents for e in ext]
    if lengths and max(lengths) > MAX_EXTENT_LENGTH:
        raise FormatError(f"{where}: an extent is longer than {MAX_EXTENT_LENGTH} bytes, more than a shard holds")
    metas = [typed_json.portable_dumps(it.meta, where) if it.meta else b"" for it in items]
    try:
        hashes = b"".join(bytes.fromhex(it.hash) if it.hash is not None else bytes(16) for it in items)
    except ValueError:
        raise FormatError(f"{where}: an item hash is not 32 hex digits") from None
    data: dict[str, bytes] = {
        "path_offsets": _offsets([len(p) for p in paths], "path").tobytes(),
        "path_data": b"".join(paths),
        "path_sort": np.asarray(order, dtype="<u4").tobytes(),
        "kind": kind_codes.tobytes(),
        "dtype": dtype_codes.tobytes(),
        "flags": flags.tobytes(),
        "size": np.fromiter((it.size for it in items), "<u8", n).tobytes(),
        "shape_offsets": _offsets([len(s) for s in shapes], "shape").tobytes(),
        "shape_dims": np.asarray([d for s in shapes for d in s], dtype="<u8").tobytes(),
        "extent_offsets": _offsets([len(x) for x in extents], "extent").tobytes(),
        "extent_shard": np.asarray([e.shard for ext in extents for e in ext], dtype="<u4").tobytes(),
        "extent_offset": np.asarray([e.offset for ext in extents for e in ext], dtype="<u8").tobytes(),
        "extent_length": np.asarray(lengths, dtype="<u8").tobytes(),
        "hash": hashes,
        "meta_offsets": _offsets([len(m) for m in metas], "meta").tobytes(),
        "meta_data": b"".join(metas),
        "extra": typed_json.portable_dumps(extra, where),
    }
    if len(lengths) > MAX_COLUMNAR_EXTENTS:
        raise FormatError(f"{where} has {len(lengths)} extents, more than {MAX_COLUMNAR_EXTENTS}")
    return Columns(n, len(lengths), sum(len(s) for s in shapes), kinds, dtypes, data)


def _align8(n: int) -> int:
    return (n + 7) & ~7


def assemble(cols: Columns) -> bytes:
    """Lay out magic, header and columns (each column starts at a multiple of 8, zero padded).

    The header's byte length is fixed before the column offsets are known by writing it with
    the offsets of a first pass, then again: offsets are absolute, and a longer header would
    move the columns, so the loop runs until the header stops changing length (twice at most
    in practice; bounded at 8 rounds).
    """
    data = cols.data
    header_len = 0
    for _ in range(8):
        pos = _align8(len(MAGIC) + 4 + header_len)
        spans: dict[str, list[int]] = {}
        for col in COLUMNS:
            spans[col.name] = [pos, len(data[col.name])]
            pos = _align8(pos + len(data[col.name]))
        header = json.dumps(
            {"body_format": BODY_FORMAT, "items": cols.n, "extents": cols.e, "shape_dims": cols.d,
             "kinds": cols.kinds, "dtypes": cols.dtypes, "columns": spans},
            separators=(",", ":"), ensure_ascii=False,
        ).encode("utf-8")
        if len(header) == header_len:
            break
        header_len = len(header)
    else:  # pragma: no cover - the header length converges after two rounds
        raise FormatError("a columnar body header did not settle")
    if header_len > MAX_HEADER_BYTES:
        raise FormatError(f"a columnar body header of {header_len} bytes exceeds {MAX_HEADER_BYTES}")
    out = bytearray(MAGIC + struct.pack("<I", header_len) + header)
    for col in COLUMNS:
        out += bytes(spans[col.name][0] - len(out))
        out += data[col.name]
    return bytes(out)
