"""The columnar manifest body (docs/format.md section 6.1): a round trip through the real engine
on local disk and on the S3 servers, and one crafted body per validation rule, each refused
with a ManifestError that names the body shard's key."""

from __future__ import annotations

import json
import struct
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

import tqsnap
import tqsnap.engine.writer as writer_mod
from tqsnap.engine import Repository
from tqsnap.engine.reader import SnapshotReader
from tqsnap.errors import FormatError, ManifestError, UnsupportedFormatError
from tqsnap.format.body_columnar import (
    MAX_COLUMNAR_ITEMS,
    Columns,
    assemble,
    build_columns,
    encode_columnar,
)
from tqsnap.format.body_columnar_read import LOOKUPS_BEFORE_INDEX, ColumnarItems, ItemsByPath
from tqsnap.format.manifest import Extent, Item, Manifest, ShardRef
from tqsnap.format.version import check_version
from tqsnap.store import open_store

KEY = "shards/ab/ab000000000000000000000000000000.0123456789abcdef.zstd"
SHARD_SIZES = [16, 16]
H = "0123456789abcdef0123456789abcdef"


def sample_items() -> list[Item]:
    """Stored out of path order, so that ``path_sort`` is not the identity."""
    return [
        Item("d", "tensor", 8, [Extent(1, 3, 8)], dtype="int64", shape=[]),
        Item("a", "tensor", 8, [Extent(0, 0, 8)], dtype="float32", shape=[2], hash=H),
        Item("c", "bytes", 0, []),
        Item("b/é", "blob", 5, [Extent(0, 8, 2), Extent(1, 0, 3)], meta={"enc": "json"}, hash="f" * 32),
    ]


def decode(data: bytes) -> ColumnarItems:
    items = ColumnarItems(data, KEY)
    items.check_shards(SHARD_SIZES, "snapshots/s/00000000000000000001.json")
    return items


def test_a_body_decodes_to_the_items_it_was_encoded_from() -> None:
    items = decode(encode_columnar(sample_items(), {"tree": [1, {"$float": 2.0}]}))
    assert list(items) == sample_items() and items[-1] == sample_items()[-1]
    assert items.extra == {"tree": [1, {"$float": 2.0}]}
    by_path = ItemsByPath(items)
    assert by_path["b/é"].meta == {"enc": "json"} and "a" in by_path and "zz" not in by_path
    assert list(by_path) == ["d", "a", "c", "b/é"] and len(by_path) == 4
    with pytest.raises(KeyError):
        by_path["\ud800"]


def test_lookups_by_path_switch_to_one_index_after_many() -> None:
    items = decode(encode_columnar(sample_items(), {}))
    for _ in range(LOOKUPS_BEFORE_INDEX + 2):
        assert items.find("c") == 2 and items.find("nope") is None
    assert items._index is not None and items.find("b/é") == 3


def test_the_writer_refuses_two_items_with_one_path() -> None:
    items = sample_items() + [Item("a", "bytes", 0, [])]
    with pytest.raises(FormatError, match="twice"):
        encode_columnar(items, {})


# --- crafted bodies: one broken rule each ------------------------------------------------------


def column(cols: Columns, name: str, dtype: str) -> np.ndarray:
    return np.frombuffer(cols.data[name], dtype=dtype).copy()


def put(cols: Columns, name: str, values: np.ndarray) -> None:
    cols.data[name] = values.tobytes()


def set_at(name: str, dtype: str, index: int, value: int) -> Callable[[Columns], None]:
    def mutate(cols: Columns) -> None:
        a = column(cols, name, dtype)
        a[index] = value
        put(cols, name, a)

    return mutate


def replace_bytes(name: str, old: bytes, new: bytes) -> Callable[[Columns], None]:
    def mutate(cols: Columns) -> None:
        assert old in cols.data[name] and len(old) == len(new)
        cols.data[name] = cols.data[name].replace(old, new)

    return mutate


def swap_sort(cols: Columns) -> None:
    a = column(cols, "path_sort", "<u4")
    a[[0, 1]] = a[[1, 0]]
    put(cols, "path_sort", a)


def cut_character(cols: Columns) -> None:
    o = column(cols, "path_offsets", "<u4")  # paths d, a, c, b/é: move b/é's start into the é
    o[3] = cols.data["path_data"].index("é".encode()) + 1
    put(cols, "path_offsets", o)


