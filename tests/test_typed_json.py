"""Typed JSON: every writer spells non-finite floats, tuples and odd-keyed dicts one way, and
every reader still reads the spellings earlier writers left on disk."""

from __future__ import annotations

import json
import math

import pytest
import torch

import tqsnap
from tqsnap.adapters.dcp.metadata_json import decode_value, encode_value
from tqsnap.adapters.transferqueue import jsonval
from tqsnap.errors import FormatError
from tqsnap.format import typed_json

VALUE = {"nan": math.nan, "inf": math.inf, "neg": -math.inf, "pair": (1, (2, "x")), "keys": {3: "a", (4, 5): "b"}}


def _tags(tree: object) -> set[str]:
    """Every key of a one-key object anywhere in ``tree``."""
    found: set[str] = set()
    if isinstance(tree, dict):
        if len(tree) == 1:
            found |= set(tree)
        for v in tree.values():
            found |= _tags(v)
    elif isinstance(tree, list):
        for v in tree:
            found |= _tags(v)
    return found


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, tuple | list) and type(a) is type(b):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b and type(a) is type(b)


def test_dcp_and_transferqueue_values_write_the_one_spelling_and_round_trip() -> None:
    dcp_tree = encode_value(VALUE)
    tq_tree = json.loads(jsonval.dumps(VALUE))
    for tree in (dcp_tree, tq_tree):
        tags = _tags(tree)
        assert {"$float", "$tuple", "$dict"} <= tags
        assert not tags & {"$f", "$t", "$d", "float", "tuple", "items"}
    assert _same(decode_value(dcp_tree), VALUE)
    assert _same(jsonval.loads(jsonval.dumps(VALUE)), VALUE)


def test_state_dict_tree_writes_the_one_spelling_and_round_trips(tmp_path) -> None:
    url = str(tmp_path / "repo")
    state = {**VALUE, "w": torch.ones(3)}
    tqsnap.save(url, state, stream="s")
    manifest = json.loads(next((tmp_path / "repo" / "snapshots" / "s").iterdir()).read_text())
    tags = _tags(manifest["extra"]["tree"])
    assert {"$float", "$tuple", "$dict"} <= tags and not tags & {"float", "tuple", "items"}
    loaded = tqsnap.load(url, stream="s")
    assert torch.equal(loaded.pop("w"), state["w"])
    assert _same(loaded, VALUE)


@pytest.mark.parametrize(
    ("node", "value"),
    [
        ({"$f": "nan"}, math.nan),
        ({"$float": "-inf"}, -math.inf),
        ({"$t": [1, {"$t": [2]}]}, (1, (2,))),
        ({"$d": [[1, "a"], [{"$t": [2, 3]}, "b"]]}, {1: "a", (2, 3): "b"}),
        ({"$dict": [[[4, 5], "list key becomes tuple"]]}, {(4, 5): "list key becomes tuple"}),
    ],
)
def test_value_readers_accept_every_spelling_on_disk(node: object, value: object) -> None:
    assert _same(jsonval.Decoder().decode(node), value)
    assert _same(decode_value(node), value)


def test_state_tree_reader_accepts_tree_version_1_node_names() -> None:
    from tqsnap.adapters.state_dict import _TreeDecoder

    decoder = _TreeDecoder({}, {}, allow_pickle=False, version=1)
    old = {"items": [[{"v": 1}, {"tuple": [{"float": "inf"}, {"v": "x"}]}]]}
    assert decoder.decode(old) == {1: (math.inf, "x")}


@pytest.mark.parametrize("body", ["1.5", "1e999", "NaN", " nan", True, 2**60, None, ["nan"]])
def test_a_float_body_other_than_the_three_spellings_or_a_number_is_a_format_error(body: object) -> None:
    with pytest.raises(FormatError, match=r"\$float must be"):
        typed_json.decode_float(body, "tags of sample 3")
    with pytest.raises(FormatError):
        jsonval.Decoder(where="tags of sample 3").decode({"$float": body})


@pytest.mark.parametrize("node", [{"$dict": [[1]]}, {"$dict": "x"}, {"$tuple": 5}, {"$dict": [[{"a": 1}, 2]]}])
def test_malformed_typed_values_are_format_errors(node: object) -> None:
    with pytest.raises(FormatError):
        jsonval.Decoder(where="a tag").decode(node)
