"""Typed JSON for the Python values TransferQueue holds: tags, non-tensor samples, sampler state.

Plain JSON loses types that matter for an exact restore (tuple vs list, int dict keys, bytes,
NaN, small tensors inside tags). Values that JSON cannot say directly become a one-key object
whose key starts with ``$``; a dict whose keys are all strings without a leading ``$`` stays a
plain JSON object, so ordinary tags and strings cost nothing extra.

Anything else is pickled only when the caller allows it, and a pickled value is refused on
load unless the loader allows it too: a snapshot in a shared bucket must not run code.
"""

from __future__ import annotations

import base64
import json
import pickle
from typing import Any

from ...errors import FormatError, PickleNotAllowedError, TqsnapError
from ...format import strict, typed_json


def _b64(data: bytes | memoryview) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


#: JSON levels each container may take once encoded (a dict with odd keys becomes
#: ``{"$dict": [[k, v], ...]}``, three levels), and the most a value may take in all: the
#: strict reader's limit less the levels of the documents that hold values.
_LEVELS = {list: 1, tuple: 2, set: 2, frozenset: 2, dict: 3}
MAX_VALUE_DEPTH = strict.MAX_DEPTH - 8


class Encoder:
    """Turns values into JSON-able trees; remembers whether it had to pickle anything."""

    def __init__(self, allow_pickle: bool = False, where: str = "") -> None:
        self.allow_pickle = allow_pickle
        self.where = where
        self.pickled = False
        self._depth = 0  # JSON levels above the value being encoded

    def encode(self, v: Any) -> Any:
        t = type(v)
        if t is str or t is bool or v is None:
            return v
        if t is int:
            return typed_json.encode_int(v)  # $int past 2**53-1, which doubles would round
        if t is float:
            return typed_json.encode_float(v)
        levels = _LEVELS.get(t)
        if levels is None:
            return self._leaf(v, t)
        # A restore refuses JSON nested deeper than strict.MAX_DEPTH, so a value that deep is
        # refused here, at the save, with a typed error instead of a RecursionError.
        self._depth += levels
        try:
            if self._depth > MAX_VALUE_DEPTH:
                raise FormatError(
                    f"{self.where or 'a value'} nests deeper than {MAX_VALUE_DEPTH} levels of typed JSON; "
                    "a snapshot could not restore it"
                )
            return self._container(v, t)
        finally:
            self._depth -= levels

    def _container(self, v: Any, t: type) -> Any:
        if t is list:
            return [self.encode(x) for x in v]
        if t is dict:
            if typed_json.has_plain_keys(v):
                return {k: self.encode(x) for k, x in v.items()}
            return typed_json.dict_node([[self.encode(k), self.encode(x)] for k, x in v.items()])
        if t is tuple:
            return typed_json.tuple_node([self.encode(x) for x in v])
        if t is set or t is frozenset:
            items = [self.encode(x) for x in v]
            try:
                items.sort(key=lambda x: json.dumps(x, sort_keys=True))
            except TypeError:  # pragma: no cover - encoded items are always JSON
                pass
            return {"$set" if t is set else "$fset": items}
        raise AssertionError(t)  # pragma: no cover - _LEVELS lists the containers above

    def _leaf(self, v: Any, t: type) -> Any:
        if t is bytes:
            return {"$b": _b64(v)}
        if t is bytearray:
            return {"$ba": _b64(v)}
        special = self._special(v)
        if special is not None:
            return special
        if not self.allow_pickle:
            raise PickleNotAllowedError(
                f"{self.where or 'a value'} holds a {t.__module__}.{t.__qualname__}, which only pickle can "
                "store; pass allow_pickle=True to snapshot it (and to restore it later)"
            )
        self.pickled = True
        return {"$pickle": _b64(pickle.dumps(v, protocol=pickle.HIGHEST_PROTOCOL))}

    def _special(self, v: Any) -> Any:
        """Tensors, numpy arrays and dtypes, imported lazily so JSON users need neither."""
        mod = type(v).__module__
        if mod.startswith("torch"):
            import torch

            from ..tensors import dtype_name, tensor_bytes

            if isinstance(v, torch.Size):
                return {"$size": [int(x) for x in v]}
            if isinstance(v, torch.dtype):
                return {"$dtype": dtype_name(v)}
            if type(v) is torch.Tensor and v.layout == torch.strided and not v.is_quantized:
                view, _owner = tensor_bytes(v)
                return {"$tensor": [dtype_name(v.dtype), list(v.shape), _b64(view)]}
        if mod == "numpy" or mod.startswith("numpy."):
            import numpy as np

            if isinstance(v, np.ndarray) and not v.dtype.hasobject:
                arr = np.ascontiguousarray(v)
                return {"$nd": [arr.dtype.str, list(arr.shape), _b64(arr.tobytes())]}
            if isinstance(v, np.generic) and not isinstance(v, np.object_):
                arr = np.asarray(v)
                return {"$np": [arr.dtype.str, _b64(arr.tobytes())]}
            if isinstance(v, np.dtype) and not v.hasobject:
                return {"$npdtype": v.str}
        return None


#: What decoding a malformed tree raises inside Python, torch and numpy.
_MALFORMED = (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError, RecursionError, RuntimeError)


