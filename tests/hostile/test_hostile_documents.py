"""Crafted manifests, body fields, tombstones, tags and ``tqsnap.json``: each refused with a typed
error naming the object, before anything is allocated for it or changed because of it."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest

import tqsnap
from tqsnap.engine import Repository
from tqsnap.engine.gc import collect_garbage
from tqsnap.errors import ManifestError, UnsafeConfigError, UnsupportedFormatError

from .kit import CONFIG, MANIFEST_1, MANIFEST_2, STREAM, TAG_KEY, Scene, behaves, refuses

Doc = dict[str, Any]
Mutation = Callable[[Doc], Doc | bytes]


def setting(path: str, value: Any) -> Mutation:
    """Set ``a.b.0.c`` (dict keys and list indexes) to ``value``."""

    def mutate(doc: Doc) -> Doc:
        doc = copy.deepcopy(doc)
        *head, last = path.split(".")
        node: Any = doc
        for part in head:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
        return doc

    return mutate


def raw(text: Callable[[str], str]) -> Mutation:
    """Edit the manifest's JSON text (for what ``json.dumps`` would never write)."""
    return lambda doc: text(json.dumps(doc)).encode()


def dropping(field: str) -> Mutation:
    return lambda doc: {k: v for k, v in doc.items() if k != field}


def deep(depth: int) -> Mutation:
    return raw(lambda t: t.replace('"metadata": {}', '"metadata": {"x": ' + "[" * depth + "]" * depth + "}"))


def shard_key_to(key: str) -> Mutation:
    return setting("shards.0.key", key)


def _dup_item(doc: Doc) -> Doc:
    doc = copy.deepcopy(doc)
    doc["items"].append(copy.deepcopy(doc["items"][0]))
    return doc


def _h2_mismatch(doc: Doc) -> Doc:
    doc = copy.deepcopy(doc)
    key = doc["shards"][0]["key"]
    doc["shards"][0]["key"] = "shards/00/" + key.split("/")[2] if not key.startswith("shards/00/") else key
    return doc


def _raw_codec(doc: Doc) -> Doc:
    doc = copy.deepcopy(doc)
    ref = doc["shards"][0]
    ref["codec"] = "raw"
    ref["key"] = ref["key"].removesuffix(".zstd")
    return doc


