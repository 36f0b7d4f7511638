"""Strict reading of the JSON objects tqsnap keeps in a store, within documented limits.

A repository may be shared, so every manifest, body, tombstone, tag and ``tqsnap.json`` is
untrusted input. The standard :mod:`json` module is used (no other parser is needed), but
with hooks that refuse what it would otherwise accept: ``NaN``/``Infinity`` and numbers that
overflow to infinity, duplicate object keys, nesting deeper than :data:`MAX_DEPTH`, and
documents longer than their limit. The field readers below then refuse wrong JSON types
instead of coercing them (``"1"``, ``1.9`` and ``true`` are not seqs: ``bool`` is an ``int``
subclass, so it is checked by exact type), and bound every number before it is used as a
size, a count or a time.

Every failure is a :class:`~tqsnap.errors.ManifestError` whose message names the object key.
The limits are part of the format (docs/format.md, "Limits"); a reader refuses more, it never
allocates for it.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from ..errors import ManifestError

#: A manifest object (the commit) is at most this long; larger bodies live in a body shard.
MAX_MANIFEST_BYTES = 64 << 20
#: A body shard (items + extra) decodes to at most this many bytes.
MAX_BODY_BYTES = 64 << 20
#: Tombstones, tags and ``tqsnap.json`` are small fixed objects.
MAX_SMALL_DOC_BYTES = 1 << 20
#: Arrays and objects nest at most this deep anywhere in a document.
MAX_DEPTH = 128
#: Items and shards one snapshot may list, and extents one item may have.
MAX_ITEMS = 1_000_000
MAX_SHARDS = 1_000_000
MAX_EXTENTS = 1_000_000
#: JSON values (arrays, objects and array/object members) one document may hold. Bytes alone do
#: not bound memory: ``[[],[],...]`` costs ~64 bytes of Python objects per 3 bytes of JSON. At
#: this count the worst document stays under about 600 MB of parsed objects.
MAX_JSON_VALUES = 8_000_000
#: The largest byte count (object size, offset, length) a reader accepts: 256 TiB.
MAX_BYTES = 1 << 48
#: The largest seq: the key layout has 20 decimal digits.
MAX_SEQ = 10**20 - 1
#: Times are epoch seconds; anything past the year 5000 is a crafted value, not a clock.
MAX_TIME = 1e11
#: Strings a reader keeps (kinds, ids, paths, reasons) are at most this many characters.
MAX_STRING = 64 * 1024

_ASCII_DIGITS = re.compile(r"[0-9]+", re.ASCII)


class _Refused(ValueError):
    """Raised from inside a json hook; turned into a ManifestError naming the key."""


def _no_constants(name: str) -> Any:
    raise _Refused(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"number {text[:40]} overflows a float")
    return value


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise _Refused(f"object key {dup!r:.80} appears twice")
    return out


def load_json(data: bytes | bytearray | memoryview, key: str, what: str, *, max_bytes: int) -> Any:
    """Parse ``data`` strictly; ``what`` ("manifest", "tag", ...) and ``key`` name it in errors."""
    size = memoryview(data).nbytes
    if size > max_bytes:
        raise ManifestError(
            f"{what} {key!r} is larger than the {max_bytes}-byte limit for a {what}; it was not parsed"
        )
    data = bytes(data)
    # An upper bound on the values the parser would create, counted at C speed before it runs
    # (brackets and commas inside strings only make the bound looser, never unsafe).
    values = data.count(b",") + data.count(b"[") + data.count(b"{")
    if values > MAX_JSON_VALUES:
        raise ManifestError(
            f"{what} {key!r} holds up to {values} JSON values, more than the limit of "
            f"{MAX_JSON_VALUES}; it was not parsed"
        )
    try:
        doc = json.loads(
            data,
            parse_constant=_no_constants,
            parse_float=_finite_float,
            object_pairs_hook=_no_duplicates,
        )
    except RecursionError:
        raise ManifestError(f"{what} {key!r} nests deeper than {MAX_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{what} {key!r} is not valid JSON: {exc}") from None
    check_depth(doc, key, what)
    return doc


def check_depth(doc: Any, key: str, what: str, limit: int = MAX_DEPTH) -> None:
    """Refuse documents nested deeper than ``limit``, without recursing (so never RecursionError)."""
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > limit:
            raise ManifestError(f"{what} {key!r} nests deeper than {limit} levels")
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))


# --- field readers -----------------------------------------------------------------------------


def _where(key: str, what: str, field: str) -> str:
    return f"{what} {key!r}: field {field!r}"


def obj(doc: Any, key: str, what: str, field: str = "") -> dict[str, Any]:
    if type(doc) is not dict:
        name = f"{what} {key!r}" + (f": field {field!r}" if field else "")
        raise ManifestError(f"{name} must be a JSON object, not {_type(doc)}")
    return doc


def _type(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "an array", dict: "an object", type(None): "null"}.get(type(value), type(value).__name__)


def _get(doc: dict[str, Any], field: str, key: str, what: str) -> Any:
    if field not in doc:
        raise ManifestError(f"{what} {key!r} has no field {field!r}")
    return doc[field]


def integer(doc: dict[str, Any], field: str, key: str, what: str, *, lo: int = 0, hi: int = MAX_BYTES) -> int:
    """An exact JSON integer (never a bool, float or string) within ``[lo, hi]``."""
    return check_int(_get(doc, field, key, what), _where(key, what, field), lo=lo, hi=hi)


def check_int(value: Any, where: str, *, lo: int = 0, hi: int = MAX_BYTES) -> int:
    if type(value) is not int:
        raise ManifestError(f"{where} must be an integer, not {_type(value)} {value!r:.40}")
    if not lo <= value <= hi:
        raise ManifestError(f"{where} is {str(value)[:40]}, outside [{lo}, {hi}]")
    return value


def timestamp(doc: dict[str, Any], field: str, key: str, what: str) -> float:
    """Epoch seconds: a finite JSON number in ``[0, MAX_TIME]``."""
    value = _get(doc, field, key, what)
    if type(value) not in (int, float):
        raise ManifestError(f"{_where(key, what, field)} must be a number, not {_type(value)}")
    if not 0 <= value <= MAX_TIME:  # also false for NaN
        raise ManifestError(f"{_where(key, what, field)} is {value!r:.40}, not a plausible time")
    return float(value)


def seconds(doc: dict[str, Any], field: str, key: str, what: str, *, hi: float) -> float:
    """A duration: a finite, non-negative JSON number at most ``hi``."""
    value = _get(doc, field, key, what)
    if type(value) not in (int, float):
        raise ManifestError(f"{_where(key, what, field)} must be a number, not {_type(value)}")
    if not 0 <= value <= hi:  # also false for NaN
        raise ManifestError(f"{_where(key, what, field)} is {value!r:.40}, outside [0, {hi:g}] seconds")
    return float(value)


def string(doc: dict[str, Any], field: str, key: str, what: str, *, default: str | None = None,
           max_len: int = MAX_STRING) -> str:
    if field not in doc and default is not None:
        return default
    value = _get(doc, field, key, what)
    if type(value) is not str:
        raise ManifestError(f"{_where(key, what, field)} must be a string, not {_type(value)}")
    if len(value) > max_len:
        raise ManifestError(f"{_where(key, what, field)} is longer than {max_len} characters")
    return value


def optional_string(doc: dict[str, Any], field: str, key: str, what: str) -> str | None:
    if doc.get(field) is None:
        return None
    return string(doc, field, key, what)


def mapping(doc: dict[str, Any], field: str, key: str, what: str) -> dict[str, Any]:
    """An optional JSON object field (absent or null reads as empty)."""
    value = doc.get(field)
    if value is None:
        return {}
    return obj(value, key, what, field)


def array(doc: dict[str, Any], field: str, key: str, what: str, *, max_len: int,
          default: list[Any] | None = None) -> list[Any]:
    if field not in doc and default is not None:
        return default
    value = _get(doc, field, key, what)
    if type(value) is not list:
        raise ManifestError(f"{_where(key, what, field)} must be an array, not {_type(value)}")
    if len(value) > max_len:
        raise ManifestError(f"{_where(key, what, field)} has {len(value)} entries, more than {max_len}")
    return value


def ascii_digits(text: str) -> bool:
    """True for one or more ASCII digits only (``str.isdigit`` also takes '²' and '٩')."""
    return _ASCII_DIGITS.fullmatch(text) is not None