class Decoder:
    """The inverse of :class:`Encoder`; refuses ``$pickle`` unless allowed."""

    def __init__(self, allow_pickle: bool = False, where: str = "") -> None:
        self.allow_pickle = allow_pickle
        self.where = where

    def decode(self, node: Any) -> Any:
        """Decode one tree; anything malformed in it is a FormatError naming :attr:`where`."""
        try:
            return self._decode(node)
        except TqsnapError:
            raise
        except (*_MALFORMED, pickle.UnpicklingError, EOFError) as exc:
            raise FormatError(f"{self.where or 'a JSON value'}: malformed typed value: {exc!s:.200}") from None

    def _decode(self, node: Any) -> Any:
        if node is None or isinstance(node, bool | int | float | str):
            return node
        if isinstance(node, list):
            if all(type(x) is str for x in node):  # the common non-tensor field: plain strings
                return node
            return [self._decode(x) for x in node]
        if not isinstance(node, dict):
            raise FormatError(f"{self.where}: unexpected JSON value {node!r:.80}")
        if len(node) == 1:
            ((tag, body),) = node.items()
            if tag.startswith("$"):
                return self._tagged(tag, body)
        return {k: self._decode(x) for k, x in node.items()}

    def _tagged(self, tag: str, body: Any) -> Any:
        typed = typed_json.value_tag(tag)
        if typed == typed_json.FLOAT:
            return typed_json.decode_float(body, self.where)
        if typed == typed_json.INT:
            return typed_json.decode_int(body, self.where)
        if typed == typed_json.DICT:
            return {
                typed_json.hashable(self._decode(k), self.where): self._decode(x)
                for k, x in typed_json.pairs(body, self.where)
            }
        if typed == typed_json.TUPLE:
            return tuple(self._decode(x) for x in typed_json.sequence(body, self.where))
        if tag == "$b":
            return _unb64(body)
        if tag == "$ba":
            return bytearray(_unb64(body))
        if tag == "$set":
            return {_hashable(self._decode(x)) for x in body}
        if tag == "$fset":
            return frozenset(_hashable(self._decode(x)) for x in body)
        if tag == "$size":
            import torch

            return torch.Size(body)
        if tag == "$dtype":
            from ..tensors import dtype_from_name

            return dtype_from_name(body)
        if tag == "$tensor":
            from ..tensors import tensor_from_bytes

            dtype, shape, data = body
            return tensor_from_bytes(bytearray(_unb64(data)), dtype, list(shape))
        if tag in ("$nd", "$np", "$npdtype"):
            import numpy as np

            if tag == "$npdtype":
                return np.dtype(body)
            if tag == "$np":
                return np.frombuffer(_unb64(body[1]), dtype=np.dtype(body[0]))[0]
            dtype, shape, data = body
            return np.frombuffer(bytearray(_unb64(data)), dtype=np.dtype(dtype)).reshape(shape)
        if tag == "$pickle":
            if not self.allow_pickle:
                raise PickleNotAllowedError(
                    f"{self.where or 'the snapshot'} holds a pickled Python object; loading it could run "
                    "code. Pass allow_pickle=True only if you trust everyone who can write this repository"
                )
            return pickle.loads(_unb64(body))  # noqa: S301 - explicit opt-in above
        raise FormatError(f"{self.where}: unknown value tag {tag!r}")


def _hashable(v: Any) -> Any:
    return tuple(_hashable(x) for x in v) if isinstance(v, list) else v


def dumps(value: Any, *, allow_pickle: bool = False, where: str = "") -> bytes:
    """Encode ``value`` as compact UTF-8 JSON bytes."""
    return dump_tree(Encoder(allow_pickle, where).encode(value), where or "a TransferQueue value")


def dump_tree(tree: Any, where: str) -> bytes:
    """An encoded tree as compact UTF-8 JSON.

    A string holding a lone surrogate (Python text that is not Unicode, so has no UTF-8) is
    refused with a :class:`FormatError` naming ``where`` and the string's place in the tree,
    never a bare ``UnicodeEncodeError``; nothing has been written then.
    """
    text = json.dumps(tree, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = exc.object[exc.start : exc.end]
        at = surrogate_path(tree)
        place = "".join(f"[{c}]" if type(c) is int else f"[{c!r}]" for c in at or [])
        raise FormatError(
            f"{where}{' at ' + place if place else ''} holds a string with a lone surrogate ({bad!r}), "
            "which is not Unicode and cannot be stored; pass valid text (or bytes)"
        ) from None


def surrogate_path(tree: Any) -> list[str | int] | None:
    """The place (list indexes, dict keys) of the first string or key in ``tree`` that holds a
    lone surrogate, or None. Walked with a stack: trees come from values of any depth."""
    stack: list[tuple[Any, list[str | int]]] = [(tree, [])]
    while stack:
        node, at = stack.pop()
        if isinstance(node, str):
            if not _is_unicode(node):
                return at
        elif isinstance(node, list | tuple):
            stack.extend((v, [*at, i]) for i, v in reversed(list(enumerate(node))))
        elif isinstance(node, dict):
            for k in node:
                if isinstance(k, str) and not _is_unicode(k):
                    return [*at, k]
            stack.extend((v, [*at, k]) for k, v in reversed(list(node.items())))
    return None


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def loads(data: bytes | bytearray | memoryview, *, allow_pickle: bool = False, where: str = "") -> Any:
    """Decode bytes written by :func:`dumps`.

    Parsed strictly (:func:`tqsnap.format.strict.load_json`: no NaN constants, no duplicate
    keys, bounded nesting), so hostile bytes get a FormatError, never a RecursionError.
    """
    tree = strict.load_json(data, where or "?", "TransferQueue JSON", max_bytes=strict.MAX_BYTES)
    return Decoder(allow_pickle, where).decode(tree)