def extents_short(cols: Columns) -> None:
    a = column(cols, "extent_length", "<u8")
    a[0] -= 1
    put(cols, "extent_length", a)


def truncate(name: str) -> Callable[[Columns], None]:
    def mutate(cols: Columns) -> None:
        cols.data[name] = cols.data[name][:-1]

    return mutate


RULES: dict[str, tuple[Callable[[Columns], None], str]] = {
    "offsets start at 0": (set_at("path_offsets", "<u4", 0, 1), "does not start at 0"),
    "offsets never decrease": (set_at("path_offsets", "<u4", 1, 3), "never decrease"),
    "offsets end at their data": (lambda c: c.data.update(path_data=c.data["path_data"] + b"x"), "ends at"),
    "kind codes below the dictionary": (set_at("kind", "u1", 0, 9), "column 'kind' holds code 9"),
    "dtype codes below the dictionary": (set_at("dtype", "u1", 2, 200), "column 'dtype' holds code 200"),
    "no undefined flags": (set_at("flags", "u1", 0, 4 | 1), "undefined bit"),
    "dimensions only with a shape": (set_at("flags", "u1", 1, 2), "dimensions without a shape"),
    "no hash bytes without a hash": (set_at("hash", "u1", 2 * 16, 1), "non-zero bytes"),
    "sizes within the byte limit": (set_at("size", "<u8", 2, 1 << 49), "exceeds"),
    "extents no longer than a shard": (set_at("extent_length", "<u8", 0, (1 << 31) + 1), "length exceeds"),
    "extent lengths add up to the size": (extents_short, "do not add up"),
    "path_sort is a permutation": (set_at("path_sort", "<u4", 0, 0), "not a permutation"),
    "path_sort is in path order": (swap_sort, "not in path order"),
    "paths are unique": (replace_bytes("path_data", b"d", b"c"), "twice"),
    "paths are UTF-8": (replace_bytes("path_data", "é".encode(), b"\xff\xfe"), "not UTF-8"),
    "offsets cut no character": (cut_character, "cuts a UTF-8 character"),
    "meta rows are objects": (replace_bytes("meta_data", b'{"enc":"json"}', b'["enc","json"]'), "JSON object"),
    "columns as long as the counts need": (truncate("size"), "has 31 bytes, but the header's counts need 32"),
    "items within the limit": (lambda c: setattr(c, "n", MAX_COLUMNAR_ITEMS + 1), "outside"),
}


def test_every_rule_is_refused_by_a_body_that_breaks_only_it() -> None:
    decode(assemble(build_columns(sample_items(), {})))  # the unbroken body is accepted
    for rule, (mutate, message) in RULES.items():
        cols = build_columns(sample_items(), {})
        mutate(cols)
        with pytest.raises(ManifestError, match=message) as err:
            decode(assemble(cols))
        assert KEY in str(err.value), rule


def test_too_many_dimensions_are_refused() -> None:
    items = [Item("x", "tensor", 0, [], dtype="uint8", shape=[0] * 65), Item("y", "bytes", 0, [])]
    with pytest.raises(ManifestError, match="more than 64 dimensions"):
        decode(encode_columnar(items, {}))


def test_extents_are_checked_against_the_manifest_shard_table() -> None:
    items = ColumnarItems(encode_columnar(sample_items(), {}), KEY)
    with pytest.raises(ManifestError, match="names shard 1, but the manifest lists 1 shards"):
        items.check_shards([16], "m")
    with pytest.raises(ManifestError, match="outside its shard"):
        items.check_shards([16, 10], "m")


def test_damaged_framing_is_refused() -> None:
    good = encode_columnar(sample_items(), {})
    with pytest.raises(ManifestError, match="does not start with"):
        decode(b"{" + good[1:])
    with pytest.raises(ManifestError, match="header claims"):
        decode(good[:8] + struct.pack("<I", len(good)) + good[12:])
    with pytest.raises(ManifestError, match="lies outside the columns"):
        decode(good[:-1])


def test_a_body_claiming_millions_of_items_is_refused_before_allocating_for_them() -> None:
    cols = build_columns(sample_items(), {})
    cols.n = 9_000_000  # the columns still hold four items: about 40 bytes per claimed row missing
    body = assemble(cols)
    tracemalloc.start()
    try:
        with pytest.raises(ManifestError, match="the header's counts need 36000004"):
            ColumnarItems(body, KEY)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024, peak  # nothing sized by the claim (9M rows would be 100s of MB)


