"""gc and forget never read an incomplete listing as empty; stale temporaries and uploads are
collected after the grace period; read-only media and full disks give typed errors.

Permission cases run as an unprivileged user (root reads every directory); read-only and
full file systems are mounted in a private mount namespace of the child process.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import torch

import tqsnap
from tqsnap.engine import Repository
from tqsnap.engine.gc import collect_garbage
from tqsnap.errors import StoreError
from tqsnap.store import open_store

from .kit import CONFIG, MANIFEST_2, OLD, STREAM, Scene, fingerprint, make_scene, run_as_nobody, run_python

# torch is imported only by the actions that need it: it costs seconds per child.
CHILD_ACTIONS = """
import tqsnap
from tqsnap.engine import Repository
from tqsnap.engine.gc import collect_garbage
from tqsnap.engine.retention import RetentionPolicy, forget

def attempt(name, fn):
    try:
        out = fn()
        result[name] = {"ok": True, "value": repr(out)[:200]}
    except BaseException as exc:
        result[name] = {"error": type(exc).__name__, "message": str(exc)[:1000],
                        "tqsnap": isinstance(exc, TqsnapError)}

def save_bytes(url):
    import os
    from tqsnap.engine import SnapshotWriter
    writer = SnapshotWriter.begin(Repository.open(url), "s", "raw")
    packer = writer.packer()
    packer.add("x", os.urandom(2_000_000))
    writer.add_result(packer.finish())
    return writer.commit().seq

def actions(url):
    return {
        "gc": lambda: collect_garbage(Repository.open(url)).shards_deleted,
        "gc-dry-run": lambda: collect_garbage(Repository.open(url), dry_run=True).shards_deleted,
        "forget": lambda: forget(Repository.open(url), RetentionPolicy(keep_last=1)).tombstones_written,
        "snapshots": lambda: [i.seq for i in Repository.open(url).snapshots()],
        "load": lambda: float(tqsnap.load(url, stream="s")["w"][1]),
        "read": lambda: sorted(Repository.open(url).reader("s").read_items()),
        "verify": lambda: Repository.open(url).verify("s").ok,
        "show": lambda: Repository.open(url).load_manifest("s", 2).seq,
        "tags": lambda: [t.name for t in Repository.open(url).tags()],
        "save": lambda: save_bytes(url),
        "tag": lambda: tqsnap.tag(url, "t2", stream="s", snapshot=2).name,
    }
