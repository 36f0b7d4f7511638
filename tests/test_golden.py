"""Golden repositories: what every earlier format version wrote must still load, exactly.

``tests/golden/v<version>/<kind>/repo`` was written by that version's tqsnap
(``tests/golden/make_golden.py``) and is never rewritten; ``expected.json`` beside it says
which snapshots are visible, which tags exist, and what each snapshot loads as.
"""

from __future__ import annotations

import json
import shutil
import stat
import sys
from pathlib import Path

import hyper_parallel_planners as hp
import pytest
import torch
import torch.distributed.checkpoint as dcp

import tqsnap
import tqsnap.dcp
import tqsnap.hyper_parallel
import tqsnap.job

GOLDEN = Path(__file__).parent / "golden"
sys.path.insert(0, str(GOLDEN))

import values  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled", "ignore:ComplexHalf")

#: TransferQueue's golden repositories need a live TransferQueue: tests/tq/test_golden_tq.py reads them.
CASES = sorted(p for p in GOLDEN.glob("v*/*") if (p / "expected.json").is_file() and p.name != "transferqueue")


def _read_only_copy(src: Path, tmp_path: Path) -> Path:
    """A copy of the golden repository with every file and directory made read-only (for
    users other than root; the digest check below catches writes either way)."""
    dst = tmp_path / "repo"
    shutil.copytree(src / "repo", dst)
    for path in sorted(dst.rglob("*"), reverse=True):
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    return dst


def _tree_digest(root: Path) -> dict[str, bytes | None]:
    """Every file's bytes and every directory (as None): reading must create neither."""
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


def test_golden_repositories_exist() -> None:
    versions = {p.parent.name for p in CASES}
    kinds = {p.name for p in CASES}
    assert {"v1.0", "v1.2"} <= versions  # the first version and every one that changed the encoding
    assert {"state_dict", "dcp", "job", "hyper_parallel"} <= kinds
    for version in ("v1.0", "v1.2"):
        assert {p.name for p in CASES if p.parent.name == version} >= {"state_dict", "dcp"}


def test_each_golden_repository_was_written_by_its_version() -> None:
    """A repository under v1.2 holds manifests of format 1.2 (not an old one copied), and so on."""
    for case in CASES:
        manifests = sorted((case / "repo" / "snapshots").glob("*/*.json"))
        assert manifests
        for path in manifests:
            assert json.loads(path.read_text())["format_version"] == case.parent.name.removeprefix("v"), path


@pytest.mark.parametrize("case", CASES, ids=[f"{p.parent.name}-{p.name}" for p in CASES])
def test_golden_repository_loads_exactly(case: Path, tmp_path: Path) -> None:
    expected = json.loads((case / "expected.json").read_text())
    repo = _read_only_copy(case, tmp_path)
    before = _tree_digest(repo)
    url = str(repo)
    for stream, want in expected["streams"].items():
        visible = [info.seq for info in tqsnap.snapshots(url, stream)]
        assert visible == sorted(int(s) for s in want["snapshots"]), stream
        for tag, seq in want["tags"].items():
            assert tqsnap.snapshots(url, stream)  # the stream is listed
            assert _resolve_tag(url, stream, tag) == seq
        for seq, description in want["snapshots"].items():
            assert tqsnap.verify(url, stream=stream, snapshot=int(seq)).ok
            loaded = _load(expected["kind"], url, stream, int(seq))
            assert values.describe(loaded) == description, f"{stream}@{seq}"
    assert _tree_digest(repo) == before  # reading wrote nothing


def _resolve_tag(url: str, stream: str, tag: str) -> int:
    from tqsnap.engine import Repository

    return Repository.open(url).resolve(stream, f"tag:{tag}").seq


def _load(kind: str, url: str, stream: str, seq: int):
    if kind == "state_dict":
        return tqsnap.load(url, stream=stream, snapshot=seq)
    if kind == "dcp":
        state = values.dcp_state(0)
        for t in state.values():
            t.zero_()
        dcp.load(state, storage_reader=tqsnap.dcp.Reader(url, stream=stream, snapshot=seq))
        return state
    if kind == "job":  # each part alone, by name, through its own kind's reader
        assert tqsnap.job.parts(url, stream, seq) == {"loop": "state_dict", "trainer": "dcp"}
        trainer = {name: t.zero_() for name, t in values.dcp_state(0).items()}
        dcp.load(trainer, storage_reader=tqsnap.dcp.Reader(url, stream=stream, snapshot=seq, part="trainer"))
        return {"loop": tqsnap.load(url, stream=stream, snapshot=seq, part="loop"), "trainer": trainer}
    if kind == "hyper_parallel":
        template = values.hyper_parallel_state(0)  # zeroed tensors; values come from the snapshot
        state = {n: torch.zeros_like(t) if isinstance(t, torch.Tensor) else None for n, t in template.items()}
        hp.load(state, tqsnap.hyper_parallel.Reader(url, stream=stream, snapshot=seq), hp.RowLoadPlanner(1))
        return state
    raise AssertionError(f"no loader for kind {kind!r}")


def test_a_dcp_snapshot_stores_no_local_path(tmp_path: Path) -> None:
    """Format 1.2 dropped the writer's checkpoint_id (its local path) from the stored metadata."""
    repo = tmp_path / "private-dir-name"
    state = values.dcp_state(1)
    dcp.save(state, storage_writer=tqsnap.dcp.Writer(str(repo), stream="train"))
    raw = (repo / "snapshots" / "train" / "00000000000000000001.json").read_text()
    assert "private-dir-name" not in raw
    assert json.loads(raw)["extra"]["dcp"]["storage_meta"]["checkpoint_id"] is None
    loaded = values.dcp_state(2)
    dcp.load(loaded, storage_reader=tqsnap.dcp.Reader(str(repo), stream="train"))
    assert values.describe(loaded) == values.describe(state)
