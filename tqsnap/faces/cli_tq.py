"""TransferQueue subcommands of the ``tqsnap`` command (see cli.py).

- ``tqsnap demo``: the self-contained demo job (faces/demo.py).
- ``tqsnap tq-snapshot URL --stream S``: attach to the Ray cluster that runs TransferQueue and
  snapshot it, e.g. from cron. It only attaches: it creates no TransferQueue client and never
  calls ``tq.close()``, which would shut the running TransferQueue down.
- ``tqsnap tq-restore URL --stream S``: restore into the running (empty, or with ``--force``
  any) TransferQueue of that cluster.
"""

from __future__ import annotations

import argparse
from typing import Any

from .cli_common import EXIT_OK, add_repo_args, emit, fmt_bytes, storage_options, terminal_safe
from .metrics import add_metrics_arg, job_metrics


def _attach(address: str) -> None:
    import os

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    if not ray.is_initialized():
        ray.init(address=address, logging_level="ERROR", log_to_driver=False)


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    options = {"endpoint_url": args.endpoint_url} if args.endpoint_url else None
    return run_demo(args.repo, args.duration, args.every, options)


def cmd_tq_snapshot(args: argparse.Namespace) -> int:
    from .tq import snapshot

    _attach(args.ray_address)
    with job_metrics(args, "tq-snapshot") as job:
        r = snapshot(args.url, stream=args.stream, storage_options=storage_options(args) or None)
        job.set("new_bytes", r.new_bytes, "Item bytes the snapshot uploaded.")
        job.set("reused_bytes", r.reused_bytes, "Item bytes reused from the parent snapshot.")
        job.set("seq", r.info.seq, "Seq of the snapshot committed.")
    emit(
        args,
        r.to_json(),
        lambda: (
            f"{terminal_safe(r.info.id)}: {r.samples} samples from {r.units} units, {fmt_bytes(r.new_bytes)} new, "
            f"{fmt_bytes(r.reused_bytes)} reused, {r.total_s:.2f}s"
        ),
    )
    return EXIT_OK


def cmd_tq_restore(args: argparse.Namespace) -> int:
    from .tq import restore

    _attach(args.ray_address)
    r = restore(
        args.url,
        stream=args.stream,
        snapshot=args.snapshot,
        force=args.force,
        allow_pickle=args.allow_pickle,
        storage_options=storage_options(args) or None,
    )
    emit(
        args,
        r.to_json(),
        lambda: (
            f"restored {terminal_safe(r.snapshot)} ({r.source_units} units) into {r.units} units: {r.samples} samples, "
            f"{fmt_bytes(r.bytes)} in {r.total_s:.2f}s"
        ),
    )
    return EXIT_OK


def register(sub: Any) -> None:
    """Add this module's subcommands to the `tqsnap` parser."""
    from .demo import build_parser

    p = sub.add_parser(
        "demo", help="run the RL job demo: job snapshots, SIGKILL, resume on 1 rank and 2 units, verify"
    )
    build_parser(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("tq-snapshot", help="snapshot the TransferQueue running on a Ray cluster")
    add_repo_args(p, stream=True)
    p.add_argument("--ray-address", default="auto", help="Ray cluster to attach to (default: %(default)s)")
    add_metrics_arg(p)
    p.set_defaults(func=cmd_tq_snapshot)

    p = sub.add_parser(
        "tq-restore", help="restore a snapshot into the TransferQueue running on a Ray cluster"
    )
    add_repo_args(p, stream=True, snapshot=True)
    p.add_argument("--ray-address", default="auto", help="Ray cluster to attach to (default: %(default)s)")
    p.add_argument("--force", action="store_true", help="replace everything the target TransferQueue holds")
    p.add_argument("--allow-pickle", action="store_true", help="allow pickled values (trust the repository)")
    p.set_defaults(func=cmd_tq_restore)