"""


def run_actions(url: str, names: list[str], *, user: bool = False, wrapper: str = "") -> dict[str, Any]:
    code = f"{wrapper}\nfor name in {names!r}:\n    attempt(name, actions({url!r})[name])\n"
    if user:
        return run_as_nobody(CHILD_ACTIONS + code, timeout=120)
    return run_python(CHILD_ACTIONS + code, timeout=120)


# --- unreadable directories and files (as an unprivileged user) -----------------------------------

UNREADABLE = {
    "stream-directory": ("snapshots/s", ["gc", "gc-dry-run", "forget", "snapshots"]),
    "snapshots-directory": ("snapshots", ["gc", "forget", "snapshots"]),
    "tombstones-stream": ("tombstones/s", ["gc", "gc-dry-run"]),
    "a-shard-prefix": (None, ["gc", "gc-dry-run"]),
    "tags-directory": ("tags", ["tags"]),
}


@pytest.mark.parametrize("case", list(UNREADABLE))
def test_an_unreadable_directory_aborts_the_listing(scene: Scene, case: str) -> None:
    where, names = UNREADABLE[case]
    if where is None:
        where = str(Path(scene.shard_keys(2)[0]).parent)
    if where.startswith("tombstones"):
        scene.path(where).mkdir(parents=True)
    scene.age_all_shards()
    before, outside = fingerprint(scene.repo), fingerprint(scene.outside)
    scene.path(where).chmod(0)
    try:
        results = run_actions(scene.url, names, user=True)
    finally:
        scene.path(where).chmod(0o755)
    for name in names:
        got = results[name]
        assert got.get("error") == "IncompleteListingError" and got["tqsnap"], (name, got)
        assert where in got["message"], (name, got)
    assert fingerprint(scene.repo) == before and fingerprint(scene.outside) == outside
    assert float(tqsnap.load(scene.url, stream=STREAM)["w"][1]) == 2.0  # nothing was lost


@pytest.mark.parametrize(("key", "action"), [("shard", "read"), ("shard", "verify"), (CONFIG, "snapshots"), (MANIFEST_2, "show")])
def test_an_unreadable_object_is_a_typed_error_naming_it(scene: Scene, key: str, action: str) -> None:
    key = scene.shard_keys(2)[0] if key == "shard" else key
    before = fingerprint(scene.repo)
    scene.path(key).chmod(0)
    try:
        got = run_actions(scene.url, [action], user=True)[action]
    finally:
        scene.path(key).chmod(0o644)
    assert got.get("error") == "AccessDeniedError" and key in got["message"], got
    assert fingerprint(scene.repo) == before


def test_a_repository_the_user_cannot_write_is_still_readable(scene: Scene) -> None:
    before = fingerprint(scene.repo)
    results = run_actions(scene.url, ["snapshots", "read", "verify", "show", "tags", "gc-dry-run", "save", "tag"], user=True)
    for name in ["snapshots", "read", "verify", "show", "tags", "gc-dry-run"]:
        assert results[name].get("ok"), (name, results[name])
    assert results["tag"].get("error") == "AccessDeniedError" and "tags/t2.json" in results["tag"]["message"]
    save = results["save"]
    assert save.get("error") == "AccessDeniedError" and "shards/" in save["message"], save
    assert fingerprint(scene.repo) == before  # no temp file, no directory left behind


# --- read-only and full file systems ---------------------------------------------------------------


def _namespaces_work() -> bool:
    return os.geteuid() == 0 and shutil.which("unshare") is not None and shutil.which("mount") is not None


needs_mounts = pytest.mark.skipif(not _namespaces_work(), reason="needs root, unshare and mount")


def run_in_mount_namespace(setup: str, code: str) -> dict[str, Any]:
    """Run ``code`` in a child with a private mount namespace prepared by the shell ``setup``."""
    import json
    import subprocess
    import sys
    import textwrap

    from .kit import run_python as _  # noqa: F401 - same child protocol

    script = textwrap.dedent(
        """
        import json, sys
        from tqsnap.errors import TqsnapError
        result = {}
        """
    ) + CHILD_ACTIONS + code + '\nsys.stdout.write("\\nRESULT " + json.dumps(result, default=str))\n'
    proc = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", f'{setup} && exec "$0" -c "$1"', sys.executable, script],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    marker = proc.stdout.rfind("\nRESULT ")
    assert marker >= 0, proc.stderr[-3000:]
    return json.loads(proc.stdout[marker + len("\nRESULT ") :])


READ_ONLY_ACTIONS = ["snapshots", "read", "verify", "show", "tags", "gc-dry-run"]


@pytest.fixture(scope="module")
def read_only_results(template: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Scene, dict[str, Any], bool]:
    """One child runs every action against the same read-only mount (a child costs seconds)."""
    if not _namespaces_work():
        pytest.skip("needs root, unshare and mount")
    scene = make_scene(template, tmp_path_factory.mktemp("read-only") / "base")
    before = fingerprint(scene.repo)
    mnt = scene.base / "ro"
    mnt.mkdir()
    setup = f"mount --bind {scene.repo} {mnt} && mount -o remount,bind,ro {mnt}"
    code = f"for name in {[*READ_ONLY_ACTIONS, 'save', 'gc']!r}:\n    attempt(name, actions({str(mnt)!r})[name])\n"
    results = run_in_mount_namespace(setup, code)
    return scene, results, fingerprint(scene.repo) == before


@needs_mounts
@pytest.mark.parametrize("action", READ_ONLY_ACTIONS)
def test_read_only_commands_work_on_a_read_only_file_system(read_only_results: Any, action: str) -> None:
    _, results, unchanged = read_only_results
    assert results[action].get("ok"), results[action]
    assert unchanged


@needs_mounts
def test_a_save_to_a_read_only_file_system_is_a_typed_error_naming_the_key(read_only_results: Any) -> None:
    _, results, unchanged = read_only_results
    save = results["save"]
    assert save.get("error") == "StoreError" and "read-only" in save["message"] and "shards/" in save["message"], save
    assert unchanged


@needs_mounts
def test_a_full_disk_fails_the_save_with_a_typed_error_and_leaves_no_temp_file(template: Path, tmp_path: Path) -> None:
    mnt = tmp_path / "small"
    mnt.mkdir()
    setup = f"mount -t tmpfs -o size=600k tmpfs {mnt} && cp -a {template} {mnt}/repo"
    code = f"""
