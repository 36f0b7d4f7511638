"""Write the golden TransferQueue repository of the tqsnap on ``sys.path``.

    python tests/golden/make_golden_tq.py --out tests/golden/v1.0

Starts a local Ray cluster and a 3-unit TransferQueue, fills it with ``tests/tq/helpers.fill``
(dense, jagged and non-tensor values, a KV partition with tags, partial consumption), and
snapshots it as stream ``run`` of ``<out>/transferqueue/repo``. ``tests/tq/test_golden_tq.py``
restores it into a 2-unit TransferQueue and compares it with the same fill made live.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "tq"))

from tqsystem import start_ray  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    start_ray(num_cpus=6)
    import ray
    import torch
    from helpers import fill

    import tqsnap.tq
    from tqsnap.faces.demo import init_transferqueue

    tq = init_transferqueue(3)
    try:
        fill(tq.get_client())
        with tempfile.TemporaryDirectory() as tmp:
            repo = Path(tmp) / "repo"
            result = tqsnap.tq.snapshot(str(repo), stream="run", metadata={"step": 7})
            shutil.rmtree(repo / ".tmp", ignore_errors=True)
            target = args.out / "transferqueue"
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(repo, target / "repo")
            expected = {
                "kind": "transferqueue",
                "stream": "run",
                "seq": result.info.seq,
                "samples": result.samples,
                "units": result.units,
                "torch": torch.__version__,
            }
            (target / "expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")
            print(f"wrote {target}: {result.samples} samples from {result.units} units")
    finally:
        tq.close()
        ray.shutdown()


if __name__ == "__main__":
    main()
