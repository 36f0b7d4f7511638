"""Typed JSON: the one way tqsnap writes the three values JSON cannot say.

JSON has no non-finite floats, no tuples and no object keys other than strings. Wherever
tqsnap stores such a value inside JSON (the ``state_dict`` tree, DCP planner data,
TransferQueue tags and non-tensor values) it writes a one-key object whose key starts with
``$`` (docs/format.md, "Typed JSON values"):

- ``{"$float": "nan" | "inf" | "-inf" | number}``: a non-finite float, or (format 1.2) a finite
  float whose value is a whole number (``2.0``, ``-0.0``, ``1e300``), so that a bare JSON number
  is an int exactly when it has no fractional part, whatever parser reads it;
- ``{"$int": "decimal"}`` (format 1.2): an integer outside +-(2**53 - 1), which a parser that
  holds numbers as doubles (JavaScript, Go's ``interface{}``, jq) would round;
- ``{"$tuple": [v, ...]}``: a tuple;
- ``{"$dict": [[k, v], ...]}``: a dict whose keys are not all strings, or where a string key
  starts with ``$`` (so a plain dict can never be mistaken for a tagged value), in order.

Earlier writers spelled these three ways, and those objects are on disk, so readers accept
every spelling: ``$f``/``$t``/``$d`` (TransferQueue values) and, inside a ``state_dict`` tree
only, the untagged node names ``float``/``tuple``/``items``.

Callers walk their own values (each adapter has further tags of its own: tensors, bytes,
``torch.Size``, ...) and call these helpers for the three shared ones; a tag's body is
encoded or decoded by the caller, since a ``state_dict`` tree's children are tree nodes and
a plain value's children are plain values.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from ..errors import FormatError

FLOAT = "$float"
TUPLE = "$tuple"
DICT = "$dict"
INT = "$int"

#: The largest integer magnitude written as a bare JSON number: every double holds it exactly.
SAFE_INT = 2**53 - 1
#: Digits a ``$int`` body may have (Python refuses longer decimal strings by default anyway).
MAX_INT_DIGITS = 4000
_INT_TEXT = re.compile(r"-?(?:0|[1-9][0-9]*)", re.ASCII)

#: Every spelling a reader accepts in a typed value, mapped to the one written today.
_VALUE_SPELLINGS = {FLOAT: FLOAT, TUPLE: TUPLE, DICT: DICT, INT: INT, "$f": FLOAT, "$t": TUPLE, "$d": DICT}
#: A ``state_dict`` tree also accepts its tree version 1 node names.
_TREE_SPELLINGS = _VALUE_SPELLINGS | {"float": FLOAT, "tuple": TUPLE, "items": DICT}

_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def value_tag(tag: str) -> str | None:
    """The canonical tag (:data:`FLOAT`, :data:`TUPLE`, :data:`DICT`) a value's key spells, or None."""
    return _VALUE_SPELLINGS.get(tag)


def tree_tag(tag: str) -> str | None:
    """Like :func:`value_tag`, for a ``state_dict`` tree node, which has older spellings too."""
    return _TREE_SPELLINGS.get(tag)