import os
url = {str(mnt / "repo")!r}
attempt("save", actions(url)["save"])
result["tmp_files"] = sorted(os.listdir(url + "/.tmp")) if os.path.isdir(url + "/.tmp") else []
attempt("read", actions(url)["read"])
attempt("snapshots", actions(url)["snapshots"])
"""
    results = run_in_mount_namespace(setup, code)
    save = results["save"]
    assert save.get("error") == "StoreError" and "full" in save["message"] and "shards/" in save["message"], save
    assert results["tmp_files"] == []
    assert results["read"] == {"ok": True, "value": "['b', 'w']"}
    assert results["snapshots"]["value"] == "[1, 2]"


# --- stale temporaries ------------------------------------------------------------------------------


@pytest.mark.parametrize("dry_run", [False, True])
def test_gc_removes_temporaries_older_than_the_grace_period(scene: Scene, dry_run: bool) -> None:
    tmp = scene.path(".tmp")
    tmp.mkdir()
    (tmp / "stale").write_bytes(b"x" * 1000)
    (tmp / "fresh").write_bytes(b"y" * 1000)
    (tmp / "a-directory").mkdir()
    st = (tmp / "stale").stat()
    os.utime(tmp / "stale", (st.st_atime - OLD, st.st_mtime - OLD))
    report = collect_garbage(Repository.open(scene.url), dry_run=dry_run)
    assert report.uploads_aborted == [".tmp/stale"] and report.young_uploads == 1
    assert report.to_json()["uploads_aborted"] == [".tmp/stale"]
    assert (tmp / "stale").exists() == dry_run
    assert (tmp / "fresh").exists() and (tmp / "a-directory").is_dir()
    assert float(tqsnap.load(scene.url, stream=STREAM)["w"][1]) == 2.0


def test_gc_creates_no_directory(scene: Scene) -> None:
    before = {p for p in scene.repo.rglob("*") if p.is_dir()}
    collect_garbage(Repository.open(scene.url))
    assert {p for p in scene.repo.rglob("*") if p.is_dir()} == before
    assert not scene.path(".tmp").exists()


def test_gc_deletes_only_garbage_and_the_latest_snapshot_loads(scene: Scene) -> None:
    orphan = scene.path("shards/ab/ab" + "0" * 30 + ".0123456789abcdef")
    orphan.parent.mkdir(exist_ok=True)
    orphan.write_bytes(b"orphan")
    scene.age_all_shards()
    tqsnap.forget(scene.url, keep_last=1)
    report = collect_garbage(Repository.open(scene.url))
    assert report.deleted_shard_keys == ["shards/ab/ab" + "0" * 30 + ".0123456789abcdef"]
    assert float(tqsnap.load(scene.url, stream=STREAM)["w"][1]) == 2.0


# --- S3: a listing that fails or is cut short aborts gc ---------------------------------------------


@pytest.fixture(scope="module")
def aged_s3_repo(seaweedfs_endpoint: Any) -> Any:
    """A repository behind a fault proxy with an orphan shard and a stale multipart upload, both
    past the grace period (made once: aging costs seconds of real time on a real server)."""
    from faultproxy import proxied_bucket

    bucket = proxied_bucket(seaweedfs_endpoint, latency_s=0.01, late_s=0.01)
    store = open_store(bucket.url, **bucket.options, retries={"total_max_attempts": 2}, retry_budget_s=2)
    tqsnap.init_repo(store, grace="2s", max_write_duration="0.5s")
    tqsnap.save(store, {"w": torch.arange(10.0)}, stream=STREAM)
    direct = open_store(bucket.url, **bucket.server.options())
    orphan = "shards/ab/ab" + "0" * 30 + ".0123456789abcdef"
    direct.put(orphan, b"orphan")
    client, name = seaweedfs_endpoint.client(), bucket.bucket
    stale = client.create_multipart_upload(Bucket=name, Key="repo/shards/ab/stale-upload")["UploadId"]
    time.sleep(2.2)
    yield bucket, store, direct, orphan, stale
    bucket.proxy.close()


@pytest.mark.parametrize("kind", ["500", "truncate", "reset_mid_body"])
def test_a_failing_or_cut_s3_listing_aborts_gc(aged_s3_repo: Any, kind: str) -> None:
    bucket, store, direct, orphan, _ = aged_s3_repo
    keys_before = sorted(i.key for i in direct.list(""))
    assert orphan in keys_before
    bucket.proxy.rate, bucket.proxy.kinds, bucket.proxy.classes = 1.0, (kind,), frozenset({"list"})
    try:
        with pytest.raises(StoreError) as info:
            collect_garbage(Repository.open(store))
    finally:
        bucket.proxy.clear()
    assert "ListObjectsV2" in str(info.value) or "list" in str(info.value).lower()
    assert sorted(i.key for i in direct.list("")) == keys_before  # nothing was deleted
    assert len(bucket.server.client().list_multipart_uploads(Bucket=bucket.bucket).get("Uploads", [])) == 1


def test_after_the_faults_gc_deletes_the_orphan_and_aborts_the_stale_upload(aged_s3_repo: Any) -> None:
    bucket, store, direct, orphan, stale = aged_s3_repo
    bucket.server.client().create_multipart_upload(Bucket=bucket.bucket, Key="repo/shards/cd/fresh-upload")
    report = collect_garbage(Repository.open(store))
    assert report.deleted_shard_keys == [orphan]
    assert report.uploads_aborted == ["shards/ab/stale-upload"] and report.young_uploads == 1
    left = bucket.server.client().list_multipart_uploads(Bucket=bucket.bucket).get("Uploads", [])
    assert [u["Key"] for u in left] == ["repo/shards/cd/fresh-upload"]
    assert stale not in {u["UploadId"] for u in left}
    assert float(tqsnap.load(store, stream=STREAM)["w"][3]) == 3.0
