"""The states behind the golden repositories, and a description of a loaded value to compare.

The states are built from fixed seeds, so the repositories under ``tests/golden/v*/`` can be
checked against ``expected.json`` files written beside them. ``describe`` turns a loaded value
into plain JSON that keeps every distinction a round trip must keep: key types and order,
list versus tuple, bytes versus bytearray, int versus float, a tensor's dtype, shape, bytes and
``requires_grad``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import xxhash

#: Every dtype a state may hold, by name; names this torch lacks are left out of a new state.
DTYPES = (
    "float32", "float64", "float16", "bfloat16",
    "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "bool",
    "complex32", "complex64", "complex128",
    "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz", "float8_e8m0fnu",
    "float4_e2m1fn_x2",
    "bits8", "bits16",
)  # fmt: skip


def _tensor_of(name: str, numel: int, g: torch.Generator) -> torch.Tensor | None:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        return None
    size = torch.empty((), dtype=dtype).element_size()
    raw = torch.randint(0, 256, (numel * size,), dtype=torch.uint8, generator=g)
    if dtype is torch.bool:
        return (raw % 2).bool()
    return raw.view(dtype)


def dtype_state(seed: int) -> dict[str, Any]:
    """One tensor of each dtype, with random bytes (so every bit pattern kind appears)."""
    g = torch.Generator().manual_seed(seed)
    out: dict[str, Any] = {}
    for name in DTYPES:
        t = _tensor_of(name, 24, g)
        if t is not None:
            out[name] = t.reshape(2, 3, 4)
    return out


def tree_state(seed: int) -> dict[str, Any]:
    """Every kind of tree node: nested dicts, non-string keys, lists, tuples, bytes, JSON leaves."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(32, 16, generator=g)
    weight.requires_grad_(True)
    return {
        "model": {"layers": [{"w": weight, "b": torch.zeros(16)}, {"w": torch.randn(16, 8, generator=g)}]},
        "scalar": torch.tensor(1.5),
        "empty": torch.empty(0, 3),
        "tokens": torch.arange(5000, dtype=torch.int64),  # zstd (integer data)
        "int_keys": {1: "one", 2: torch.ones(3), (3, 4): [None, True]},
        "tuple": (1, 2.5, "x"),
        "list": [1, [2, [3]], {"k": "v"}],
        "bytes": b"\x00\x01tqsnap\xff",
        "bytearray": bytearray(b"mutable"),
        "floats": [0.1, -0.0, float("nan"), float("inf"), float("-inf"), 1e300],
        "ints": [0, -1, 2**62, 2**70],
        "strings": ["", "ümlaut", "a/b~c", "\u2603"],
        "none": None,
        "flags": [True, False],
        "a/b": torch.full((2,), 7.0),  # a key that needs escaping in item paths
        "": "empty key",
    }


def portable_state(seed: int) -> dict[str, Any]:
    """What format 1.2 made portable: whole-number floats, unsafe ints, key types, key order."""
    g = torch.Generator().manual_seed(seed)
    return {
        "whole_floats": [2.0, -0.0, -3.0, 1e300, 2.0**53, 0.5],
        "ints": [2**53 - 1, -(2**53 - 1), 2**53, -(2**63), 10**30],
        "key_types": {None: "none", True: "true", 2.5: "float", b"k": "bytes", (1, (2,)): "tuple", 7: "int", 2**64: "big"},
        "tensor_key": {torch.arange(3): "a tensor as a key"},
        "order": {"z": 1, "a": 2, "$m": 3, "": 4},  # not sorted; one key starts with $
        "same_path": {"x/y": torch.zeros(1), "x": {"y": torch.ones(1)}},  # escaping keeps them apart
        "collide": {"1": torch.zeros(2), 1: torch.ones(2)},  # one item path: the second gets #1
        "surrogate_pair": "\U0001f600",
        "w": torch.randn(3, generator=g),
    }


def big_state(seed: int) -> dict[str, Any]:
    """A tensor cut into several chunks (with small chunks) and many packed small tensors."""
    g = torch.Generator().manual_seed(seed)
    return {
        "big": torch.randn(64, 1024, generator=g),  # 256 KiB
        "small": {f"p{i:03d}": torch.randn(40, generator=g) for i in range(120)},
    }


def body_state(seed: int) -> dict[str, Any]:
    """Enough items that the manifest body moves into a body shard (over 256 KiB of JSON)."""
    g = torch.Generator().manual_seed(seed)
    return {f"param_{i:05d}": torch.randint(0, 100, (4,), generator=g) for i in range(2500)}


def dcp_state(seed: int) -> dict[str, Any]:
    """A model-and-optimizer state as torch.distributed.checkpoint saves it (tensors only)."""
    g = torch.Generator().manual_seed(seed)
    return {
        "model.embed": torch.randn(128, 32, generator=g),
        "model.w": torch.randn(32, 32, generator=g).bfloat16(),
        "optim.ids": torch.arange(3000, dtype=torch.int64),
        "optim.step": torch.tensor(12, dtype=torch.int64),
    }


def loop_state(version: int) -> dict[str, Any]:
    """A training loop's own state, the ``loop`` part of a golden job snapshot."""
    return {
        "step": 1000 + version,
        "rng": torch.Generator().manual_seed(version).get_state(),
        "sampler": {"epoch": 0, "index": 64 * version, "order": (3, 1, 2)},
        "lr": 0.5 / version,
    }


def hyper_parallel_state(version: int) -> dict[str, Any]:
    """A hyper_parallel checkpoint of one rank: row-split tensors and pickled plain values."""
    g = torch.Generator().manual_seed(21)
    return {
        "emb": torch.randn(64, 16, generator=g),
        "w": torch.randn(8, 8, generator=g).bfloat16(),
        "ids": torch.arange(40, dtype=torch.int64).reshape(10, 4) + version,
        "step": 2000 + version,
        "cfg": {"lr": 0.25, "betas": (0.9, 0.999), "names": ["a", "b"]},
    }


def describe(value: Any) -> Any:
    """Plain JSON for a loaded value; two values with equal descriptions round-tripped alike."""
    if isinstance(value, torch.Tensor):
        t = value.detach().contiguous()
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        return {
            "tensor": str(t.dtype).removeprefix("torch."),
            "shape": list(t.shape),
            "xxh3": xxhash.xxh3_128_hexdigest(raw),
            "requires_grad": bool(value.requires_grad),
        }
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return {"int": str(value)}
    if isinstance(value, float):
        return {"float": repr(value) if not math.isnan(value) else "nan"}
    if isinstance(value, bytearray):
        return {"bytearray": bytes(value).hex()}
    if isinstance(value, bytes):
        return {"bytes": value.hex()}
    if isinstance(value, dict):
        return {"dict": [[describe(k), describe(v)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"tuple": [describe(v) for v in value]}
    if isinstance(value, list):
        return {"list": [describe(v) for v in value]}
    raise TypeError(f"no description for {type(value).__name__}")