MANIFEST_CASES: dict[str, Mutation] = {
    # wrong JSON types, never coerced
    "seq-as-string": setting("seq", "2"),
    "seq-as-float": setting("seq", 2.0),
    "seq-fraction": setting("seq", 1.9),
    "seq-bool": setting("seq", True),
    "seq-negative": setting("seq", -2),
    "seq-huge": setting("seq", 10**30),
    "stream-number": setting("stream", 7),
    "stream-newline": setting("stream", "s\n"),
    "kind-number": setting("kind", 1),
    "write-id-null": setting("write_id", None),
    "parent-seq-string": setting("parent.seq", "1"),
    "parent-stream-escape": setting("parent.stream", "../x"),
    "parent-list": setting("parent", [STREAM, 1]),
    "metadata-list": setting("metadata", []),
    "extra-string": setting("extra", "x"),
    "shards-object": setting("shards", {}),
    "items-object": setting("items", {"a": 1}),
    "item-string": setting("items.0", "b"),
    "item-path-number": setting("items.0.path", 5),
    "item-dtype-number": setting("items.0.dtype", 7),
    "item-shape-string": setting("items.0.shape", "3,4"),
    "item-shape-negative": setting("items.0.shape", [-3, -4]),
    "item-shape-float": setting("items.0.shape", [3.0, 4]),
    "item-hash-not-hex": setting("items.0.hash", "zz" * 16),
    "item-meta-list": setting("items.0.meta", [1]),
    "duplicate-item-paths": _dup_item,
    # numbers: NaN, overflow, out of range
    "nan-in-metadata": raw(lambda t: t.replace('"metadata": {}', '"metadata": {"x": NaN}')),
    "infinity-in-stats": raw(lambda t: t.replace('"stats": {', '"stats": {"x": Infinity, ')),
    "minus-infinity": raw(lambda t: t.replace('"metadata": {}', '"metadata": {"x": -Infinity}')),
    "overflowing-float": raw(lambda t: t.replace('"metadata": {}', '"metadata": {"x": 1e400}')),
    "started-at-1e300": setting("started_at", 1e300),
    "committed-at-negative": setting("committed_at", -5.0),
    "committed-at-string": setting("committed_at", "now"),
    "size-10e30": setting("shards.0.size", 10**30),
    "size-negative": setting("shards.0.size", -1),
    "stored-size-negative": setting("shards.0.stored_size", -5),
    "stored-size-string": setting("shards.0.stored_size", "2245"),
    "size-float": setting("shards.0.size", 4048.5),
    "item-size-bool": setting("items.0.size", True),
    # extents
    "extents-string": setting("items.0.extents", "0,0,48"),
    "extent-string": setting("items.0.extents.0", "0,0,48"),
    "extent-pair": setting("items.0.extents.0", [0, 0]),
    "extent-object": setting("items.0.extents.0", {"shard": 0, "offset": 0, "length": 48}),
    "extent-floats": setting("items.0.extents.0", [0, 0.0, 48]),
    "extent-negative-offset": setting("items.0.extents.0", [0, -48, 96]),
    "extent-outside-shard": setting("items.0.extents.0", [0, 4040, 48]),
    "extent-shard-index": setting("items.0.extents.0", [5, 0, 48]),
    "extent-bool-index": setting("items.0.extents.0", [False, 0, 48]),
    # shards that are not shards
    "shard-is-a-manifest": shard_key_to(MANIFEST_1),
    "shard-is-the-config": shard_key_to(CONFIG),
    "shard-is-a-tag": shard_key_to(TAG_KEY),
    "shard-is-a-tombstone": shard_key_to("tombstones/s/00000000000000000001.json"),
    "shard-escapes": shard_key_to("../outside/secret.bin"),
    "shard-absolute": shard_key_to("/etc/passwd"),
    "shard-nul": shard_key_to("shards/ab/\x00"),
    "shard-trailing-newline": raw(lambda t: t.replace('.zstd"', '.zstd\\n"', 1)),
    "shard-prefix-mismatch": _h2_mismatch,
    "shard-hash-mismatch": setting("shards.0.hash", "0" * 32),
    "shard-codec-unknown": setting("shards.0.codec", "gzip"),
    "raw-shard-sizes-disagree": _raw_codec,
    "body-shard-out-of-range": setting("body_shard", 3),
    "body-shard-bool": setting("body_shard", True),
    # the document itself
    "duplicate-json-key": raw(lambda t: t.replace('"seq": 2,', '"seq": 2, "seq": 1,')),
    "not-json": lambda doc: b"{not json",
    "empty": lambda doc: b"",
    "array": lambda doc: b"[]",
    "binary": lambda doc: bytes(range(256)),
    "utf8-broken": lambda doc: b'{"format_version": "\xff\xfe"}',
    "nesting-200": deep(200),
    "nesting-100000": deep(100_000),
    "missing-shards": dropping("shards"),
    "missing-seq": dropping("seq"),
    # versions
    "version-superscript": setting("format_version", "\u00b9.0"),
    "version-arabic-indic": setting("format_version", "\u0661.0"),
    "version-number": setting("format_version", 1.0),
    "version-trailing-newline": setting("format_version", "1.0\n"),
    "version-space": setting("format_version", " 1.0"),
}

UNSUPPORTED = {"version-major-3": setting("format_version", "3.0")}


def craft(scene: Scene, key: str, mutation: Mutation) -> None:
    scene.write(key, mutation(scene.doc(key)))


@pytest.mark.parametrize("case", list(MANIFEST_CASES))
def test_a_crafted_manifest_is_refused(scene: Scene, case: str) -> None:
    craft(scene, MANIFEST_2, MANIFEST_CASES[case])
    refuses(scene, lambda: Repository.open(scene.url).load_manifest(STREAM, 2), ManifestError, names=MANIFEST_2)