# --- versions -----------------------------------------------------------------------------------


def manifest_doc(**changes: object) -> bytes:
    ref = ShardRef("shards/ab/ab000000000000000000000000000000.0123456789abcdef", "ab" + "0" * 30, 10, 10)
    m = Manifest("state_dict", "s", 1, None, "0" * 32, 1.0, 1.0, [ref], [], body_shard=0,
                 format_version="2.0", body_format="columnar/1")
    doc = m.to_json() | changes
    return json.dumps(doc).encode()


def test_a_manifest_names_its_body_format_and_unknown_ones_are_refused_as_newer() -> None:
    assert Manifest.decode(manifest_doc(), "k").body_format == "columnar/1"
    with pytest.raises(UnsupportedFormatError, match="columnar/9"):
        Manifest.decode(manifest_doc(body_format="columnar/9"), "k")
    with pytest.raises(UnsupportedFormatError, match="upgrade tqsnap"):  # what a 1.x reader does
        check_version(json.loads(manifest_doc()), "k", (1,))
    with pytest.raises(UnsupportedFormatError):  # other objects stay major 1
        check_version({"format_version": "2.0"}, "tags/x.json")


# --- the real engine ----------------------------------------------------------------------------


def many_items_state() -> dict:
    state: dict = {"step": 12, "blobs": [bytes([i % 251]) * (i % 7) for i in range(60)]}
    for i in range(240):
        dtype = (torch.float32, torch.bfloat16, torch.int64, torch.bool)[i % 4]
        state[f"layer{i:03d}.weight"] = (torch.arange(i % 9 + 1) * (i + 1)).to(dtype)
    state["big"] = torch.arange(300_000, dtype=torch.float32)  # a large item with its own shard
    return state


def assert_same(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for name, value in want.items():
        if isinstance(value, torch.Tensor):
            assert got[name].dtype == value.dtype and torch.equal(got[name], value), name
        else:
            assert got[name] == value, name


@pytest.fixture
def columnar_from_100(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer_mod, "COLUMNAR_BODY_MIN_ITEMS", 100)


def round_trip(url: str, options: dict[str, str]) -> None:
    state = many_items_state()
    tqsnap.save(url, state, stream="s", storage_options=options)
    store = open_store(url, **options)
    doc = json.loads(store.get("snapshots/s/00000000000000000001.json"))
    assert doc["format_version"] == "2.0" and doc["body_format"] == "columnar/1" and "items" not in doc
    assert_same(tqsnap.load(url, stream="s", storage_options=options), state)
    repo = Repository.open(url, storage_options=options)
    reader = SnapshotReader(repo.store, repo.load_manifest("s", 1))
    assert isinstance(reader.manifest.items, ColumnarItems) and len(reader.items) == 301
    assert bytes(reader.read_item("layer007.weight")) == state["layer007.weight"].numpy().tobytes()
    tqsnap.save(url, state, stream="s", storage_options=options)  # a second save reuses every shard
    assert_same(tqsnap.load(url, stream="s", storage_options=options), state)


def test_round_trip_on_local_disk(tmp_path: Path, columnar_from_100: None) -> None:
    round_trip(str(tmp_path / "repo"), {})


def test_round_trip_on_s3(s3_repo_url: tuple[str, dict[str, str]], columnar_from_100: None) -> None:
    round_trip(*s3_repo_url)


def test_snapshots_below_the_threshold_keep_the_json_body(tmp_path: Path) -> None:
    url = str(tmp_path / "repo")
    tqsnap.save(url, many_items_state(), stream="s")
    doc = json.loads(open_store(url).get("snapshots/s/00000000000000000001.json"))
    assert doc["format_version"] == "1.2" and "body_format" not in doc


def test_a_manifest_longer_than_readers_accept_is_never_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seen at 5M items and 1.25M shards: the shard table made a manifest readers refuse."""
    import tqsnap.format.strict as strict_mod

    url = str(tmp_path / "repo")
    monkeypatch.setattr(strict_mod, "MAX_MANIFEST_BYTES", 600)
    with pytest.raises(FormatError, match="larger chunks"):
        tqsnap.save(url, {f"w{i}": torch.full((300_000,), float(i)) for i in range(4)}, stream="s")
    assert [info.key for info in open_store(url).list("snapshots/")] == []
