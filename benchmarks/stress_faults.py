"""Stress: the full engine fault run, several seeds of a seeded operation mix at 5% faults.

    python benchmarks/stress_faults.py --ops 400 --seeds 1 2 3 --rate 0.05 --out bench-out/faults.md
    python benchmarks/stress_faults.py --ops 150 --seeds 4 --rate 0.25 --classes put multipart conditional_put

Starts SeaweedFS on loopback and, per seed, runs ``--ops`` user operations (saves small,
multipart and several-part, loads, verifies, listings, forgets, gcs, copies to a second bucket,
tags) through the fault proxy of ``tests/faultproxy.py``, which strikes ``--rate`` of the
requests with every fault kind; then checks, with the faults off and against the server
itself, that nothing was lost, duplicated, wrongly forgotten or corrupted, and that gc after
the grace period leaves no orphan shard and no incomplete upload (``tests/fault_workload.py``).

Prints one table per seed and one for all seeds together, and each failure with its
traceback. Exits 1 when any goal figure is missed.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

# boto3 must never go looking for real credentials, a real region, or instance metadata.
for _name, _value in (
    ("AWS_ACCESS_KEY_ID", "tqsnap-any"),
    ("AWS_SECRET_ACCESS_KEY", "tqsnap-any-secret"),
    ("AWS_DEFAULT_REGION", "us-east-1"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
):
    os.environ.setdefault(_name, _value)

from fault_results import WorkloadResult, combine  # noqa: E402
from fault_workload import WorkloadConfig, run_workload  # noqa: E402
from faultproxy import CLASSES  # noqa: E402
from s3servers import start_seaweedfs  # noqa: E402

log = logging.getLogger("stress_faults")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", type=int, default=400, help="operations per seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--rate", type=float, default=0.05, help="fraction of requests hit by a fault")
    parser.add_argument(
        "--classes",
        nargs="+",
        choices=CLASSES,
        default=list(CLASSES),
        help="request classes the rate applies to (default: all; 'put multipart conditional_put' aims at writes)",
    )
    parser.add_argument("--grace", type=float, default=13.0, help="the repository's grace, seconds")
    parser.add_argument("--max-write", type=float, default=6.0, help="the repository's max_write_duration")
    parser.add_argument("--time-limit", type=float, default=1800.0, help="seconds per seed, at most")
    parser.add_argument("--out", type=Path, help="also write the combined table (Markdown) here")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")

    results: list[WorkloadResult] = []
    with tempfile.TemporaryDirectory(prefix="tqsnap-stress-faults-") as tmp:
        server = start_seaweedfs(Path(tmp))
        try:
            for seed in args.seeds:
                config = WorkloadConfig(
                    seed=seed,
                    ops=args.ops,
                    rate=args.rate,
                    classes=tuple(args.classes),
                    grace=args.grace,
                    max_write_duration=args.max_write,
                    time_limit_s=args.time_limit,
                )
                result = run_workload(server, config)
                results.append(result)
                sys.stdout.write(f"\n## seed {seed}: {args.ops} operations, {result.duration_s:.0f} s\n\n")
                sys.stdout.write(result.describe() + "\n")
                sys.stdout.flush()
        finally:
            server.stop()
    total = combine(results)
    seeds = " ".join(str(s) for s in args.seeds)
    where = "all requests" if set(args.classes) == set(CLASSES) else " ".join(args.classes) + " requests"
    header = (
        f"## all seeds ({seeds}): {sum(total.attempted.values())} operations, {args.rate:.0%} of {where} "
        f"faulted, {total.duration_s:.0f} s\n\n"
    )
    sys.stdout.write("\n" + header + total.table() + "\n")
    missed = total.goal_failures()
    sys.stdout.write("\ngoal figures: " + ("all met" if not missed else "MISSED: " + "; ".join(missed)) + "\n")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(header + total.table() + "\n")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
