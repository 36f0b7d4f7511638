"""Zero-copy conversion between torch tensors and byte views, shared by every adapter.

A tensor is stored as its C-order bytes plus a dtype name and a shape; nothing else. Loading
rebuilds it with ``torch.frombuffer`` over the (writable) shard buffer, so no pickle is
involved and no further copy is made.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import FormatError, UnsupportedTensorError
from ..format.dtypes import element_size

if TYPE_CHECKING:
    import torch


def dtype_name(dtype: torch.dtype, where: str = "a tensor") -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``: the name written to manifests.

    A dtype outside the format's table (format/dtypes.py) is refused before anything is written,
    with :class:`~tqsnap.errors.UnsupportedTensorError` naming ``where``.
    """
    name = str(dtype).removeprefix("torch.")
    if element_size(name) is None:
        raise UnsupportedTensorError(
            f"cannot store {where} of dtype {name}: the snapshot format has no such dtype "
            "(quantized tensors need dequantizing first)"
        )
    return name


def dtype_from_name(name: str) -> torch.dtype:
    """The inverse of :func:`dtype_name`; refuses names that are not torch dtypes."""
    import torch

    # Only the format's closed table (format/dtypes.py): torch's aliases (``long``, ``half``)
    # and quantized dtypes, whose scale the format cannot hold, are not dtype names here.
    dtype = getattr(torch, name, None) if element_size(name) is not None else None
    if not isinstance(dtype, torch.dtype):
        raise FormatError(f"unknown tensor dtype {name!r:.40} in manifest; docs/format.md lists the dtypes")
    return dtype


def tensor_bytes(t: torch.Tensor, where: str = "a tensor") -> tuple[memoryview, torch.Tensor]:
    """The tensor's bytes as a flat view, plus the tensor that owns them (keep it alive).

    Contiguous CPU tensors are not copied. Others (strided views, GPU tensors) are copied once.
    A sparse or quantized tensor is refused with :class:`~tqsnap.errors.UnsupportedTensorError`
    naming ``where``: its bytes alone do not say what it holds (indices, scale, zero point).
    """
    import torch

    if t.layout != torch.strided:
        raise UnsupportedTensorError(
            f"cannot snapshot {where}: a {t.layout} tensor has no plain bytes; convert it with .to_dense() first"
        )
    if t.is_quantized:
        raise UnsupportedTensorError(
            f"cannot snapshot {where}: a quantized ({t.dtype}) tensor's scale and zero point have no place "
            "in the format; dequantize it first (.dequantize()) and store the quantization parameters beside it"
        )
    owner = t.detach()
    if owner.device.type != "cpu":
        owner = owner.cpu()
    if not owner.is_contiguous():
        owner = owner.contiguous()
    if owner.numel() == 0:
        return memoryview(b""), owner
    flat = owner.reshape(-1).view(torch.uint8)
    return memoryview(flat.numpy()).cast("B"), owner


def tensor_from_bytes(data: memoryview | bytes | bytearray, dtype: str, shape: list[int]) -> torch.Tensor:
    """Rebuild a tensor over ``data`` without copying when the buffer is writable."""
    import torch

    torch_dtype = dtype_from_name(dtype)
    numel = 1
    for dim in shape:
        numel *= dim
    expected = numel * torch.empty((), dtype=torch_dtype).element_size()
    if len(memoryview(data).cast("B")) != expected:
        raise FormatError(f"tensor of {dtype}{list(shape)} needs {expected} bytes, item has {len(data)}")
    if numel == 0:
        return torch.empty(shape, dtype=torch_dtype)
    view = memoryview(data)
    if view.readonly:
        view = memoryview(bytearray(view))
    return torch.frombuffer(view, dtype=torch.uint8).view(torch_dtype).reshape(shape)


def is_tensor(value: Any) -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is optional for bytes/JSON states
        return False
    return isinstance(value, torch.Tensor)
