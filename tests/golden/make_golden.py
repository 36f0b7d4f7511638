"""Write the golden repositories of the tqsnap on ``sys.path`` (run once per format version).

    python tests/golden/make_golden.py --out tests/golden/v1.2

Each repository gets an ``expected.json`` beside it: for every stream, the visible seqs, the
tags, and the description (``values.describe``) of what each visible snapshot must load as.
A later tqsnap must keep reading every directory written by this script, in CI, forever.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp

sys.path.insert(0, str(Path(__file__).parent))

import values  # noqa: E402

import tqsnap  # noqa: E402
import tqsnap.dcp  # noqa: E402
from tqsnap.engine import PackOptions  # noqa: E402
from tqsnap.format import FORMAT_VERSION  # noqa: E402

KiB = 1024


def write_state_dict_repo(root: Path) -> dict:
    url = str(root)
    tqsnap.init_repo(url)
    expected: dict = {"kind": "state_dict", "streams": {}}

    def record(stream: str, seq: int, state: object) -> None:
        expected["streams"].setdefault(stream, {"snapshots": {}, "tags": {}})
        expected["streams"][stream]["snapshots"][str(seq)] = values.describe(state)

    state = values.dtype_state(1)
    record("dtypes", tqsnap.save(url, state, stream="dtypes").seq, state)

    for seed in (1, 2, 1):  # the third save reuses every shard of the first
        state = values.tree_state(seed)
        record("tree", tqsnap.save(url, state, stream="tree", metadata={"seed": seed}).seq, state)
    tqsnap.tag(url, "first", stream="tree", snapshot=1)
    tqsnap.forget(url, streams="tree", keep_last=1, keep_tags=["first"])  # tombstones seq 2
    del expected["streams"]["tree"]["snapshots"]["2"]
    expected["streams"]["tree"]["tags"]["first"] = 1

    packs = PackOptions(chunk_size=64 * KiB, pack_size=16 * KiB, small_item=32 * KiB)
    state = values.big_state(3)
    record("packs", tqsnap.save(url, state, stream="packs", options=packs).seq, state)

    state = values.body_state(4)
    record("body", tqsnap.save(url, state, stream="body").seq, state)

    if FORMAT_VERSION >= "1.2":  # what earlier writers could not store portably
        state = values.portable_state(6)
        record("portable", tqsnap.save(url, state, stream="portable").seq, state)
    return expected


def write_dcp_repo(root: Path) -> dict:
    url = str(root)
    tqsnap.init_repo(url)
    expected: dict = {"kind": "dcp", "streams": {"train": {"snapshots": {}, "tags": {}}}}
    state = values.dcp_state(5)
    for step in (1, 2):
        if step == 2:
            state["model.embed"][0].fill_(2.0)  # an incremental save: one tensor changed
            state["optim.step"].fill_(13)
        dcp.save(state, storage_writer=tqsnap.dcp.Writer(url, stream="train"))
        expected["streams"]["train"]["snapshots"][str(step)] = values.describe(state)
    return expected


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, write in (("state_dict", write_state_dict_repo), ("dcp", write_dcp_repo)):
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
