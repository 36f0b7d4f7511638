"""hyper_parallel's non-tensor values (``BYTE_IO``), handed to its planner only once they are harmless.

hyper_parallel's standard load planner turns a stored value back into an object with
``pickle.loads`` in ``apply_bytes``: the full pickle machinery, so bytes in a shared bucket
could run any code in every loading rank. ``tqsnap.hyper_parallel.Reader`` therefore never
passes stored bytes through (unless the caller passed ``allow_pickle=True``). It decodes them
itself and hands the planner a fresh pickle of what it decoded, so whatever the planner does
with it, it unpickles only objects built here:

- a plain pickle (what hyper_parallel writes) is decoded by :class:`PlainValueUnpickler`, which
  resolves no global beyond a fixed list of builtin containers and scalars (the "restricting
  globals" recipe of Python's :mod:`pickle` documentation); anything else (a class, a function,
  a tensor, a numpy array) is refused with :class:`~tqsnap.errors.PickleNotAllowedError`;
- a ``torch.save`` archive goes through the DCP adapter's decoder
  (:func:`tqsnap.adapters.dcp.byte_values.restricted_value_stream`), torch's own restricted
  unpickler, which also rebuilds tensors inside containers.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

from ...errors import FormatError, PickleNotAllowedError
from ..dcp.byte_values import restricted_value_stream

#: Globals a pickle of plain data needs, beyond what pickle's own opcodes build.
_ALLOWED_GLOBALS = frozenset(
    {
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("builtins", "complex"),
        ("builtins", "bytearray"),
        ("builtins", "slice"),
        ("builtins", "range"),
        ("collections", "OrderedDict"),
        ("_codecs", "encode"),  # how protocols 0-2 spell bytes
    }
)
_ZIP_MAGIC = b"PK\x03\x04"

_OPT_IN = (
    "Pass tqsnap.hyper_parallel.Reader(..., allow_pickle=True) only if you trust everyone who can write "
    "this repository: the planner then unpickles the stored bytes, which can run code"
)


class PlainValueUnpickler(pickle.Unpickler):
    """An unpickler that builds only builtin containers and scalars and resolves no other global."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not plain data")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids (tensor storages) are not plain data")


def safe_value_bytes(data: memoryview | bytes, where: str) -> bytes:
    """A fresh pickle of the value stored in ``data``, decoded without running code.

    ``where`` names the item and snapshot in errors. Raises
    :class:`~tqsnap.errors.PickleNotAllowedError` when only a full unpickler could decode it.
    """
    raw = bytes(data)
    if raw.startswith(_ZIP_MAGIC):
        import torch

        value = torch.load(restricted_value_stream(raw, where), weights_only=True)
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    try:
        value = PlainValueUnpickler(io.BytesIO(raw)).load()
    except pickle.UnpicklingError as exc:
        raise PickleNotAllowedError(f"{where} holds more than plain data ({_printable(str(exc))}). {_OPT_IN}") from None
    except Exception as exc:  # noqa: BLE001 - anything else is a value that is no pickle at all
        raise FormatError(
            f"{where} is not a readable pickle ({type(exc).__name__}: {_printable(str(exc))}). {_OPT_IN}"
        ) from None
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def _printable(text: str, limit: int = 200) -> str:
    """``text`` with anything but printable ASCII escaped: names in it come from the snapshot."""
    return text.encode("unicode_escape").decode("ascii")[:limit]
