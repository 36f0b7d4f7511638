"""The local store is a box: no symlink is followed, only regular files are read, nothing is
created by a read, and every refusal is a typed error naming the key."""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import tqsnap
from tqsnap.engine import Repository
from tqsnap.engine.gc import collect_garbage
from tqsnap.errors import (
    BucketNotFoundError,
    IncompleteListingError,
    InvalidKeyError,
    RepositoryNotFoundError,
    TqsnapError,
    UnsafeObjectError,
)
from tqsnap.store import LocalStore

from .kit import CONFIG, MANIFEST_2, STREAM, TAG_KEY, Scene, behaves, fingerprint, refuses

Action = Callable[[Scene], Any]

ACTIONS: dict[str, Action] = {
    "load": lambda s: tqsnap.load(s.url, stream=STREAM),
    "verify": lambda s: Repository.open(s.url).verify(STREAM),
    "snapshots": lambda s: Repository.open(s.url).snapshots(),
    "show": lambda s: Repository.open(s.url).load_manifest(STREAM, 2),
    "tags": lambda s: Repository.open(s.url).tags(),
    "gc": lambda s: collect_garbage(Repository.open(s.url)),
    "gc-dry-run": lambda s: collect_garbage(Repository.open(s.url), dry_run=True),
}


def act(name: str, scene: Scene) -> Callable[[], Any]:
    return lambda: ACTIONS[name](scene)


def latest_shard(scene: Scene) -> str:
    return scene.shard_keys(2)[0]


def replace(scene: Scene, key: str, make: Callable[[Path], None]) -> None:
    path = scene.path(key)
    if path.is_dir() and not path.is_symlink():
        import shutil

        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    make(path)


# --- a shard that is not a regular file inside the root -----------------------------------------


def _symlink_out(scene: Scene) -> Callable[[Path], None]:
    target = scene.outside / "shards" / Path(latest_shard(scene)).parent.name / Path(latest_shard(scene)).name
    return lambda p: p.symlink_to(target)


def _fifo(p: Path) -> None:
    os.mkfifo(p)


def _device(p: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mknod needs root")
    os.mknod(p, stat.S_IFCHR | 0o644, os.makedev(1, 5))  # what /dev/zero is


def _socket(p: Path) -> None:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(p))
    sock.close()