def test_a_newer_major_version_is_refused(scene: Scene) -> None:
    craft(scene, MANIFEST_2, UNSUPPORTED["version-major-3"])
    refuses(scene, lambda: Repository.open(scene.url).load_manifest(STREAM, 2), UnsupportedFormatError, MANIFEST_2)


ACTIONS: dict[str, Callable[[Scene], Any]] = {
    "load": lambda s: tqsnap.load(s.url, stream=STREAM),
    "snapshots": lambda s: Repository.open(s.url).snapshots(),
    "verify": lambda s: Repository.open(s.url).verify(STREAM),
    "gc": lambda s: collect_garbage(Repository.open(s.url)),
}


@pytest.mark.parametrize("action", list(ACTIONS))
@pytest.mark.parametrize("case", ["nan-in-metadata", "shard-is-a-manifest", "nesting-100000", "size-10e30"])
def test_every_reader_refuses_a_crafted_manifest(scene: Scene, case: str, action: str) -> None:
    scene.age_all_shards()  # gc could delete, if it went on despite the bad manifest
    craft(scene, MANIFEST_2, MANIFEST_CASES[case])
    refuses(scene, lambda: ACTIONS[action](scene), ManifestError, names=MANIFEST_2)


def test_an_oversized_manifest_is_refused_without_reading_it_whole(scene: Scene) -> None:
    doc = scene.doc(MANIFEST_2)
    doc["metadata"] = {"pad": " " * (65 << 20)}
    craft(scene, MANIFEST_2, lambda d: doc)
    err = refuses(scene, lambda: Repository.open(scene.url).load_manifest(STREAM, 2), ManifestError, MANIFEST_2)
    assert "limit" in str(err)
    refuses(scene, lambda: collect_garbage(Repository.open(scene.url)), ManifestError, MANIFEST_2)


def test_a_manifest_of_too_many_values_is_refused_before_parsing(scene: Scene) -> None:
    craft(scene, MANIFEST_2, raw(lambda t: t.replace('"metadata": {}', '"metadata": {"x": [' + "[]," * 9_000_000 + "[]]}")))
    err = refuses(scene, lambda: Repository.open(scene.url).load_manifest(STREAM, 2), ManifestError, MANIFEST_2)
    assert "values" in str(err)


# --- tombstones and tags ---------------------------------------------------------------------------

TOMBSTONE = "tombstones/s/00000000000000000001.json"
GOOD_TOMBSTONE: Doc = {"format_version": "1.0", "stream": "s", "seq": 1, "created_at": 1.7e9, "reason": "x"}

