"""Write the golden ``job`` and ``hyper_parallel`` repositories of the tqsnap on ``sys.path``.

    python tests/golden/make_golden_job.py --out tests/golden/v1.2

Both kinds are new in format 1.2. ``job``: stream ``run`` holds two job snapshots, each with a
``loop`` part (a state_dict staged by the job) and a ``trainer`` part (a DCP checkpoint saved
by one process, no process group, staged under the job's token); the second changes one tensor,
so its trainer part reuses the first's shards. A TransferQueue part is left out: staging one
needs a live TransferQueue on Ray, which tests/golden/make_golden_tq.py already pays for.
``hyper_parallel``: stream ``hp`` holds two checkpoints saved by one rank through
hyper_parallel's call sequence (tests/hyper_parallel_planners.py), tensors and pickled values.

``expected.json`` has the layout of tests/golden/make_golden.py's; a job snapshot is described
as the dict ``{part name: what that part loads as}``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import hyper_parallel_planners as hp  # noqa: E402
import values  # noqa: E402

import tqsnap  # noqa: E402
import tqsnap.dcp  # noqa: E402
import tqsnap.hyper_parallel  # noqa: E402
import tqsnap.job  # noqa: E402


def write_job_repo(root: Path) -> dict:
    url = str(root)
    tqsnap.init_repo(url)
    expected: dict = {"kind": "job", "streams": {"run": {"snapshots": {}, "tags": {}}}}
    trainer = values.dcp_state(11)
    for version in (1, 2):
        if version == 2:
            trainer["model.w"].fill_(0.5)  # one tensor changed: the rest is reused
            trainer["optim.step"].fill_(version)
        job = tqsnap.job.begin(url, stream="run")
        writer = tqsnap.dcp.Writer(url, stream="run", stage=job.token, part="trainer")
        dcp.save(trainer, storage_writer=writer, no_dist=True)
        job.add("trainer", writer.staged)
        loop = values.loop_state(version)
        job.add("loop", loop)
        seq = job.commit(metadata={"step": 1000 + version}).seq
        expected["streams"]["run"]["snapshots"][str(seq)] = values.describe({"loop": loop, "trainer": trainer})
    return expected


def write_hyper_parallel_repo(root: Path) -> dict:
    url = str(root)
    tqsnap.init_repo(url)
    expected: dict = {"kind": "hyper_parallel", "streams": {"hp": {"snapshots": {}, "tags": {}}}}
    for version in (1, 2):
        state = values.hyper_parallel_state(version)
        writer = tqsnap.hyper_parallel.Writer(url, stream="hp")
        hp.save(state, writer, hp.RowSavePlanner(1))
        assert writer.last_snapshot is not None
        expected["streams"]["hp"]["snapshots"][str(writer.last_snapshot.seq)] = values.describe(state)
    return expected


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    writers: tuple[tuple[str, Any], ...] = (("job", write_job_repo), ("hyper_parallel", write_hyper_parallel_repo))
    for name, write in writers:
        with tempfile.TemporaryDirectory() as tmp:
            repo = Path(tmp) / "repo"
            expected = write(repo)
            shutil.rmtree(repo / ".tmp", ignore_errors=True)
            target = args.out / name
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(repo, target / "repo")
            expected["torch"] = torch.__version__
            (target / "expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")
            print(f"wrote {target}")


if __name__ == "__main__":
    main()
