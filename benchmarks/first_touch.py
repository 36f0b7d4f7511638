"""How long this machine takes to fault in fresh memory: allocate and fill ``--mib``, several times.

Not a test. A restore's floor is writing its data into memory the target process has never
touched, so this cost is part of any restore. On a virtual machine the first round can cost
several times the later ones when the guest has not used that memory lately (the host backs
it lazily); later rounds reuse pages the previous round just freed.

    python benchmarks/first_touch.py --mib 400 --rounds 3
"""

from __future__ import annotations

import argparse
import ctypes
import sys
import time


def touch(nbytes: int) -> float:
    """Seconds to allocate ``nbytes`` and write every page once."""
    t0 = time.perf_counter()
    buf = bytearray(nbytes)  # large: a fresh anonymous mapping, not yet faulted in
    ctypes.memset((ctypes.c_char * nbytes).from_buffer(buf), 1, nbytes)
    seconds = time.perf_counter() - t0
    del buf
    return seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=400, help="MiB per round (default: %(default)s)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds (default: %(default)s)")
    args = ap.parse_args()
    for r in range(args.rounds):
        s = touch(args.mib << 20)
        print(f"round {r + 1}: {args.mib} MiB in {s:.3f} s ({args.mib / s:,.0f} MiB/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
