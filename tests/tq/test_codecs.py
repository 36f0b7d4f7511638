"""The encodings under the TransferQueue layout: typed JSON, index runs, sample blocks."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from tqsnap.adapters.transferqueue import jsonval
from tqsnap.adapters.transferqueue.blocks import decode_block, encode_block
from tqsnap.adapters.transferqueue.layout import (
    MAX_UNITS,
    count_runs,
    data_path,
    decode_runs,
    encode_runs,
    escape,
    parse_data_path,
    read_runs,
    unescape,
)
from tqsnap.errors import FormatError, PickleNotAllowedError


def _join(parts) -> memoryview:
    return memoryview(bytearray(b"".join(bytes(p) for p in parts)))


def test_typed_json_keeps_types_plain_json_loses():
    value = {
        "t": (1, [2, (3,)]),
        "ints": {1: "a", (2, 3): "b"},
        "$dollar": 1,
        "nan": float("nan"),
        "inf": -math.inf,
        "b": b"\x00\xff",
        "ba": bytearray(b"xy"),
        "set": {3, 1},
        "tensor": torch.tensor([[1, 2]], dtype=torch.int16),
        "bf16": torch.tensor([0.5], dtype=torch.bfloat16),
        "nd": np.arange(4, dtype=np.float32).reshape(2, 2),
        "np": np.int64(5),
        "size": torch.Size([2, 3]),
        "dtype": torch.float16,
        "none": None,
    }
    out = jsonval.loads(jsonval.dumps(value))
    assert out["t"] == (1, [2, (3,)]) and type(out["t"][1][1]) is tuple
    assert out["ints"] == {1: "a", (2, 3): "b"} and out["$dollar"] == 1
    assert math.isnan(out["nan"]) and out["inf"] == -math.inf
    assert out["b"] == b"\x00\xff" and type(out["ba"]) is bytearray and out["set"] == {1, 3}
    assert torch.equal(out["tensor"], value["tensor"]) and out["bf16"].dtype == torch.bfloat16
    assert np.array_equal(out["nd"], value["nd"]) and out["np"] == 5 and out["np"].dtype == np.int64
    assert out["size"] == torch.Size([2, 3]) and out["dtype"] is torch.float16 and out["none"] is None


def test_typed_json_pickles_only_when_allowed_on_both_sides():
    with pytest.raises(PickleNotAllowedError):
        jsonval.dumps({"f": Fraction(1, 3)})
    data = jsonval.dumps({"f": Fraction(1, 3)}, allow_pickle=True)
    with pytest.raises(PickleNotAllowedError):
        jsonval.loads(data)
    assert jsonval.loads(data, allow_pickle=True) == {"f": Fraction(1, 3)}


def test_runs_keep_order_and_round_trip():
    values = [5, 6, 7, 1, 2, 9, 10, 4]
    assert encode_runs(values) == [[5, 3], [1, 2], [9, 2], [4, 1]]
    assert decode_runs(encode_runs(values)) == values
    assert encode_runs([]) == []
    every_third = list(range(2, 3000, 3))  # what one of three units holds
    assert encode_runs(every_third) == [[2, 1000, 3]] and decode_runs([[2, 1000, 3]]) == every_third
    assert decode_runs(encode_runs([1, 1, 5, 3, 1])) == [1, 1, 5, 3, 1]


def test_data_paths_escape_any_name_and_parse_back():
    for name in ["plain", "a/b", "~x~1", "ü/ñ"]:
        assert unescape(escape(name)) == name
        path = data_path(name, name, 12, 1, 3)
        assert parse_data_path(path) == (name, name, 12, 1, 3)
    assert parse_data_path("c/p/x/state") is None


def test_dense_block_of_adjacent_rows_is_one_zero_copy_view():
    batch = torch.arange(24, dtype=torch.float32).reshape(6, 4)
    rows = list(batch.unbind(0))
    enc = encode_block([0, 3, 6, 9, 12, 15], rows, allow_pickle=False, where="t")
    assert enc.meta["enc"] == "dense" and enc.shape == [6, 4] and len(enc.parts) == 1
    gis, values = decode_block(enc.meta, enc.dtype, enc.shape, _join(enc.parts))
    assert gis == [0, 3, 6, 9, 12, 15] and all(torch.equal(a, b) for a, b in zip(rows, values, strict=True))


def test_jagged_block_keeps_each_shape_and_subsets_copy_out():
    values = [torch.full((n, 2), n, dtype=torch.int64) for n in (1, 3, 0, 2)]
    enc = encode_block([1, 2, 3, 4], values, allow_pickle=False, where="t")
    assert enc.meta["enc"] == "jagged"
    gis, out = decode_block(enc.meta, enc.dtype, enc.shape, _join(enc.parts), wanted={2, 4})
    assert gis == [2, 4] and torch.equal(out[0], values[1]) and torch.equal(out[1], values[3])


def test_mixed_or_non_tensor_values_become_json():
    values = ["s", {"k": [1, 2]}, 3.5, None, torch.tensor([1.0])]
    enc = encode_block([0, 1, 2, 3, 4], values, allow_pickle=False, where="t")
    assert enc.kind == "blob" and enc.meta["enc"] == "json" and "pickle" not in enc.meta
    _, out = decode_block(enc.meta, enc.dtype, enc.shape, _join(enc.parts))
    assert out[:4] == values[:4] and torch.equal(out[4], values[4])


def _runs_reference(values: list[int]) -> list[list[int]]:
    """Greedy runs, one value at a time: what encode_runs must return for any input."""
    runs: list[list[int]] = []
    for v in values:
        if runs and runs[-1][1] == 1 and v != runs[-1][0]:
            runs[-1][1] = 2
            if v - runs[-1][0] != 1:
                runs[-1].append(v - runs[-1][0])
            continue
        if runs and runs[-1][1] > 1:
            start, count, *step = runs[-1]
            if v == start + count * (step[0] if step else 1):
                runs[-1][1] += 1
                continue
        runs.append([v, 1])
    return runs


def test_long_inputs_and_arrays_cut_the_same_runs_as_short_ones():
    rng = np.random.default_rng(7)
    cases = [list(range(0, 3000, 3)), list(range(100, 0, -1)), [5] * 70]
    for _ in range(300):
        n = int(rng.integers(60, 400))
        pieces = []
        while sum(map(len, pieces)) < n:
            step = int(rng.choice([1, 2, 3, -1, 0]))
            pieces.append([int(rng.integers(0, 10**6)) + step * i for i in range(int(rng.integers(1, 40)))])
        cases.append([v for p in pieces for v in p][:n])
    for values in cases:
        expected = _runs_reference(values)
        assert encode_runs(values) == expected
        assert encode_runs(np.asarray(values, dtype=np.int64)) == expected
        assert decode_runs(expected) == values


def test_jagged_block_of_1d_samples_lists_lengths():
    values = [torch.arange(n, dtype=torch.int64) for n in (3, 0, 5, 1)]
    enc = encode_block([0, 3, 6, 9], values, allow_pickle=False, where="t")
    assert enc.meta["enc"] == "jagged" and enc.meta["lens"] == [3, 0, 5, 1] and "shapes" not in enc.meta
    gis, out = decode_block(enc.meta, enc.dtype, enc.shape, _join(enc.parts))
    assert gis == [0, 3, 6, 9] and all(torch.equal(a, b) for a, b in zip(values, out, strict=True))
    # Layout 1 wrote every jagged block with shapes: still read.
    old = {"enc": "jagged", "gi": enc.meta["gi"], "shapes": [[3], [0], [5], [1]]}
    _, out = decode_block(old, enc.dtype, enc.shape, _join(enc.parts))
    assert all(torch.equal(a, b) for a, b in zip(values, out, strict=True))


@pytest.mark.parametrize(
    "bad",
    [
        {"lens": [3, -1, 7]},  # sums right, one length negative
        {"lens": [3, "0", 6]},
        {"lens": [9]},  # one length for four samples
        {"shapes": [[3], [0], [-5, -1], [1]]},
        {"shapes": [[3], [0], "5", [1]]},
        {"lens": [3, 0, 5, 2]},  # more elements than the data holds
    ],
)
def test_malformed_jagged_block_is_a_format_error(bad):
    values = [torch.arange(n, dtype=torch.int64) for n in (3, 0, 5, 1)]
    enc = encode_block([0, 3, 6, 9], values, allow_pickle=False, where="t")
    meta = {"enc": "jagged", "gi": enc.meta["gi"], **bad}
    with pytest.raises(FormatError):
        decode_block(meta, enc.dtype, enc.shape, _join(enc.parts), where="t")


def test_dense_block_of_strided_or_scattered_rows_is_exact():
    base = torch.arange(40, dtype=torch.float32).reshape(5, 8)
    rows = [base[:, 1], base[:, 5], torch.ones(5), base[:, 2].clone()]  # non-contiguous and separate
    enc = encode_block([2, 4, 6, 8], rows, allow_pickle=False, where="t")
    assert enc.meta["enc"] == "dense" and enc.shape == [4, 5]
    _, out = decode_block(enc.meta, enc.dtype, enc.shape, _join(enc.parts))
    assert all(torch.equal(a, b) for a, b in zip(rows, out, strict=True))


def test_data_paths_take_ascii_digits_only_and_a_unit_below_its_count():
    assert parse_data_path("d/p/f/b00000001/u1of3") == ("p", "f", 1, 1, 3)
    for bad in ("d/p/f/b00000001/u\u00b2of3", "d/p/f/b0000000\u0661/u0of3", "d/p/f/b00000001/u3of3",
                f"d/p/f/b1/u0of{MAX_UNITS + 1}", "d/p/f/b1/u0of3/x", "d/p/f/b/u0of3"):
        assert parse_data_path(bad) is None, bad


def test_runs_read_from_a_snapshot_are_counted_and_checked_before_they_are_made():
    assert read_runs([[2, 3, 3], [20, 2]], "w", hi=100, limit=5) == [2, 5, 8, 20, 21]
    with pytest.raises(FormatError, match="more than the 10"):
        read_runs([[0, 10**10]], "w", hi=10**11, limit=10)
    for bad in ([[0, 5, 0]], [[0, 0]], [[-1, 2]], [["0", 2]], [[0, True]], [[0, 1, 2, 3]], {"0": 1},
                [[5, 10, -1]], [[0, 101]], [[1.0, 2]]):
        with pytest.raises(FormatError):
            count_runs(bad, "w", hi=100)


def _controller_state():
    from tqsnap.adapters.transferqueue.controller_state import (
        ControllerState,
        FieldState,
        IndexManagerState,
        PartitionState,
        PartitionStatus,
        SamplerState,
    )

    production = torch.zeros(6, 2, dtype=torch.int8)
    production[[1, 2, 4], 0] = 1
    status = PartitionStatus(production, {"learner": torch.tensor([0, 1, 0, 0, 0, 0], dtype=torch.int8)}, {"x": 0, "y": 1})
    partition = PartitionState(
        partition_id="p/1",
        created_at=12.5,
        status=status,
        global_indexes={1, 2, 4},
        pre_allocated={5},
        field_metadata={"x": FieldState({1, 2, 4}, "torch.float32", (3,), False, False, {1: [3], 2: [3], 4: [3]})},
        field_custom_backend_meta={},
        custom_meta={1: {"score": float("nan")}, 2: {}, 4: {"t": (1, 2)}},
        keys_mapping={"a": 1, ("k", 2): 2},
        revert_keys_mapping={1: "a", 2: ("k", 2)},
    )
    im = IndexManagerState({"p/1": {1, 2, 4, 5}}, [3, 0], 6, {1, 2, 4, 5})
    return ControllerState({"p/1": partition}, im, SamplerState("m.Sampler", {"_states": {"p/1": [1, 2]}}))


def test_controller_state_encodes_and_decodes_to_the_same_typed_state():
    from tqsnap.adapters.transferqueue import controller_codec, controller_decode
    from tqsnap.format.manifest import Item

    state = _controller_state()
    specs = controller_codec.controller_items(
        controller_codec.encode(state, allow_pickle=False), {p: s.status for p, s in state.partitions.items()}
    )
    values = {s.path: bytes(s.data) for s in specs}
    items = {s.path: Item(s.path, s.kind, len(values[s.path]), [], s.dtype, s.shape, s.meta or {}) for s in specs}
    assert list(values) == [  # save order: each partition's items, then the global ones
        "c/p/p~11/state",
        "c/p/p~11/production",
        "c/p/p~11/consumption/learner",
        "c/index_manager",
        "c/sampler",
    ]

    back = controller_decode.decode(["p/1"], values, items, snapshot="s@1", allow_pickle=False)

    p, q = state.partitions["p/1"], back.partitions["p/1"]
    assert torch.equal(p.status.production, q.status.production)
    assert torch.equal(p.status.consumption["learner"], q.status.consumption["learner"])
    assert q.status.field_name_mapping == p.status.field_name_mapping
    assert (q.global_indexes, q.pre_allocated, q.field_metadata) == (p.global_indexes, p.pre_allocated, p.field_metadata)
    assert math.isnan(q.custom_meta[1]["score"]) and q.custom_meta[4] == {"t": (1, 2)} and q.custom_meta[2] == {}
    assert q.keys_mapping == p.keys_mapping and q.revert_keys_mapping == p.revert_keys_mapping
    assert back.index_manager == state.index_manager and back.sampler == state.sampler


def test_a_controller_with_more_indexes_than_a_restore_accepts_is_not_encoded():
    from tqsnap.adapters.transferqueue import controller_codec
    from tqsnap.adapters.transferqueue.layout import MAX_INDEXES

    state = _controller_state()
    state.index_manager.global_index_counter = MAX_INDEXES + 1
    with pytest.raises(FormatError, match="global indexes"):
        controller_codec.encode(state, allow_pickle=False)


def test_a_value_nested_deeper_than_a_restore_reads_is_refused_at_the_save():
    deep: list = []
    for _ in range(2000):  # deeper than Python's recursion limit
        deep = [deep]
    with pytest.raises(FormatError, match="nests deeper"):
        jsonval.dumps({"tag": deep}, where="tag of sample 3")
    ok: object = 1
    for _ in range(jsonval.MAX_VALUE_DEPTH // 3):
        ok = {"k": ok}
    assert jsonval.loads(jsonval.dumps(ok)) == ok  # as deep as allowed: written and read back


@pytest.mark.parametrize(
    ("values", "gi"),
    [
        (["ok", "bad \ud800 text"], 11),  # plain strings: no typed JSON encoder in between
        ([{"k": ["x", "\udfff"]}, 1], 10),
        ([(1, 2), {"\ud800key": 1}], 11),  # a dict key
    ],
)
def test_a_lone_surrogate_in_a_value_is_a_format_error_naming_field_and_sample(values, gi):
    where = "field 'text' of partition 'p'"
    with pytest.raises(FormatError, match=f"{where}: the value of the sample with global index {gi} holds") as info:
        encode_block([10, 11][: len(values)], values, allow_pickle=False, where=where)
    assert "lone surrogate" in str(info.value) and not isinstance(info.value, UnicodeError)


def test_a_lone_surrogate_in_controller_metadata_is_a_format_error_naming_the_place():
    from tqsnap.adapters.transferqueue import controller_codec

    state = _controller_state()
    state.partitions["p/1"].custom_meta[2] = {"note": "half \ud83d of an emoji"}
    with pytest.raises(FormatError, match=r"metadata of partition 'p/1' at \['custom_meta'\]\['v'\]\[1\]\['note'\]"):
        controller_codec.encode(state, allow_pickle=False)
    state = _controller_state()
    state.sampler.state["_states"]["\udc80"] = [1]
    with pytest.raises(FormatError, match=r"sampler state at .*'\\udc80'"):
        controller_codec.encode(state, allow_pickle=False)
    assert jsonval.loads(jsonval.dumps({"fine": "\U0001f600"})) == {"fine": "\U0001f600"}  # a pair is Unicode
