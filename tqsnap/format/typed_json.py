"""Typed JSON: the one way tqsnap writes the three values JSON cannot say.

JSON has no non-finite floats, no tuples and no object keys other than strings. Wherever
tqsnap stores such a value inside JSON (the ``state_dict`` tree, DCP planner data,
TransferQueue tags and non-tensor values) it writes a one-key object whose key starts with
``$`` (docs/format.md, "Typed JSON values"):

- ``{"$float": "nan" | "inf" | "-inf"}``: a non-finite float (finite floats stay JSON numbers);
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

import math
from typing import Any

from ..errors import FormatError

FLOAT = "$float"
TUPLE = "$tuple"
DICT = "$dict"

#: Every spelling a reader accepts in a typed value, mapped to the one written today.
_VALUE_SPELLINGS = {FLOAT: FLOAT, TUPLE: TUPLE, DICT: DICT, "$f": FLOAT, "$t": TUPLE, "$d": DICT}
#: A ``state_dict`` tree also accepts its tree version 1 node names.
_TREE_SPELLINGS = _VALUE_SPELLINGS | {"float": FLOAT, "tuple": TUPLE, "items": DICT}

_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def value_tag(tag: str) -> str | None:
    """The canonical tag (:data:`FLOAT`, :data:`TUPLE`, :data:`DICT`) a value's key spells, or None."""
    return _VALUE_SPELLINGS.get(tag)


def tree_tag(tag: str) -> str | None:
    """Like :func:`value_tag`, for a ``state_dict`` tree node, which has older spellings too."""
    return _TREE_SPELLINGS.get(tag)


def encode_float(value: float) -> float | dict[str, str]:
    """A finite float as itself; NaN and the infinities as ``{"$float": "nan" | "inf" | "-inf"}``."""
    if math.isfinite(value):
        return value
    return {FLOAT: "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}


def decode_float(body: Any, where: str = "a JSON value") -> float:
    """The float a ``$float`` body names; anything but the three spellings is a FormatError.

    Strict on purpose: ``float()`` would also take ``"1e999"`` or a megabyte of digits.
    """
    if isinstance(body, str) and body in _NON_FINITE:
        return _NON_FINITE[body]
    raise FormatError(f"{where}: a non-finite float must be 'nan', 'inf' or '-inf', not {body!r:.40}")


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
