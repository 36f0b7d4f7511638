"""The content a SIGKILL-harness save writes, derived from its content id alone.

The child (tests/kill_child.py) saves ``content(cid)`` (with the engine's writer, so no
adapter, and no torch import, slows the child down) with ``{"content_id": cid}`` in the
snapshot's metadata; the parent (tests/killharness.py) recomputes it from the id it finds in
a visible snapshot and compares what loads, byte for byte.
"""

from __future__ import annotations

import random

MiB = 1 << 20
#: Every save holds this item unchanged, so later saves reuse its shard from their parent.
SHARED = random.Random(-1).randbytes(1_200_000)
#: With ``multipart_threshold`` just above 5 MiB, a shard this large goes up in three parts.
MULTIPART_BYTES = 11 * MiB


def content(cid: int, *, multipart: bool = False) -> dict[str, bytes]:
    """Item path -> bytes: a shared item, one large item, and a few small ones packed together."""
    rng = random.Random(cid)
    size = MULTIPART_BYTES if multipart else rng.choice([150_000, 1_300_000, 2_600_000])
    items = {"step": str(cid).encode(), "shared": SHARED, "big": rng.randbytes(size)}
    items |= {f"small/v{i}": rng.randbytes(rng.randint(1, 4000)) for i in range(rng.randint(1, 6))}
    return items
