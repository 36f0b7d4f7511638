"""``--workers`` and ``--executor``: how ``gc``, ``check`` and ``copy --all`` fan their listing out."""

from __future__ import annotations

import argparse

from ..engine.fanout import EXECUTORS


def _workers(text: str) -> int:
    n = int(text)
    if not 1 <= n <= 1024:
        raise argparse.ArgumentTypeError(f"--workers {text}: use 1 to 1024")
    return n


def add_fanout_args(p: argparse.ArgumentParser) -> None:
    """Add the two options; both default to what the engine picks (see tqsnap/engine/fanout.py)."""
    p.add_argument(
        "--workers",
        type=_workers,
        default=None,
        metavar="N",
        help="list and delete under (copy: list, and move shards) this many shard prefixes at once (threads, "
        "or Ray tasks); default 16 threads, or the Ray cluster's CPUs",
    )
    p.add_argument(
        "--executor",
        choices=EXECUTORS,
        default="auto",
        help="where the pieces run: 'ray' tasks (joins RAY_ADDRESS or starts a local Ray), local 'threads', "
        "or 'auto' (Ray when connected to a cluster or RAY_ADDRESS is set)",
    )
