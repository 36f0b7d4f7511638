"""Tags through the real command: create, move, delete, list; old-style tags; forget and tags."""

from __future__ import annotations

import json

import torch
from cli_subprocess import Target, json_lines, json_out, target_fixture  # noqa: F401 - the fixture
from cli_subprocess import tqsnap as run

import tqsnap
from tqsnap.engine import Repository
from tqsnap.format.manifest import SnapshotId, Tag
from tqsnap.store import open_store


def _three_snapshots(t: Target) -> None:
    for value in (1.0, 2.0, 3.0):  # seqs 1, 2, 3: each holds its own seq as its value
        tqsnap.save(t.url, {"w": torch.full((64,), value)}, stream="run", storage_options=t.storage_options())


def test_tag_move_delete_and_list(target: Target) -> None:
    _three_snapshots(target)
    made = json_out(run(target, "tag", "best", "run@1", "--json"))
    assert made["snapshot"] == "run@1" and made["version"] == 0

    again = run(target, "tag", "best", "run@1")
    assert again.returncode == 0, "tagging the same snapshot again is idempotent"
    refused = run(target, "tag", "best", "run@2")
    assert refused.returncode == 2 and "--move" in refused.stderr
    assert json_lines(run(target, "tags", "--json"))[0]["snapshot"] == "run@1", "a refused move changes nothing"

    moved = json_out(run(target, "tag", "best", "run@2", "--move", "--json"))
    assert moved["snapshot"] == "run@2" and moved["version"] == 1
    assert run(target, "show", "--stream", "run", "--snapshot", "tag:best", "--json").returncode == 0
    loaded = tqsnap.load(target.url, stream="run", snapshot="tag:best", storage_options=target.storage_options())
    assert torch.equal(loaded["w"], torch.full((64,), 2.0)), "tag:best now loads the moved-to snapshot"

    json_out(run(target, "tag", "nightly", "run@3", "--json"))
    listed = json_lines(run(target, "tags", "--json"))
    assert [(t["name"], t["snapshot"]) for t in listed] == [("best", "run@2"), ("nightly", "run@3")]
    snaps = json_lines(run(target, "snapshots", "--json"))
    assert {s["seq"]: s["tags"] for s in snaps} == {1: [], 2: ["best"], 3: ["nightly"]}

    gone = run(target, "untag", "best")
    assert gone.returncode == 0 and "run@2" in gone.stdout
    assert [t["name"] for t in json_lines(run(target, "tags", "--json"))] == ["nightly"]
    assert run(target, "untag", "best").returncode == 3, "deleting a deleted tag: not found"
    assert run(target, "show", "--stream", "run", "--snapshot", "tag:best").returncode == 3
    recreated = json_out(run(target, "tag", "best", "run@1", "--json"))
    assert recreated["version"] == 3, "a tag re-created after deletion continues its version chain"


def test_versions_are_separate_immutable_objects(tmp_path) -> None:
    url = str(tmp_path / "repo")
    _three_snapshots(Target(url))
    repo = Repository.open(url)
    repo.tag("t", "run", 1)
    repo.tag("t", "run", 2, move=True)
    repo.untag("t")
    keys = sorted(i.key for i in open_store(url).list("tags/"))
    assert keys == ["tags/t.json", "tags/t/00000000000000000001.json", "tags/t/00000000000000000002.json"]
    first = json.loads((tmp_path / "repo/tags/t.json").read_text())
    assert first["target"] == {"stream": "run", "seq": 1} and "version" not in first, "format 1.0 bytes"
    last = json.loads((tmp_path / "repo/tags/t/00000000000000000002.json").read_text())
    assert last["target"] is None and last["version"] == 2 and last["format_version"] == "1.1"


def test_an_old_style_tag_still_resolves_and_can_move(tmp_path) -> None:
    url = str(tmp_path / "repo")
    _three_snapshots(Target(url))
    store = open_store(url)
    # what tqsnap with format 1.0 wrote: one write-once object, no versions
    store.put_if_absent("tags/old.json", Tag("old", SnapshotId("run", 1), store.now()).encode())
    t = Target(url)
    assert json_lines(run(t, "tags", "--json"))[0]["snapshot"] == "run@1"
    assert Repository.open(url).resolve("run", "tag:old") == SnapshotId("run", 1)
    assert json_out(run(t, "tag", "old", "run@2", "--move", "--json"))["version"] == 1
    assert Repository.open(url).resolve("run", "tag:old") == SnapshotId("run", 2)


def test_forget_keeps_tagged_snapshots_unless_untag(target: Target) -> None:
    _three_snapshots(target)
    assert run(target, "tag", "release", "run@1").returncode == 0
    kept = json_out(run(target, "forget", "--keep-last", "1", "--json"))
    by_seq = {s["seq"]: s for s in kept["snapshots"]}
    assert by_seq[1]["action"] == "keep" and by_seq[1]["reasons"] == ["pinned by tag release"]
    assert by_seq[2]["action"] == "remove"
    assert [s["seq"] for s in json_lines(run(target, "snapshots", "--json"))] == [1, 3]

    dropped = json_out(run(target, "forget", "--keep-last", "1", "--untag", "--json"))
    assert dropped["tags_removed"] == ["release"]
    assert [s["seq"] for s in json_lines(run(target, "snapshots", "--json"))] == [3]
    assert json_lines(run(target, "tags", "--json")) == [], "no tag is left naming a forgotten snapshot"


def test_tag_versions_match_the_published_schema(tmp_path) -> None:
    from test_schema import _validator

    url = str(tmp_path / "repo")
    _three_snapshots(Target(url))
    repo = Repository.open(url)
    repo.tag("t", "run", 1)
    repo.tag("t", "run", 2, move=True)
    repo.untag("t")
    validator = _validator("tag")
    for path in sorted((tmp_path / "repo/tags").rglob("*.json")):
        validator.validate(json.loads(path.read_text()))


def test_a_tag_naming_a_forgotten_snapshot_is_listed_as_such(tmp_path) -> None:
    url = str(tmp_path / "repo")
    t = Target(url)
    _three_snapshots(t)
    repo = Repository.open(url)
    repo.tag("old", "run", 1)
    repo.write_tombstone("run", 1, "forgotten by a tool that did not know tags pin")
    (listed,) = json_lines(run(t, "tags", "--json"))
    assert listed["name"] == "old" and listed["target_visible"] is False
    assert "forgotten" in run(t, "tags").stdout
    assert run(t, "show", "--snapshot", "run@tag:old").returncode == 3
    assert run(t, "untag", "old").returncode == 0
