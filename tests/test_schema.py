"""docs/schema/ describes what the writer writes: every object of every golden repository and
of a fresh repository written now validates, and the schemas refuse what the spec forbids."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import torch
import zstandard
from referencing import Registry, Resource

import tqsnap

SCHEMAS = Path(__file__).parent.parent / "docs" / "schema"
GOLDEN = Path(__file__).parent / "golden"
SEQ_FILE = re.compile(r"[0-9]{20}\.json")


def _registry() -> Registry:
    resources = []
    for path in SCHEMAS.glob("*.schema.json"):
        resource = Resource.from_contents(json.loads(path.read_text()))
        resources += [(path.name, resource), (resource.id(), resource)]
    return Registry().with_resources(resources)


def _validator(name: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, registry=_registry())


def _objects(root: Path) -> list[tuple[str, Path]]:
    """(schema name, path) for every JSON object of a local repository."""
    out = [("repo-config", root / "tqsnap.json")]
    out += [("manifest", p) for p in sorted(root.glob("snapshots/*/*.json")) if SEQ_FILE.fullmatch(p.name)]
    out += [("tombstone", p) for p in sorted(root.glob("tombstones/*/*.json"))]
    out += [("tag", p) for p in sorted(root.glob("tags/*.json"))]
    return out


def _check_repository(root: Path) -> int:
    checked = 0
    for schema, path in _objects(root):
        doc = json.loads(path.read_text())
        _validator(schema).validate(doc)
        checked += 1
        if schema == "manifest" and doc.get("body_shard") is not None:
            ref = doc["shards"][doc["body_shard"]]
            raw = (root / ref["key"]).read_bytes()
            body = zstandard.ZstdDecompressor().decompress(raw, max_output_size=ref["size"]) if ref["codec"] == "zstd" else raw
            if doc.get("body_format") == "columnar/1":  # a JSON header after 8 magic bytes and its length
                header = body[12 : 12 + int.from_bytes(body[8:12], "little")]
                _validator("columnar-header").validate(json.loads(header))
            else:
                _validator("body").validate(json.loads(body))
            checked += 1
    return checked


@pytest.mark.parametrize("repo", sorted(GOLDEN.glob("v*/*/repo")), ids=lambda p: f"{p.parent.parent.name}-{p.parent.name}")
def test_every_object_of_a_golden_repository_matches_its_schema(repo: Path) -> None:
    assert _check_repository(repo) >= 2  # a config and at least one manifest


def test_every_object_the_writer_writes_now_matches_its_schema(tmp_path: Path) -> None:
    url = str(tmp_path / "repo")
    tqsnap.save(url, {"w": torch.ones(4), "step": 1}, stream="run")
    tqsnap.save(url, {f"p{i}": torch.arange(3) for i in range(3000)}, stream="run")  # a body shard
    tqsnap.save(url, {"w": torch.zeros(4)}, stream="run")
    tqsnap.tag(url, "best", stream="run", snapshot=1)
    tqsnap.forget(url, streams="run", keep_last=1)
    root = Path(url)
    kinds = [schema for schema, _ in _objects(root)]
    assert {"repo-config", "manifest", "tombstone", "tag"} <= set(kinds)
    assert _check_repository(root) == len(kinds) + 1  # and the one body shard


@pytest.mark.parametrize(
    ("schema", "doc"),
    [
        ("manifest", {"seq": "1"}),
        ("manifest", {"seq": 0}),
        ("manifest", {"stream": "bad\n"}),
        ("manifest", {"shards": [{"key": "tqsnap.json", "hash": "0" * 32, "size": 1, "stored_size": 1, "codec": "raw"}]}),
        ("manifest", {"format_version": "2.0"}),
        ("manifest", {"items": [{"path": "x", "kind": "tensor", "size": -1, "extents": []}]}),
        ("manifest", {"items": [{"path": "x", "kind": "bytes", "size": 1, "extents": ["0,0,1"]}]}),
        ("repo-config", {"grace_seconds": 0}),
        ("tag", {"target": {"stream": "run", "seq": 1.5}}),
    ],
)
def test_schemas_refuse_what_the_format_forbids(schema: str, doc: dict[str, Any], tmp_path: Path) -> None:
    url = str(tmp_path / "repo")
    tqsnap.save(url, {"w": torch.ones(2)}, stream="run")
    tqsnap.tag(url, "t", stream="run", snapshot=1)
    good = {
        "manifest": json.loads((tmp_path / "repo/snapshots/run/00000000000000000001.json").read_text()),
        "repo-config": json.loads((tmp_path / "repo/tqsnap.json").read_text()),
        "tag": json.loads((tmp_path / "repo/tags/t.json").read_text()),
    }[schema]
    validator = _validator(schema)
    validator.validate(good)
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(good | doc)


def _state_trees(root: Path) -> list[dict[str, Any]]:
    """The ``extra`` of every state_dict manifest of tree version 3 in a repository (bodies too)."""
    out = []
    for path in sorted(root.glob("snapshots/*/*.json")):
        doc = json.loads(path.read_text())
        if doc["kind"] != "state_dict":
            continue
        extra = doc.get("extra")
        if doc.get("body_shard") is not None:
            ref = doc["shards"][doc["body_shard"]]
            raw = (root / ref["key"]).read_bytes()
            if ref["codec"] == "zstd":
                raw = zstandard.ZstdDecompressor().decompress(raw, max_output_size=ref["size"])
            extra = json.loads(raw)["extra"]
        if extra.get("tree_version") == 3:
            out.append(extra)
    return out


def test_state_trees_of_format_1_2_match_the_state_tree_schema(tmp_path: Path) -> None:
    trees = [t for repo in sorted(GOLDEN.glob("v1.2/state_dict/repo")) for t in _state_trees(repo)]
    url = str(tmp_path / "repo")
    tqsnap.save(url, {"a": [1, 2.0, 2**70, float("nan")], (1, 2): b"x", "t": torch.ones(2)}, stream="s")
    trees += _state_trees(Path(url))
    assert len(trees) >= 6
    validator = _validator("state-tree")
    for extra in trees:
        validator.validate(extra)
    for bad in ({"v": 3}, {"int": 2**53}, {"$int": "01"}, {"dict": {"a": {"v": 1}}}, {"v": 1, "int": 1}, {"float": "nan"}):
        with pytest.raises(jsonschema.ValidationError):
            validator.validate({"tree_version": 3, "tree": bad})


def test_the_dtype_enum_is_the_writers_table() -> None:
    from tqsnap.format.dtypes import ELEMENT_SIZE

    common = json.loads((SCHEMAS / "common.schema.json").read_text())
    assert common["$defs"]["item"]["properties"]["dtype"]["enum"] == list(ELEMENT_SIZE)
