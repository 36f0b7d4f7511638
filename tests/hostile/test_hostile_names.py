"""Snapshot selectors, stream and tag names, and listed file names that are almost right."""

from __future__ import annotations

import shutil
from typing import Any

import pytest
import torch

import tqsnap
from tqsnap.engine import Repository
from tqsnap.engine.gc import collect_garbage
from tqsnap.errors import InvalidNameError, SnapshotNotFoundError

from .kit import MANIFEST_2, STREAM, Scene, behaves, fingerprint, refuses

BAD_SELECTORS: list[Any] = [
    1.9,
    1.0,
    True,
    False,
    " 1 ",
    "1 ",
    "+1",
    "-1",
    -1,
    "1.0",
    "0x1",
    "1_0",
    "\u0661",  # ARABIC-INDIC DIGIT ONE
    "\u00b9",  # SUPERSCRIPT ONE
    "\uff11",  # FULLWIDTH DIGIT ONE
    float("inf"),
    float("nan"),
    10**30,
    b"1",
    None,
    "",
    "latest\n",
    "LATEST",
]


@pytest.mark.parametrize("selector", BAD_SELECTORS, ids=[repr(s)[:16] for s in BAD_SELECTORS])
def test_a_malformed_selector_is_refused(scene: Scene, selector: Any) -> None:
    err = refuses(scene, lambda: tqsnap.load(scene.url, stream=STREAM, snapshot=selector), SnapshotNotFoundError)
    assert repr(selector)[:10] in str(err)


@pytest.mark.parametrize(("selector", "seq"), [(1, 1), ("1", 1), (2, 2), ("00002", 2), ("latest", 2), ("tag:keep", 1)])
def test_a_valid_selector_resolves(scene: Scene, selector: Any, seq: int) -> None:
    state = behaves(scene, lambda: tqsnap.load(scene.url, stream=STREAM, snapshot=selector))
    assert float(state["w"][1]) == float(seq)


BAD_NAMES = ["s\n", "../s", "s/x", "", ".s", "s" * 200, "s\x00", "s\\x", " s", "\u0455"]


@pytest.mark.parametrize("name", BAD_NAMES, ids=[repr(n)[:12] for n in BAD_NAMES])
def test_a_malformed_stream_name_is_refused(scene: Scene, name: str) -> None:
    refuses(scene, lambda: tqsnap.load(scene.url, stream=name), InvalidNameError)


@pytest.mark.parametrize("name", ["keep\n", "../keep", "k/eep", ""], ids=repr)
def test_a_malformed_tag_name_is_refused(scene: Scene, name: str) -> None:
    refuses(scene, lambda: tqsnap.tag(scene.url, name, stream=STREAM, snapshot=1), InvalidNameError)


# --- files whose names are almost a manifest's --------------------------------------------------

ALMOST = [
    "snapshots/s/" + "0" * 19 + "\u00b2.json",  # str.isdigit takes '²'
    "snapshots/s/" + "\u0669" * 20 + ".json",  # ARABIC-INDIC NINE
    "snapshots/s/" + "0" * 18 + "99.json\n",
    "snapshots/s/" + "0" * 18 + "99.json.tmp",
    "snapshots/s/99.json",
    "snapshots/s/" + "0" * 18 + "-9.json",
    "snapshots/s\n/" + "0" * 18 + "01.json",
    "snapshots/s t/" + "0" * 18 + "01.json",
    "tombstones/s/" + "0" * 19 + "\u00b9.json",
    "tombstones/s/" + "0" * 18 + "02.json\n",
    "tags/keep\n.json",
    "shards/ab/not-a-shard",
]


def plant(scene: Scene, key: str) -> None:
    path = scene.path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(scene.path(MANIFEST_2), path)


@pytest.mark.parametrize("key", ALMOST, ids=[repr(k[-14:]) for k in ALMOST])
def test_an_almost_manifest_name_is_not_a_snapshot(scene: Scene, key: str) -> None:
    plant(scene, key)
    repo = Repository.open(scene.url)
    infos = behaves(scene, repo.snapshots)
    assert [(i.stream, i.seq) for i in infos] == [(STREAM, 1), (STREAM, 2)]
    assert behaves(scene, repo.streams) == [STREAM]
    assert behaves(scene, lambda: repo.resolve(STREAM)).seq == 2


@pytest.mark.parametrize("key", ALMOST[:4] + ALMOST[8:10], ids=[repr(k[-14:]) for k in ALMOST[:4] + ALMOST[8:10]])
def test_gc_and_save_ignore_an_almost_manifest_name(scene: Scene, key: str) -> None:
    plant(scene, key)
    scene.age_all_shards()
    before = fingerprint(scene.repo)
    report = collect_garbage(Repository.open(scene.url))
    assert report.shards_deleted == 0 and fingerprint(scene.repo) == before
    tqsnap.save(scene.url, {"w": torch.full((3,), 7.0)}, stream=STREAM)
    assert Repository.open(scene.url).visible_seqs(STREAM) == [1, 2, 3]
    assert scene.path(key).exists()
    assert float(tqsnap.load(scene.url, stream=STREAM)["w"][0]) == 7.0