SHARD_SHAPES: dict[str, Callable[[Scene], Callable[[Path], None]]] = {
    "symlink-outside": _symlink_out,
    "fifo": lambda s: _fifo,
    "dev-zero": lambda s: _device,
    "socket": lambda s: _socket,
    "directory": lambda s: (lambda p: p.mkdir()),
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("action", ["load", "verify"])
@pytest.mark.parametrize("shape", list(SHARD_SHAPES))
def test_a_shard_that_is_not_a_regular_file_is_refused(scene: Scene, shape: str, action: str) -> None:
    key = latest_shard(scene)
    replace(scene, key, SHARD_SHAPES[shape](scene))
    refuses(scene, act(action, scene), UnsafeObjectError, names=key)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("action", ["gc", "gc-dry-run"])
@pytest.mark.parametrize("shape", ["symlink-outside", "fifo", "dev-zero", "socket"])
def test_gc_aborts_on_a_special_file_under_shards(scene: Scene, shape: str, action: str) -> None:
    scene.age_all_shards()
    key = latest_shard(scene)
    replace(scene, key, SHARD_SHAPES[shape](scene))
    refuses(scene, act(action, scene), IncompleteListingError, names=key)


# --- symlinked prefixes: out of the root, or from one prefix into another -------------------------


@pytest.mark.parametrize("action", ["gc", "gc-dry-run", "load", "verify"])
def test_a_shard_prefix_linked_outside_is_never_followed(scene: Scene, action: str) -> None:
    # outside/shards/<xx>/ holds a copy of the shard under its real name: following the link
    # would find it (and gc would delete the outside files it does not recognise).
    key = latest_shard(scene)
    prefix = Path(key).parent.name
    scene.age_all_shards()
    moved = scene.path(f"shards/{prefix}")
    import shutil

    shutil.rmtree(moved)
    moved.symlink_to(scene.outside / "shards" / prefix, target_is_directory=True)
    (scene.outside / "shards" / prefix / "0123.not-a-shard").write_bytes(b"garbage gc would delete")
    expected = IncompleteListingError if action.startswith("gc") else UnsafeObjectError
    refuses(scene, act(action, scene), expected, names=f"shards/{prefix}" if action.startswith("gc") else key)


@pytest.mark.parametrize("action", ["gc", "gc-dry-run"])
def test_a_shard_prefix_linked_to_another_prefix_aborts_gc(scene: Scene, action: str) -> None:
    key = latest_shard(scene)
    prefix = Path(key).parent.name
    other = "00" if prefix != "00" else "01"
    scene.age_all_shards()
    scene.path(f"shards/{other}").symlink_to(prefix, target_is_directory=True)
    refuses(scene, act(action, scene), IncompleteListingError, names=f"shards/{other}")
    assert tqsnap.load(scene.url, stream=STREAM)["w"][1] == 2.0  # the only visible snapshot loads


@pytest.mark.parametrize("action", ["snapshots", "load", "gc", "gc-dry-run"])
def test_a_manifest_linked_outside_is_refused(scene: Scene, action: str) -> None:
    key = "snapshots/s/00000000000000000003.json"
    scene.path(key).symlink_to(scene.outside / "manifest.json")
    refuses(scene, act(action, scene), IncompleteListingError, names=key)


@pytest.mark.parametrize("action", ["snapshots", "gc"])
def test_a_stream_directory_linked_outside_is_refused(scene: Scene, action: str) -> None:
    (scene.outside / "t").mkdir()
    (scene.outside / "t" / "00000000000000000001.json").write_bytes(scene.path(MANIFEST_2).read_bytes())
    scene.path("snapshots/t").symlink_to(scene.outside / "t", target_is_directory=True)
    refuses(scene, act(action, scene), IncompleteListingError, names="snapshots/t")


@pytest.mark.parametrize("action", ["snapshots", "load", "tags"])
def test_the_config_linked_outside_is_refused(scene: Scene, action: str) -> None:
    (scene.outside / CONFIG).write_bytes(scene.path(CONFIG).read_bytes())
    replace(scene, CONFIG, lambda p: p.symlink_to(scene.outside / CONFIG))
    refuses(scene, act(action, scene), UnsafeObjectError, names=CONFIG)


def test_a_tag_linked_outside_is_refused(scene: Scene) -> None:
    replace(scene, TAG_KEY, lambda p: p.symlink_to(scene.outside / "manifest.json"))
    refuses(scene, lambda: Repository.open(scene.url).read_tag("keep"), UnsafeObjectError, names=TAG_KEY)
    refuses(scene, act("tags", scene), IncompleteListingError, names=TAG_KEY)


@pytest.mark.parametrize("key", [CONFIG, MANIFEST_2])
def test_a_directory_named_as_a_document_is_refused(scene: Scene, key: str) -> None:
    replace(scene, key, lambda p: p.mkdir())
    action = act("snapshots", scene) if key == CONFIG else act("show", scene)
    refuses(scene, action, UnsafeObjectError, names=key)


def test_a_directory_named_like_a_manifest_is_not_a_snapshot(scene: Scene) -> None:
    scene.path("snapshots/s/00000000000000000003.json").mkdir()
    infos = behaves(scene, act("snapshots", scene))
    assert [i.seq for i in infos] == [1, 2]


def test_a_root_that_is_a_symlink_is_the_users_choice(scene: Scene) -> None:
    link = scene.base / "link-to-repo"
    link.symlink_to(scene.repo, target_is_directory=True)
    state = behaves(scene, lambda: tqsnap.load(str(link), stream=STREAM))
    assert state["w"][1] == 2.0


def test_the_temp_directory_linked_outside_refuses_writes(scene: Scene) -> None:
    scene.path(".tmp").symlink_to(scene.outside, target_is_directory=True)
    import torch

    refuses(scene, lambda: tqsnap.save(scene.url, {"x": torch.ones(5)}, stream=STREAM), UnsafeObjectError)


# --- read-only commands create nothing ------------------------------------------------------------


@pytest.mark.parametrize("action", ["load", "verify", "snapshots", "show", "tags", "gc"])
def test_reading_a_missing_path_creates_nothing(scene: Scene, action: str) -> None:
    missing = scene.base / "mistyped" / "repo"
    ghost = Scene(scene.base, missing, scene.outside, scene.atime_probe)
    with pytest.raises(RepositoryNotFoundError) as info:
        ACTIONS[action](ghost)
    assert str(missing) in str(info.value)
    assert not (scene.base / "mistyped").exists()


@pytest.mark.parametrize("action", ["load", "snapshots", "gc"])
def test_a_repository_path_that_is_a_file_is_a_typed_error(scene: Scene, action: str) -> None:
    path = scene.base / "a-file"
    path.write_bytes(b"not a directory")
    ghost = Scene(scene.base, path, scene.outside, scene.atime_probe)
    with pytest.raises(BucketNotFoundError) as info:
        ACTIONS[action](ghost)
    assert str(path) in str(info.value) and path.read_bytes() == b"not a directory"


def test_open_with_create_false_on_a_missing_path(tmp_path: Path) -> None:
    with pytest.raises(RepositoryNotFoundError):
        Repository.open(str(tmp_path / "nope"), create=False)
    with pytest.raises(BucketNotFoundError):
        LocalStore(tmp_path / "nope", create=False)
    assert not (tmp_path / "nope").exists()


def test_reads_on_a_fresh_store_create_no_temp_directory(scene: Scene) -> None:
    behaves(scene, act("snapshots", scene))
    behaves(scene, act("load", scene))
    assert not scene.path(".tmp").exists()


# --- keys that would leave their place ------------------------------------------------------------

BAD_KEYS = [
    "/etc/passwd",
    "../outside/secret.bin",
    "shards/../../outside/secret.bin",
    "shards/ab/..",
    "shards\\..\\..\\outside",
    "shards/a\x00b",
    "shards//ab",
    "shards/ab/",
    "",
    ".tmp/x",
    "./tqsnap.json",
    "shards/\nab",
    "x" * 300,
]


@pytest.mark.parametrize("verb", ["get", "head", "put", "delete"])
@pytest.mark.parametrize("key", BAD_KEYS, ids=[repr(k)[:24] for k in BAD_KEYS])
def test_a_key_that_would_escape_is_refused(scene: Scene, key: str, verb: str) -> None:
    store = LocalStore(scene.repo)
    calls = {
        "get": lambda: store.get(key),
        "head": lambda: store.head(key),
        "put": lambda: store.put(key, b"x"),
        "delete": lambda: store.delete_many([key]),
    }
    err = refuses(scene, calls[verb], InvalidKeyError)
    assert repr(key)[:20] in str(err) or key[:20] in str(err)


def test_ranges_are_checked_and_bounded_by_the_file(scene: Scene) -> None:
    store = LocalStore(scene.repo)
    key = latest_shard(scene)
    size = scene.path(key).stat().st_size
    assert len(store.get_range(key, 0, 1 << 40)) == size  # never allocates what was asked for
    assert store.get_range(key, size + 10, 100) == b""
    buf = bytearray(size + 100)
    assert store.get_into(key, memoryview(buf)) == size
    with pytest.raises(InvalidKeyError):
        store.get_range(key, -1, 10)


def test_deleting_through_a_symlink_is_refused(scene: Scene) -> None:
    scene.path("shards/zz").symlink_to(scene.outside / "shards" / "ab", target_is_directory=True)
    name = next((scene.outside / "shards" / "ab").iterdir()).name
    store = LocalStore(scene.repo)
    refuses(scene, lambda: store.delete_many([f"shards/zz/{name}"]), UnsafeObjectError, names="shards/zz")


def test_errors_are_tqsnap_errors() -> None:
    for cls in (IncompleteListingError, UnsafeObjectError, InvalidKeyError):
        assert issubclass(cls, TqsnapError)
    assert fingerprint(Path("/nonexistent-dir")) == {}


def test_a_listing_during_deletes_still_sees_every_file_that_stays(tmp_path: Path) -> None:
    import threading

    store = LocalStore(tmp_path / "repo", fsync=False)
    for i in range(1500):
        store.put(f"shards/aa/{i:05d}", b"x")
    doomed = [f"shards/aa/{i:05d}" for i in range(0, 1500, 2)]
    kept = {f"shards/aa/{i:05d}" for i in range(1, 1500, 2)}
    stop = threading.Event()

    def delete() -> None:
        for key in doomed:
            if stop.is_set():
                return
            store.delete_many([key])

    deleter = threading.Thread(target=delete)
    deleter.start()
    try:
        for _ in range(30):
            listed = {i.key for i in store.list("shards/")}
            assert kept <= listed  # a file deleted mid-walk never hides its neighbours
    finally:
        stop.set()
        deleter.join(timeout=30)
