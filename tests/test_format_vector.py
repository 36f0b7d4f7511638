"""The byte-exact test vector of docs/format.md ("A complete example"): the writer produces
exactly the shard and manifest bytes printed there, and a reader decodes them.

The only inputs the writer draws itself are the upload id, the write id, the repository id,
the store's clock and the save's duration; the test fixes them and nothing else.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import xxhash

import tqsnap
import tqsnap.engine.commit
import tqsnap.engine.repository
import tqsnap.engine.shards
import tqsnap.engine.writer
from tqsnap.format.body_columnar import encode_columnar
from tqsnap.format.body_columnar_read import ColumnarItems
from tqsnap.format.manifest import Item
from tqsnap.store.memory import MemoryStore

SPEC = Path(__file__).parent.parent / "docs" / "format.md"
CLOCK = 1767225600.0  # 2026-01-01T00:00:00Z
IDS = {8: "5eed5eed5eed5eed", 16: "0123456789abcdef0123456789abcdef"}


def vector_state() -> dict:
    return {"step": 7, "lr": 0.5, "w": torch.tensor([1.5, -2.0], dtype=torch.float32), "tag": b"hi"}


def _block(name: str) -> str:
    """The fenced block that follows the line ``<!-- vector:NAME -->`` in the spec."""
    m = re.search(rf"<!-- vector:{name} -->\n```[a-z]*\n(.*?)\n```", SPEC.read_text(), re.S)
    assert m, f"docs/format.md has no vector block {name!r}"
    return m.group(1)


@pytest.fixture
def fixed_writer(monkeypatch: pytest.MonkeyPatch) -> MemoryStore:
    fake_secrets = SimpleNamespace(token_hex=lambda n: IDS[n])
    for module in (tqsnap.engine.shards, tqsnap.engine.writer, tqsnap.engine.repository):
        monkeypatch.setattr(module, "secrets", fake_secrets)
    fake_time = SimpleNamespace(monotonic=lambda: 100.0, sleep=time.sleep)
    for module in (tqsnap.engine.writer, tqsnap.engine.commit):
        monkeypatch.setattr(module, "time", fake_time)
    return MemoryStore(clock=lambda: CLOCK)


def test_the_writer_produces_the_vector_bytes_exactly(fixed_writer: MemoryStore) -> None:
    store = fixed_writer
    tqsnap.save(store, vector_state(), stream="vec")
    keys = sorted(info.key for info in store.list(""))
    shard_keys = [k for k in keys if k.startswith("shards/")]
    assert keys == sorted(["tqsnap.json", "snapshots/vec/00000000000000000001.json", *shard_keys])
    assert shard_keys == [_block("shard-key")]
    assert store.get(shard_keys[0]).hex() == _block("shard-hex").replace("\n", "").replace(" ", "")
    assert store.get("snapshots/vec/00000000000000000001.json").decode() == _block("manifest")
    assert store.get("tqsnap.json").decode() == _block("config")


def test_the_vector_decodes_to_its_state(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    key = _block("shard-key")
    shard = bytes.fromhex(_block("shard-hex").replace("\n", "").replace(" ", ""))
    for name, data in (
        ("tqsnap.json", _block("config").encode()),
        ("snapshots/vec/00000000000000000001.json", _block("manifest").encode()),
        (key, shard),
    ):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    assert xxhash.xxh3_128_hexdigest(shard) == key.split("/")[2].split(".")[0]
    loaded = tqsnap.load(str(root), stream="vec")
    want = vector_state()
    assert torch.equal(loaded.pop("w"), want.pop("w"))
    assert loaded == want and type(loaded["lr"]) is float and type(loaded["step"]) is int

    import independent_reader

    repo = independent_reader.Repo(root)
    other = independent_reader.load_state(repo, "vec")
    assert other["w"].data == torch.tensor([1.5, -2.0]).numpy().tobytes() and other["tag"] == b"hi"


def columnar_vector_items() -> list:
    """Section 6.1's example: the items of section 12, ``w`` listed first."""
    manifest = json.loads(_block("manifest"))
    return [Item.from_json(d) for d in reversed(manifest["items"])]


def columnar_vector_bytes() -> bytes:
    """The body shard as section 6.1 prints it: magic, header length, header, columns at their offsets."""
    header = _block("columnar-header").encode()
    body = bytearray(b"TQSNCOL1" + len(header).to_bytes(4, "little") + header)
    spans = json.loads(header)["columns"]
    for line in _block("columnar-columns").splitlines():
        name, *hexes = line.split()
        offset, length = spans[name]
        body += bytes(offset - len(body)) + bytes.fromhex("".join(hexes))
        assert len(body) == offset + length, name
    return bytes(body)


def test_the_writer_produces_the_columnar_vector_bytes_exactly() -> None:
    assert encode_columnar(columnar_vector_items(), {"tree_version": 3}) == columnar_vector_bytes()


def test_the_columnar_vector_decodes_to_its_items() -> None:
    import independent_reader

    data = columnar_vector_bytes()
    assert len(data) == 714
    items = ColumnarItems(data, "vector")
    assert list(items) == columnar_vector_items() and items.extra == {"tree_version": 3}
    assert items.find("tag") == 1 and items.find("w") == 0
    other, extra = independent_reader.columnar_body(data)
    assert other == [i.to_json() for i in columnar_vector_items()] and extra == {"tree_version": 3}
