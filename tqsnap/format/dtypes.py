"""The closed table of tensor dtypes an item may name, with each element's size in bytes.

docs/format.md ("Tensor dtypes") gives each one's byte layout. A ``tensor`` item's ``size``
MUST be the product of its ``shape`` times the element size here; a name not in this table is
an unknown value, and a reader refuses the item rather than guess (torch's aliases such as
``float``, ``long`` or ``half`` are not names here: a writer always writes the canonical name).
Quantized dtypes are listed so a reader can name them in its refusal: their scale and zero
point have no field in the format, so writers refuse quantized tensors and readers refuse
items that claim one.
"""

from __future__ import annotations

#: name -> bytes per element, as written to ``Item.dtype``.
ELEMENT_SIZE: dict[str, int] = {
    "bool": 1,
    "uint8": 1, "uint16": 2, "uint32": 4, "uint64": 8,
    "int8": 1, "int16": 2, "int32": 4, "int64": 8,
    "float16": 2, "bfloat16": 2, "float32": 4, "float64": 8,
    "complex32": 4, "complex64": 8, "complex128": 16,
    "float8_e4m3fn": 1, "float8_e4m3fnuz": 1, "float8_e5m2": 1, "float8_e5m2fnuz": 1,
    "float8_e8m0fnu": 1,
    "float4_e2m1fn_x2": 1,
    "bits8": 1, "bits16": 2, "bits1x8": 1, "bits2x4": 1, "bits4x2": 1,
    "uint1": 1, "uint2": 1, "uint3": 1, "uint4": 1, "uint5": 1, "uint6": 1, "uint7": 1,
    "int1": 1, "int2": 1, "int3": 1, "int4": 1, "int5": 1, "int6": 1, "int7": 1,
}  # fmt: skip

#: Names that are never written and always refused (no scale or zero point in the format).
REFUSED: frozenset[str] = frozenset({"qint8", "quint8", "qint32", "quint4x2", "quint2x4"})


def element_size(name: str) -> int | None:
    """Bytes per element of ``name``, or None when the format has no such dtype."""
    return ELEMENT_SIZE.get(name)
