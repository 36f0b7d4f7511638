"""Golden TransferQueue repositories: every earlier version's snapshot restores exactly.

``tests/golden/v<version>/transferqueue/repo`` was written by that version's tqsnap from a
3-unit TransferQueue filled with ``helpers.fill`` (``tests/golden/make_golden_tq.py``). The
same fill made live today is the expected state.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import assert_same, dump, fill

from tqsnap.adapters.transferqueue import restore_system
from tqsnap.engine import Repository

GOLDEN = Path(__file__).parent.parent / "golden"
CASES = sorted(GOLDEN.glob("v*/transferqueue"))


def test_a_golden_transferqueue_repository_exists() -> None:
    assert any(p.parent.name == "v1.0" for p in CASES)


@pytest.mark.parametrize("case", CASES, ids=[p.parent.name for p in CASES])
def test_golden_snapshot_restores_into_two_units_as_the_same_fill_made_live(case, tq_main, tq_two, tmp_path):
    expected = json.loads((case / "expected.json").read_text())
    repo_dir = tmp_path / "repo"
    shutil.copytree(case / "repo", repo_dir)
    fill(tq_main.client)
    live = dump(tq_main.system)

    restored = restore_system(tq_two.system, Repository.open(str(repo_dir)), expected["stream"])

    assert (restored.source_units, restored.units, restored.samples) == (expected["units"], 2, expected["samples"])
    got = dump(tq_two.system)
    # A partition's creation time is the wall clock of the fill; everything else must match.
    for state in (live["state"], got["state"]):
        for partition in state.partitions.values():
            assert isinstance(partition.created_at, float)
            partition.created_at = None
    assert_same(live, got)
