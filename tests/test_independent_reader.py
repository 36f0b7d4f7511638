"""The golden repositories, read by a reader that knows only docs/format.md (no tqsnap import)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest
import xxhash
from independent_reader import RawTensor, Repo, load_state

GOLDEN = Path(__file__).parent / "golden"
STATE_DICT_CASES = sorted(GOLDEN.glob("v*/state_dict"))


def describe(value: Any) -> Any:
    """The same description as tests/golden/values.describe, for the independent reader's values."""
    if isinstance(value, RawTensor):
        return {
            "tensor": value.dtype,
            "shape": list(value.shape),
            "xxh3": xxhash.xxh3_128_hexdigest(value.data),
            "requires_grad": bool(value.meta.get("requires_grad", False)),
        }
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return {"int": str(value)}
    if isinstance(value, float):
        return {"float": repr(value) if not math.isnan(value) else "nan"}
    if isinstance(value, bytearray):
        return {"bytearray": bytes(value).hex()}
    if isinstance(value, bytes):
        return {"bytes": value.hex()}
    if isinstance(value, dict):
        return {"dict": [[describe(k), describe(v)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"tuple": [describe(v) for v in value]}
    if isinstance(value, list):
        return {"list": [describe(v) for v in value]}
    raise TypeError(type(value).__name__)


@pytest.mark.parametrize("case", STATE_DICT_CASES, ids=[p.parent.name for p in STATE_DICT_CASES])
def test_independent_reader_loads_every_golden_state_dict_snapshot(case: Path) -> None:
    expected = json.loads((case / "expected.json").read_text())
    repo = Repo(case / "repo")
    assert repo.streams() == sorted(expected["streams"])
    for stream, want in expected["streams"].items():
        assert repo.visible(stream) == sorted(int(s) for s in want["snapshots"])
        for tag, seq in want["tags"].items():
            assert repo.resolve(stream, f"tag:{tag}") == seq
        for seq, description in want["snapshots"].items():
            assert describe(load_state(repo, stream, int(seq))) == description, f"{stream}@{seq}"


def test_independent_reader_loads_the_state_dict_part_of_every_golden_job() -> None:
    expected = json.loads((GOLDEN / "v1.2" / "job" / "expected.json").read_text())
    repo = Repo(GOLDEN / "v1.2" / "job" / "repo")
    for seq, description in expected["streams"]["run"]["snapshots"].items():
        parts = dict(description["dict"])  # [[part name, what it loads as], ...]
        assert describe(load_state(repo, "run", int(seq), part="loop")) == parts["loop"], seq


def test_independent_reader_loads_what_the_writer_writes_now(tmp_path: Path) -> None:
    sys.path.insert(0, str(GOLDEN))
    import values

    import tqsnap

    url = str(tmp_path / "repo")
    states = [values.tree_state(7), values.dtype_state(8), values.body_state(9)]
    for state in states:
        tqsnap.save(url, state, stream="now")
    tqsnap.tag(url, "first", stream="now", snapshot=1)
    repo = Repo(Path(url))
    assert repo.visible("now") == [1, 2, 3] and repo.resolve("now", "tag:first") == 1
    for seq, state in enumerate(states, start=1):
        assert describe(load_state(repo, "now", seq)) == values.describe(state)


def test_independent_reader_verifies_every_item_of_every_golden_snapshot() -> None:
    for case in sorted(GOLDEN.glob("v*/*/repo")):
        repo = Repo(case)
        for stream in repo.streams():
            for seq in repo.visible(stream):
                manifest = repo.manifest(stream, seq)
                assert len(repo.items(manifest)) == len(manifest["items"]) > 0