def encode_float(value: float) -> float | dict[str, Any]:
    """A float with a fractional part as itself; any other float as ``{"$float": ...}``.

    NaN and the infinities are spelled ``"nan"``, ``"inf"``, ``"-inf"``; a finite whole-number
    float (``2.0``, ``-0.0``, ``1e300``) keeps its number but is tagged, because ``2.0`` and
    ``2`` are the same number to most JSON parsers (format 1.2; 1.0 and 1.1 wrote it bare).
    """
    if not math.isfinite(value):
        return {FLOAT: "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
    return {FLOAT: value} if value.is_integer() else value


def decode_float(body: Any, where: str = "a JSON value") -> float:
    """The float a ``$float`` body names: one of the three spellings, or a finite JSON number.

    Strict on purpose: ``float()`` would also take ``"1e999"`` or a megabyte of digits.
    """
    if isinstance(body, str) and body in _NON_FINITE:
        return _NON_FINITE[body]
    if type(body) is float or (type(body) is int and abs(body) <= SAFE_INT):
        return float(body)
    raise FormatError(
        f"{where}: a $float must be 'nan', 'inf', '-inf' or a finite number, not {body!r:.40}"
    )


def encode_int(value: int) -> int | dict[str, str]:
    """An int within +-(2**53 - 1) as itself; a larger one as ``{"$int": "decimal"}``."""
    return value if -SAFE_INT <= value <= SAFE_INT else {INT: str(value)}


def decode_int(body: Any, where: str = "a JSON value") -> int:
    """The integer a ``$int`` body spells: ASCII decimal, optional ``-``, no leading zeros."""
    if type(body) is str and len(body) <= MAX_INT_DIGITS and _INT_TEXT.fullmatch(body):
        return int(body)
    raise FormatError(f"{where}: a $int must be a decimal string such as \"-12\", not {body!r:.40}")


def portable_dumps(doc: Any, where: str) -> bytes:
    """``doc`` as compact UTF-8 JSON that every JSON parser reads the same (format 1.2).

    Refused, with a :class:`FormatError` naming ``where`` and nothing written: NaN and the
    infinities, and a string holding a lone surrogate (not Unicode, so not UTF-8). Non-ASCII
    characters are written as UTF-8, not as ``\\u`` escapes. Integers are the encoders' job
    (:func:`encode_int`, :func:`check_plain_json`): a copied snapshot of format 1.0 may hold a
    large one in its state tree, which its tree version defines.
    """
    try:
        text = json.dumps(doc, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    except ValueError as exc:
        raise FormatError(f"{where}: {exc}; store non-finite floats as typed JSON") from None
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = exc.object[exc.start : exc.end]
        raise FormatError(
            f"{where} holds a string with a lone surrogate ({bad!r}), which is not Unicode and "
            "cannot be stored; pass valid text (or bytes)"
        ) from None


def check_plain_json(doc: Any, where: str) -> None:
    """Refuse what plain JSON would store ambiguously (a manifest's ``metadata``, format 1.2).

    Allowed: null, booleans, strings, integers within +-(2**53 - 1), finite floats, lists and
    tuples (stored as arrays), and dicts with string keys. Refused with a :class:`FormatError`:
    any other key (``json`` would write ``str()`` of it), larger integers, non-finite floats,
    lone surrogates and every other type.
    """
    stack: list[tuple[Any, str]] = [(doc, where)]
    while stack:
        value, at = stack.pop()
        if isinstance(value, int) and not isinstance(value, bool) and not -SAFE_INT <= value <= SAFE_INT:
            raise FormatError(
                f"{at} is the integer {str(value)[:40]}, outside +-(2**53 - 1), which most JSON "
                "parsers cannot hold; store it as a string"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise FormatError(f"{at} is {value}, which JSON cannot hold; store it as a string")
        if isinstance(value, str):
            check_text(value, at)
        elif isinstance(value, list | tuple):
            stack.extend((v, f"{at}[{i}]") for i, v in enumerate(value))
        elif isinstance(value, dict):
            for k, v in value.items():
                if not isinstance(k, str):
                    raise FormatError(
                        f"{at} has the key {k!r:.40}, which is not a string; JSON keys are strings"
                    )
                stack.append((v, f"{at}.{check_text(k, at)}"))
        elif value is not None and not isinstance(value, int | float):
            raise FormatError(f"{at} is a {type(value).__name__}, which plain JSON cannot hold")


def check_text(value: str, where: str) -> str:
    """``value`` itself, or a :class:`FormatError` if it holds a lone surrogate (not Unicode)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise FormatError(
            f"{where} holds a string with a lone surrogate, which is not Unicode and cannot be stored"
        ) from None
    return value


def tuple_node(children: list[Any]) -> dict[str, list[Any]]:
    """``{"$tuple": children}``; the caller has encoded each child."""
    return {TUPLE: children}


def dict_node(pairs: list[list[Any]]) -> dict[str, list[list[Any]]]:
    """``{"$dict": [[key, value], ...]}``; the caller has encoded each key and value."""
    return {DICT: pairs}


def has_plain_keys(value: dict[Any, Any]) -> bool:
    """Whether ``value`` can be a plain JSON object: string keys, none starting with ``$``."""
    return all(isinstance(k, str) and not k.startswith("$") for k in value)


def pairs(body: Any, where: str = "a JSON value") -> list[tuple[Any, Any]]:
    """The ``[key, value]`` pairs of a ``$dict`` body, checked for shape."""
    if not isinstance(body, list) or not all(isinstance(p, list) and len(p) == 2 for p in body):
        raise FormatError(f"{where}: a $dict body must be a list of [key, value] pairs")
    return [(k, v) for k, v in body]


def sequence(body: Any, where: str = "a JSON value") -> list[Any]:
    """The elements of a ``$tuple`` body, checked for shape."""
    if not isinstance(body, list):
        raise FormatError(f"{where}: a $tuple body must be a list, not {type(body).__name__}")
    return body


def hashable(key: Any, where: str = "a JSON value") -> Any:
    """A decoded dict key made hashable again: JSON gives lists where the key was a tuple."""
    key = tuple(hashable(k, where) for k in key) if isinstance(key, list) else key
    try:
        hash(key)
    except TypeError:
        raise FormatError(f"{where}: a $dict key is a {type(key).__name__}, which cannot be a key") from None
    return key