TOMBSTONE_CASES: dict[str, bytes] = {
    "nan-created-at": json.dumps(GOOD_TOMBSTONE).replace("1700000000.0", "NaN").encode(),
    "seq-string": json.dumps({**GOOD_TOMBSTONE, "seq": "1"}).encode(),
    "seq-bool": json.dumps({**GOOD_TOMBSTONE, "seq": True}).encode(),
    "stream-escape": json.dumps({**GOOD_TOMBSTONE, "stream": "../s"}).encode(),
    "created-at-1e300": json.dumps({**GOOD_TOMBSTONE, "created_at": 1e300}).encode(),
    "reason-object": json.dumps({**GOOD_TOMBSTONE, "reason": {}}).encode(),
    "deep": (b'{"format_version": "1.0", "stream": "s", "seq": 1, "created_at": 1, "x": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"),
    "version-superscript": json.dumps({**GOOD_TOMBSTONE, "format_version": "\u00b9.0"}).encode(),
    "too-big": json.dumps({**GOOD_TOMBSTONE, "reason": "r" * (2 << 20)}).encode(),
}


@pytest.mark.parametrize("case", list(TOMBSTONE_CASES))
def test_a_crafted_tombstone_is_refused(scene: Scene, case: str) -> None:
    scene.write(TOMBSTONE, TOMBSTONE_CASES[case])
    refuses(scene, lambda: Repository.open(scene.url).tombstones(), ManifestError, names=TOMBSTONE)


GOOD_TAG: Doc = {"format_version": "1.0", "name": "keep", "target": {"stream": "s", "seq": 1}, "created_at": 1.7e9}

TAG_CASES: dict[str, bytes] = {
    "target-seq-string": json.dumps({**GOOD_TAG, "target": {"stream": "s", "seq": "1"}}).encode(),
    "target-seq-float": json.dumps({**GOOD_TAG, "target": {"stream": "s", "seq": 1.0}}).encode(),
    "target-null": json.dumps({**GOOD_TAG, "target": None}).encode(),
    "target-list": json.dumps({**GOOD_TAG, "target": ["s", 1]}).encode(),
    "name-newline": json.dumps({**GOOD_TAG, "name": "keep\n"}).encode(),
    "created-at-infinity": json.dumps(GOOD_TAG).replace("1700000000.0", "Infinity").encode(),
    "deep": (b'{"format_version": "1.0", "name": "keep", "x": ' + b"{\"a\":" * 30_000 + b"1" + b"}" * 30_000 + b"}"),
    "duplicate-key": json.dumps(GOOD_TAG).replace('"name": "keep"', '"name": "keep", "name": "other"').encode(),
    "array": b"[1, 2]",
    "name-mismatch": json.dumps({**GOOD_TAG, "name": "other"}).encode(),
}


@pytest.mark.parametrize("case", list(TAG_CASES))
def test_a_crafted_tag_is_refused(scene: Scene, case: str) -> None:
    scene.write(TAG_KEY, TAG_CASES[case])
    refuses(scene, lambda: Repository.open(scene.url).resolve(STREAM, "tag:keep"), ManifestError, names=TAG_KEY)


# --- tqsnap.json ---------------------------------------------------------------------------------

CONFIG_CASES: dict[str, Callable[[Doc], Doc | bytes]] = {
    "grace-nan": raw(lambda t: t.replace('"grace_seconds": 7200.0', '"grace_seconds": NaN')),
    "grace-infinity": raw(lambda t: t.replace('"grace_seconds": 7200.0', '"grace_seconds": Infinity')),
    "grace-1e400": raw(lambda t: t.replace('"grace_seconds": 7200.0', '"grace_seconds": 1e400')),
    "grace-negative": setting("grace_seconds", -1.0),
    "grace-string": setting("grace_seconds", "86400"),
    "grace-bool": setting("grace_seconds", True),
    "grace-1e300": setting("grace_seconds", 1e300),
    "write-duration-nan": raw(lambda t: t.replace('"max_write_duration_seconds": 1800.0', '"max_write_duration_seconds": NaN')),
    "write-duration-10e30": setting("max_write_duration_seconds", 10**30),
    "hash-unknown": setting("hash", "md5"),
    "version-superscript": setting("format_version", "\u00b9.0"),
    "created-at-nan": raw(lambda t: t.replace('"created_at": ', '"created_at": NaN, "x": ')),
    "duplicate-grace": raw(lambda t: t.replace('"grace_seconds": 7200.0', '"grace_seconds": 7200.0, "grace_seconds": 1')),
    "deep": raw(lambda t: t.replace('"hash"', '"x": ' + "[" * 10_000 + "]" * 10_000 + ', "hash"')),
    "too-big": raw(lambda t: t.replace('"hash"', '"x": "' + "p" * (2 << 20) + '", "hash"')),
    "repo-id-object": setting("repo_id", {}),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_a_crafted_config_is_refused(scene: Scene, case: str) -> None:
    text = scene.path(CONFIG).read_text()
    scene.write(CONFIG, CONFIG_CASES[case](json.loads(text)))
    refuses(scene, lambda: Repository.open(scene.url), ManifestError, names=CONFIG)


@pytest.mark.parametrize("action", ["gc", "load"])
def test_a_nan_grace_never_reaches_gc_or_a_writer(scene: Scene, action: str) -> None:
    scene.age_all_shards()
    text = scene.path(CONFIG).read_text()
    scene.write(CONFIG, CONFIG_CASES["grace-nan"](json.loads(text)))
    refuses(scene, lambda: ACTIONS[action](scene), ManifestError, names=CONFIG)


@pytest.mark.parametrize("grace", [float("nan"), float("inf"), -1.0, True, "nan", "1e9", "\u0669s", 10**30, None])
def test_init_refuses_a_bad_grace_and_creates_nothing(scene: Scene, grace: Any) -> None:
    path = scene.base / "new-repo"
    with pytest.raises(UnsafeConfigError):
        tqsnap.init_repo(str(path), grace=grace)
    assert not path.exists()


@pytest.mark.parametrize("duration", [float("nan"), float("-inf"), "-5m", "5 m\n"])
def test_init_refuses_a_bad_write_duration(scene: Scene, duration: Any) -> None:
    path = scene.base / "new-repo"
    with pytest.raises(UnsafeConfigError):
        tqsnap.init_repo(str(path), max_write_duration=duration)
    assert not path.exists()


# --- well-formed JSON that the state_dict loader must still refuse ---------------------------------

LOAD_CASES: dict[str, Mutation] = {
    "tensor-without-shape": lambda d: {**d, "items": [{k: v for k, v in i.items() if k != "shape"} for i in d["items"]]},
    "tensor-without-dtype": lambda d: {**d, "items": [{k: v for k, v in i.items() if k != "dtype"} for i in d["items"]]},
    "unknown-dtype": setting("items.0.dtype", "float99"),
    "shape-disagrees-with-size": setting("items.0.shape", [3, 5]),
    "huge-shape": setting("items.0.shape", [2**40, 2**40]),
    "tree-node-number": setting("extra.tree", {"dict": 5}),
    "tree-unknown-node": setting("extra.tree", {"frobnicate": []}),
    "tree-names-missing-item": setting("extra.tree", {"dict": [["w", {"tensor": "nope"}]]}),
    "tree-key-unhashable": setting("extra.tree", {"$dict": [[{"dict": []}, {"v": 1}]]}),
    "tree-dict-as-object": setting("extra.tree", {"dict": {"w": {"v": 1}}}),  # tree version 3 keeps order in arrays
    "tree-names-wrong-kind": setting("extra.tree", {"dict": [["w", {"bytes": "w"}]]}),
    "tree-version-string": setting("extra.tree_version", "2"),
}


@pytest.mark.parametrize("case", list(LOAD_CASES))
def test_a_crafted_state_dict_snapshot_is_refused_by_load(scene: Scene, case: str) -> None:
    craft(scene, MANIFEST_2, LOAD_CASES[case])
    refuses(scene, lambda: tqsnap.load(scene.url, stream=STREAM), names="s@2")


def test_a_deep_but_legal_state_tree_loads(scene: Scene) -> None:
    deep = '{"dict": [["y", ' * 35 + '{"int": 1}' + "]]}" * 35  # three JSON levels a dict: 111 in all
    craft(scene, MANIFEST_2, raw(lambda t: t.replace('"tree": {"dict": [', '"tree": {"dict": [["x", ' + deep + "], ")))
    state = behaves(scene, lambda: tqsnap.load(scene.url, stream=STREAM))
    node = state["x"]
    for _ in range(34):
        node = node["y"]
    assert node == {"y": 1} and float(state["w"][1]) == 2.0


@pytest.mark.parametrize("action", ["load", "verify"])
def test_a_shard_longer_than_its_stored_size_is_refused(scene: Scene, action: str) -> None:
    key = scene.doc(MANIFEST_2)["shards"][0]["key"]
    with open(scene.path(key), "ab") as f:
        f.write(b"trailing bytes")
    if action == "verify":
        report = Repository.open(scene.url).verify(STREAM)
        assert not report.ok and report.corrupt == [key]
    else:
        refuses(scene, lambda: tqsnap.load(scene.url, stream=STREAM), names=key)
