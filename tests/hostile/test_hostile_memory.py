"""Declared sizes, counts and nesting never decide an allocation: each case runs in a child whose
address space is capped at 1.5 GiB above what it already uses, and must end in a typed error
naming the object (never MemoryError, ENOMEM or a killed process)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import xxhash
import zstandard

from .kit import CONFIG, MANIFEST_2, TAG_KEY, Scene, fingerprint, run_python

GiB = 1 << 30
CAP = 3 * GiB // 2

LIMIT = f"""
import resource
def _vm_bytes():
    for line in open("/proc/self/status"):
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
_cap = _vm_bytes() + {CAP}
resource.setrlimit(resource.RLIMIT_AS, (_cap, _cap))
"""

ACTIONS = {
    "show": "Repository.open(url).load_manifest('s', 2)",
    "read": "Repository.open(url).reader('s').read_items()",
    "verify": "_r = Repository.open(url).verify('s'); assert not _r.ok, _r; raise_report(_r)",
    "gc": "collect_garbage(Repository.open(url))",
    "open": "Repository.open(url)",
    "tag": "Repository.open(url).resolve('s', 'tag:keep')",
}


def run_capped(scene: Scene, action: str) -> dict[str, Any]:
    code = f"""
from tqsnap.engine import Repository
from tqsnap.engine.gc import collect_garbage
from tqsnap.errors import CorruptShardError
url = {scene.url!r}
def raise_report(report):  # verify names a damaged shard in its report instead of raising
    raise CorruptShardError(report.corrupt[0], "-", "reported by verify")
{LIMIT}
{ACTIONS[action]}
result = {{"ok": True}}
"""
    return run_python(code, timeout=120)


def assert_refused(scene: Scene, action: str, names: str) -> dict[str, Any]:
    before = fingerprint(scene.repo)
    got = run_capped(scene, action)
    assert got.get("tqsnap") is True, got
    assert got["error"] not in ("MemoryError", "OSError"), got
    assert names in got["message"], got
    assert fingerprint(scene.repo) == before
    return got


def manifest_text(scene: Scene) -> str:
    return scene.path(MANIFEST_2).read_text()


def write_manifest(scene: Scene, doc: dict[str, Any]) -> None:
    scene.write(MANIFEST_2, json.dumps(doc).encode())


def pad_manifest(scene: Scene, text: str) -> None:
    doc = scene.doc()
    scene.write(MANIFEST_2, json.dumps(doc).replace('"metadata": {}', '"metadata": {"x": ' + text + "}").encode())


# --- the documents themselves ------------------------------------------------------------------


@pytest.mark.parametrize("action", ["show", "gc"])
def test_a_manifest_over_the_size_limit_is_refused_by_size(scene: Scene, action: str) -> None:
    pad_manifest(scene, '"' + "x" * (65 << 20) + '"')
    assert_refused(scene, action, MANIFEST_2)


@pytest.mark.parametrize(
    "body",
    [
        "[" + "[]," * 10_000_000 + "[]]",  # 30 MB, 10 million lists
        "[" + '"ab",' * 9_000_000 + '"ab"]',  # 45 MB, 9 million strings
        "[" * 20_000_000 + "]" * 20_000_000,  # 40 MB deep
        "{" + ",".join(f'"k{i}":0' for i in range(9_000_000)) + "}",
    ],
    ids=["lists", "strings", "deep", "keys"],
)
def test_a_manifest_of_millions_of_values_is_refused_before_parsing(scene: Scene, body: str) -> None:
    pad_manifest(scene, body)
    assert_refused(scene, "show", MANIFEST_2)


def test_a_manifest_of_more_items_than_the_limit_is_refused(scene: Scene, monkeypatch: pytest.MonkeyPatch) -> None:
    # The limit is a million items; lowered here so the case takes milliseconds, not a minute.
    from tqsnap.engine import Repository
    from tqsnap.errors import ManifestError
    from tqsnap.format import manifest

    monkeypatch.setattr(manifest, "MAX_ITEMS", 10)
    doc = scene.doc()
    doc["items"] = [{"path": f"i{i}", "kind": "bytes", "size": 0, "extents": []} for i in range(11)]
    write_manifest(scene, doc)
    with pytest.raises(ManifestError, match="items") as info:
        Repository.open(scene.url).load_manifest("s", 2)
    assert MANIFEST_2 in str(info.value)


@pytest.mark.parametrize(("key", "action"), [(CONFIG, "open"), (TAG_KEY, "tag"), ("tombstones/s/00000000000000000001.json", "show")])
def test_a_small_document_of_50_mb_is_refused_by_size(scene: Scene, key: str, action: str) -> None:
    scene.write(key, b'{"format_version": "1.0", "pad": "' + b"p" * (50 << 20) + b'"}')
    if key.startswith("tombstones"):
        code = f"""
