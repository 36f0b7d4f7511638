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
from tqsnap.errors import FormatError, UnsupportedTensorError
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


# --- format 1.2: what any JSON parser reads the same ----------------------------------------

PORTABLE = {
    "whole": [2.0, -0.0, 1e300, 0.5],
    "ints": [2**53 - 1, 2**53, -(2**63), 10**30],
    "keys": {None: 1, True: 2, 2.5: 3, (1, (2,)): 4, 2**64: 5},
    "order": {"z": 1, "$a": 2, "": 3},
}


def _numbers(tree: object) -> list[object]:
    """Every bare JSON number in ``tree`` outside a ``$float`` body (which is a float whatever its spelling)."""
    if isinstance(tree, dict) and list(tree) == ["$float"]:
        return []
    if isinstance(tree, dict):
        return [n for v in tree.values() for n in _numbers(v)]
    if isinstance(tree, list):
        return [n for v in tree for n in _numbers(v)]
    return [tree] if type(tree) in (int, float) else []


def test_values_in_every_kind_need_no_number_spelling_and_no_unsafe_integer() -> None:
    """A bare number is an int exactly when it has no fraction, and fits a double exactly."""
    trees = [encode_value(PORTABLE), json.loads(jsonval.dumps(PORTABLE))]
    for tree in trees:
        for n in _numbers(tree):
            assert abs(n) <= typed_json.SAFE_INT
            assert isinstance(n, int) or not float(n).is_integer(), n
    assert _same(decode_value(trees[0]), PORTABLE)
    assert _same(jsonval.loads(jsonval.dumps(PORTABLE)), PORTABLE)


def test_state_tree_version_3_types_every_leaf_and_keeps_order_in_arrays(tmp_path) -> None:
    url = str(tmp_path / "repo")
    tqsnap.save(url, {**PORTABLE, "w": torch.ones(2)}, stream="s")
    raw = next((tmp_path / "repo" / "snapshots" / "s").iterdir()).read_bytes()
    manifest = json.loads(raw)
    tree = manifest["extra"]["tree"]
    assert manifest["format_version"] == "1.2" and manifest["extra"]["tree_version"] == 3
    assert [k for k, _ in tree["dict"]][:4] == ["whole", "ints", "keys", "order"]  # an array, not members
    assert _numbers(tree) and all(abs(n) <= typed_json.SAFE_INT for n in _numbers(tree))
    assert "None" not in raw.decode() and "(1, (2,))" not in raw.decode()  # no Python str() anywhere
    loaded = tqsnap.load(url, stream="s")
    loaded.pop("w")
    assert _same(loaded, PORTABLE)


@pytest.mark.parametrize(
    ("state", "metadata", "match"),
    [
        ({"s": "\ud800"}, None, "lone surrogate"),
        ({"\udfff": 1}, None, "lone surrogate"),
        ({"w": torch.ones(1)}, {"step": 2**60}, "outside"),
        ({"w": torch.ones(1)}, {1: "int key"}, "not a string"),
        ({"w": torch.ones(1)}, {"x": float("nan")}, "JSON cannot hold"),
        ({"w": torch.ones(1)}, {"note": "\ud800"}, "lone surrogate"),
    ],
)
def test_the_writer_refuses_what_the_format_cannot_hold_and_writes_nothing(state, metadata, match, tmp_path) -> None:
    url = str(tmp_path / "repo")
    with pytest.raises(FormatError, match=match):
        tqsnap.save(url, state, stream="s", metadata=metadata)
    assert not list((tmp_path / "repo").glob("shards/*/*")) and not (tmp_path / "repo" / "snapshots").exists()


def test_dtype_names_come_from_the_closed_table(tmp_path) -> None:
    from tqsnap.adapters.tensors import dtype_from_name

    assert dtype_from_name("bfloat16") is torch.bfloat16
    for alias in ("float", "long", "half", "qint8", "Tensor"):
        with pytest.raises(FormatError, match="unknown tensor dtype"):
            dtype_from_name(alias)
    with pytest.raises(TypeError, match="quantized"):
        tqsnap.save(str(tmp_path / "repo"), {"q": torch.quantize_per_tensor(torch.ones(2), 0.1, 0, torch.qint8)}, stream="s")


@pytest.mark.parametrize(
    ("tensor", "match"),
    [
        (torch.quantize_per_tensor(torch.ones(2), 0.1, 0, torch.qint8), r"layers/0/q: a quantized \(torch.qint8\)"),
        (torch.ones(2, 2).to_sparse(), r"layers/0/q: a torch.sparse_coo tensor has no plain bytes"),
    ],
)
def test_a_tensor_the_format_cannot_hold_is_a_typed_error_naming_its_path(tmp_path, tensor, match) -> None:
    """Typed (a FormatError, and still the TypeError callers caught), named, nothing written."""
    url = str(tmp_path / "repo")
    with pytest.raises(UnsupportedTensorError, match=match) as info:
        tqsnap.save(url, {"step": 1, "layers": [{"q": tensor}]}, stream="s")
    assert isinstance(info.value, FormatError) and isinstance(info.value, TypeError)
    assert tqsnap.snapshots(url, "s") == [] and not list((tmp_path / "repo").glob("shards/*/*"))


@pytest.mark.parametrize(
    "node",
    [
        {"v": 3},  # version 3 types numbers
        {"int": 2**53},
        {"int": 1.5},
        {"$int": "01"},
        {"$int": 5},
        {"dict": {"a": {"v": "x"}}},  # an object: order would be JSON member order
        {"dict": [["a", {"v": 1}], ["a", {"v": 2}]]},
        {"$dict": [[{"int": 1}, {"v": "a"}], [{"int": 1}, {"v": "b"}]]},
        {"items": [[{"int": 1}, {"v": "a"}]]},  # a version 1 name
        {"bytes": "w"},  # names a tensor item
    ],
)
def test_state_tree_version_3_refuses_what_it_never_writes(node: object) -> None:
    from types import SimpleNamespace

    from tqsnap.adapters.state_dict import _TreeDecoder

    decoder = _TreeDecoder({"w": memoryview(b"\0" * 4)}, {"w": SimpleNamespace(kind="tensor")}, allow_pickle=False)
    with pytest.raises(FormatError):
        decoder.decode(node)


@pytest.mark.parametrize("node", [{"$frob": 1}, {"$int": "12a"}, {"$float": True}])
def test_an_unknown_or_malformed_typed_value_is_refused_never_read_as_a_plain_dict(node: object) -> None:
    with pytest.raises(FormatError):
        decode_value({"x": node})
    with pytest.raises(FormatError):
        jsonval.Decoder(where="a value").decode({"x": node})