from tqsnap.engine import Repository
url = {scene.url!r}
{LIMIT}
Repository.open(url).tombstones()
result = {{"ok": True}}
"""
        got = run_python(code, timeout=120)
        assert got.get("tqsnap") is True and key in got["message"], got
        return
    assert_refused(scene, action, key)


# --- shards and bodies whose declared size is not their real size ------------------------------------


def _retarget_shard(scene: Scene, *, codec: str, size: int, stored_size: int | None = None, data: bytes | None = None) -> str:
    """Point manifest 2's only shard at a new object; return its key."""
    doc = scene.doc()
    ref = doc["shards"][0]
    old = scene.path(ref["key"])
    body = data if data is not None else old.read_bytes()
    digest = ref["hash"] if data is None else xxhash.xxh3_128_hexdigest(b"")  # never reached if bounded
    suffix = "" if codec == "raw" else f".{codec}"
    key = f"shards/{digest[:2]}/{digest}.feedfacefeedface{suffix}"
    scene.write(key, body)
    ref.update(key=key, hash=digest, codec=codec, size=size, stored_size=stored_size if stored_size is not None else size)
    write_manifest(scene, doc)
    return key


@pytest.mark.parametrize("action", ["read", "verify"])
def test_a_raw_shard_declaring_one_tebibyte_is_refused_before_allocation(scene: Scene, action: str) -> None:
    key = _retarget_shard(scene, codec="raw", size=1 << 40)
    assert_refused(scene, action, key)


@pytest.mark.parametrize("action", ["read", "verify"])
def test_a_zstd_shard_declaring_one_tebibyte_is_refused_before_allocation(scene: Scene, action: str) -> None:
    real = scene.path(scene.shard_keys(2)[0]).stat().st_size
    key = _retarget_shard(scene, codec="zstd", size=1 << 40, stored_size=real)
    assert_refused(scene, action, key)


def test_a_zstd_bomb_is_refused_before_it_expands(scene: Scene) -> None:
    # An honest frame: 3 GiB of zeros (twice the cap) in a few dozen KiB, its size declared
    # truthfully.
    compressor = zstandard.ZstdCompressor(level=1)
    chunk = bytes(64 << 20)
    out = compressor.compressobj()
    parts = [out.compress(chunk) for _ in range(48)]
    parts.append(out.flush())
    bomb = b"".join(parts)
    key = _retarget_shard(scene, codec="zstd", size=48 * len(chunk), stored_size=len(bomb), data=bomb)
    assert_refused(scene, "read", key)


def _body_manifest(scene: Scene, body: bytes, declared: int | None = None) -> str:
    """Make manifest 2 keep its items in a zstd body shard holding ``body``."""
    doc = scene.doc()
    digest = xxhash.xxh3_128_hexdigest(body)
    stored = zstandard.ZstdCompressor(level=3).compress(body)
    key = f"shards/{digest[:2]}/{digest}.0badb0d10badb0d1.zstd"
    scene.write(key, stored)
    doc["shards"].append({"key": key, "hash": digest, "size": declared or len(body), "stored_size": len(stored), "codec": "zstd"})
    doc["body_shard"] = len(doc["shards"]) - 1
    doc.pop("items")
    doc.pop("extra")
    write_manifest(scene, doc)
    return key


def test_a_body_declaring_more_than_the_body_limit_is_refused(scene: Scene) -> None:
    _body_manifest(scene, b'{"items": [], "extra": {}}', declared=100 << 20)
    assert_refused(scene, "show", MANIFEST_2)


def test_a_small_body_that_expands_to_millions_of_values_is_refused(scene: Scene) -> None:
    body = b'{"items": [' + b"0," * 25_000_000 + b'0], "extra": {}}'  # 50 MB, compresses to KiB
    key = _body_manifest(scene, body)
    assert Path(scene.path(key)).stat().st_size < 100_000
    assert_refused(scene, "read", key)
