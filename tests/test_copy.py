"""copy: in order, once, with the source's times, resumable, with tags; URL and option parsing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import tqsnap
from tqsnap.engine import PackOptions, Repository
from tqsnap.engine.copy import COPIED, PRESENT, SKIPPED, copy_all, copy_snapshot
from tqsnap.engine.shards import Shards
from tqsnap.errors import CopyOrderError, InvalidURLError
from tqsnap.store import CountingStore, LocalStore, open_store

DAY = 86400.0


def _state(i: int, n: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(i)
    return {f"t{k}": torch.randn(20_000, generator=g) for k in range(n)}


def _save_many(url: object, count: int, stream: str = "s", start: int = 0) -> None:
    for i in range(start, start + count):
        tqsnap.save(url, _state(i), stream=stream, metadata={"step": i})


def _copied_seqs(repo: Repository, stream: str) -> list[int]:
    return [s.metadata["copied_from"]["seq"] for s in repo.snapshots(stream)]


def test_copy_at_8_then_at_2_never_moves_latest_back(tmp_path, s3_repo_url) -> None:
    src = str(tmp_path / "src")
    _save_many(src, 8)
    url, options = s3_repo_url
    first = tqsnap.copy(src, url, stream="s", snapshot=8, dst_storage_options=options)
    assert first.status == COPIED
    with pytest.raises(CopyOrderError, match="backwards"):
        tqsnap.copy(src, url, stream="s", snapshot=2, dst_storage_options=options)
    dst = Repository.open(url, storage_options=options)
    assert _copied_seqs(dst, "s") == [8], "the refused copy committed nothing"
    assert tqsnap.load(dst, stream="s")["t0"].equal(_state(7)["t0"]), "latest is still the newest state"
    # The older state can go to a stream of its own.
    side = tqsnap.copy(src, url, stream="s", snapshot=2, dst_stream="s-old", dst_storage_options=options)
    assert side.status == COPIED and tqsnap.load(dst, stream="s-old")["t1"].equal(_state(1)["t1"])
    # keep-last 1 on the destination keeps the newest state.
    tqsnap.forget(dst, streams="s", keep_last=1)
    assert _copied_seqs(dst, "s") == [8]


def test_copying_twice_commits_once(tmp_path) -> None:
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    _save_many(src, 2)
    first = tqsnap.copy(src, dst, stream="s", snapshot=1)
    store = CountingStore(open_store(dst))
    again = tqsnap.copy(src, store, stream="s", snapshot=1)
    assert (again.status, again.seq, again.write_id) == (PRESENT, first.seq, first.write_id)
    assert store.requests["put"] == store.requests["put_if_absent"] == 0, "nothing written the second time"
    assert len(Repository.open(dst).snapshots("s")) == 1
    # The record names the source by its repository id, not by the URL it was reached through.
    src_id = Repository.open(src).config.repo_id
    record = Repository.open(dst).snapshots("s")[0].metadata["copied_from"]
    assert (record["repo_id"], record["stream"], record["seq"]) == (src_id, "s", 1)
    assert tqsnap.copy(f"file://{src}", dst, stream="s", snapshot=1).status == PRESENT


def test_all_mirrors_incrementally_in_source_order(tmp_path, seaweedfs_endpoint) -> None:
    src = str(tmp_path / "src")
    _save_many(src, 3, stream="a")
    _save_many(src, 2, stream="b", start=10)
    url, options = seaweedfs_endpoint.make_bucket()
    dst_store = CountingStore(open_store(url, **options))
    first = tqsnap.copy(src, dst_store, stream=None, snapshot="all")
    assert [(r.source.stream, r.source.seq, r.status) for r in first] == [
        ("a", 1, COPIED), ("a", 2, COPIED), ("a", 3, COPIED), ("b", 1, COPIED), ("b", 2, COPIED)
    ]
    _save_many(src, 2, stream="a", start=3)
    dst_store.reset()
    second = tqsnap.copy(src, dst_store, stream=None, snapshot="all")
    assert [r.status for r in second] == [PRESENT] * 3 + [COPIED] * 2 + [PRESENT] * 2
    assert dst_store.requests["put_if_absent"] == 2, "two manifests committed, nothing else re-committed"
    moved = sum(r.moved_bytes for r in second)
    assert 0 < moved <= dst_store.bytes["put"]
    dst = Repository.open(dst_store)
    assert _copied_seqs(dst, "a") == [1, 2, 3, 4, 5]
    for seq, i in zip(range(1, 6), range(5), strict=True):
        assert tqsnap.load(dst, stream="a", snapshot=seq)["t2"].equal(_state(i)["t2"])


def test_all_skips_and_reports_what_is_older_than_the_destination(tmp_path) -> None:
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    _save_many(src, 4)
    tqsnap.copy(src, dst, stream="s", snapshot=3)
    results = copy_all(Repository.open(src), Repository.open(dst), "s")
    assert [r.status for r in results] == [SKIPPED, SKIPPED, PRESENT, COPIED]
    assert "backwards" in results[0].reason
    assert _copied_seqs(Repository.open(dst), "s") == [3, 4]


class _DayClock(LocalStore):
    """A local store whose clock the test sets: snapshots taken on chosen days."""

    day = 0.0

    def now(self) -> float:
        return self.day


def test_commit_times_kept_and_keep_daily_agrees_on_the_destination(tmp_path) -> None:
    src_store = _DayClock(str(tmp_path / "src"))
    base = 1_767_225_600.0  # 2026-01-01 00:00 UTC
    for i, when in enumerate([0.1, 0.5, 1.2, 1.7, 3.3, 4.6]):  # two on day 0 and day 1
        src_store.day = base + when * DAY
        tqsnap.save(src_store, _state(i), stream="s")
    src = Repository.open(src_store)
    dst_url = str(tmp_path / "dst")
    copy_all(src, Repository.open(dst_url, create=True), "s")
    dst = Repository.open(dst_url)
    for s, d in zip(src.snapshots("s"), dst.snapshots("s"), strict=True):
        assert d.metadata["copied_from"]["source_started_at"] == s.started_at
        assert d.metadata["copied_from"]["source_committed_at"] == s.committed_at
        assert abs(d.started_at - time.time()) < 600, "the copy's own times are today's"
    on_src = tqsnap.forget(src_store, keep_daily=3)
    on_dst = tqsnap.forget(dst_url, keep_daily=3)
    kept_src = sorted(d.seq for d in on_src.kept)
    kept_dst = sorted(_copied_seqs(dst, "s"))  # what is still visible there
    assert kept_src == [4, 5, 6] and kept_dst == kept_src and on_dst.tombstones_written == 3
    # A copy of the copy keeps the origin's time.
    third = str(tmp_path / "third")
    tqsnap.copy(dst_url, third, stream="s")
    again = Repository.open(third).snapshots("s")[0].metadata["copied_from"]
    assert again["source_started_at"] == src.snapshots("s")[-1].started_at


def _orphans_of_an_interrupted_copy(src: Repository, dst: Repository, seq: int) -> set[str]:
    """Upload every shard of ``src`` @seq to ``dst`` without committing: what a killed copy leaves."""
    manifest = src.load_manifest("s", seq)
    target, source = Shards(dst.store), Shards(src.store)
    return {target.adopt(source, ref).key for ref in manifest.shards}


def test_a_copy_reuses_only_orphans_young_enough_that_gc_cannot_take_them(tmp_path) -> None:
    src = Repository.open(str(tmp_path / "src"), create=True)
    _save_many(src, 2)
    # grace 6 s, writes 2 s: an orphan may be reused while younger than 6 - 2*2 = 2 s.
    dst = Repository.init(str(tmp_path / "dst"), grace="6s", max_write_duration="2s")
    old = _orphans_of_an_interrupted_copy(src, dst, 1)
    time.sleep(2.5)
    result = copy_snapshot(src, dst, "s", 1)
    used = {ref.key for ref in dst.load_manifest("s", result.seq).shards}
    assert result.resumed_shards == 0 and not used & old, "an orphan gc may already delete was reused"
    assert result.moved_shards == len(old)
    young = _orphans_of_an_interrupted_copy(src, dst, 2)
    result = copy_snapshot(src, dst, "s", 2)
    used = {ref.key for ref in dst.load_manifest("s", result.seq).shards}
    assert result.resumed_shards == len(young) and used == young and result.moved_shards == 0
    assert tqsnap.verify(dst, stream="s").ok


_SLOW_COPY = textwrap.dedent(
    """
    import json, sys, time
    from tqsnap.engine import PackOptions, Repository
    from tqsnap.engine.copy import copy_snapshot
    from tqsnap.store import CountingStore, open_store

    class SlowLink(CountingStore):  # a slow network to the destination
        def put(self, key, data):
            time.sleep(0.15)
            super().put(key, data)

    src, dst_url, options = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    dst = Repository.open(SlowLink(open_store(dst_url, **options)), create=True)
    print("ready", flush=True)
    copy_snapshot(Repository.open(src), dst, "s", "latest", threads=1)
    print("done", flush=True)
    """
)


def test_an_interrupted_copy_resumes_and_sends_fewer_bytes(tmp_path, seaweedfs_endpoint) -> None:
    src = str(tmp_path / "src")
    state = {f"t{k}": torch.randn(65_536) for k in range(24)}
    tqsnap.save(src, state, stream="s", options=PackOptions(small_item=64 * 1024))  # 24 shards of 256 KiB
    url, options = seaweedfs_endpoint.make_bucket()
    store = open_store(url, **options)
    child = subprocess.Popen(
        [sys.executable, "-c", _SLOW_COPY, src, url, json.dumps(options)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 60
        while sum(1 for _ in store.list("shards/")) < 8 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=30)
    left = sum(1 for _ in store.list("shards/"))
    assert 8 <= left < 24, "the copy was killed midway"
    assert tqsnap.snapshots(store) == []
    counting = CountingStore(store)
    result = tqsnap.copy(src, counting, stream="s")
    total = sum(ref.stored_size for ref in Repository.open(src).load_manifest("s", 1).shards)
    assert result.resumed_shards == left and result.moved_shards == 24 - left
    assert counting.bytes["put"] == result.moved_bytes < total, "fewer bytes than a full copy"
    loaded = tqsnap.load(store, stream="s")
    for k, v in tqsnap.load(src, stream="s").items():
        assert torch.equal(loaded[k], v)


def test_tags_follow_and_a_taken_name_is_skipped_and_reported(tmp_path) -> None:
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    _save_many(src, 3)
    tqsnap.tag(src, "best", stream="s", snapshot=2)
    tqsnap.tag(src, "final", stream="s", snapshot=3)
    _save_many(dst, 1, stream="own", start=50)
    tqsnap.tag(dst, "final", stream="own", snapshot=1)
    results = tqsnap.copy(src, dst, stream="s", snapshot="all", tags=True)
    assert results[1].tags_copied == ["best"]
    assert "final" in results[2].tags_skipped and results[2].tags_copied == []
    repo = Repository.open(dst)
    best = repo.read_tag("best").target
    assert best.stream == "s" and repo.load_manifest("s", best.seq).metadata["copied_from"]["seq"] == 2
    assert repo.read_tag("final").target.stream == "own", "the destination's own tag is untouched"
    again = tqsnap.copy(src, dst, stream="s", snapshot="all", tags=True)
    assert [r.tags_copied for r in again] == [[], [], []] and "final" in again[2].tags_skipped


def test_a_fork_within_one_repository_uploads_nothing(tmp_path) -> None:
    url = str(tmp_path / "repo")
    _save_many(url, 3)
    store = CountingStore(open_store(url))
    result = tqsnap.copy(store, store, stream="s", snapshot=2, dst_stream="fork")
    assert result.status == COPIED and result.moved_shards == 0 and result.reused_shards > 0
    assert store.requests["put"] == 0 and store.requests["put_if_absent"] == 1, "only the manifest"
    assert tqsnap.load(url, stream="fork")["t0"].equal(_state(1)["t0"])
    with pytest.raises(CopyOrderError, match="its own stream"):
        tqsnap.copy(url, url, stream="s", snapshot=1)


def test_a_host_in_a_file_url_is_refused(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    for url in ("file://tmp/x", "file://server/share/repo", "file:/x"):
        with pytest.raises(InvalidURLError, match="file://"):
            open_store(url)
        with pytest.raises(InvalidURLError):
            tqsnap.save(url, {"a": torch.ones(2)})
    assert list(tmp_path.iterdir()) == [] and not Path("/x").exists(), "nothing was created"
    repo = tmp_path / "r"
    tqsnap.save(f"file://localhost{repo}", {"a": torch.ones(2)})
    assert tqsnap.load(f"file://{repo}")["a"].equal(torch.ones(2))
    assert open_store("relative/dir").url.endswith(str(tmp_path / "relative/dir"))


def test_s3fs_style_options_across_two_servers(tmp_path, seaweedfs_endpoint, moto_endpoint) -> None:
    src_url, src_opts = seaweedfs_endpoint.make_bucket()
    dst_url, dst_opts = moto_endpoint.make_bucket()
    for i in range(2):
        tqsnap.save(src_url, _state(i), stream="s", storage_options=src_opts)
    s3fs_style = {
        "key": dst_opts["aws_access_key_id"],
        "secret": dst_opts["aws_secret_access_key"],
        "client_kwargs": {"endpoint_url": dst_opts["endpoint_url"], "region_name": "eu-west-1"},
    }
    results = tqsnap.copy(
        src_url, dst_url, stream="s", snapshot="all", storage_options=src_opts, dst_storage_options=s3fs_style
    )
    assert [r.status for r in results] == [COPIED, COPIED]
    assert tqsnap.load(dst_url, stream="s", storage_options=dst_opts)["t1"].equal(_state(1)["t1"])
    with pytest.raises(ValueError, match="client_kwargs"):
        open_store(dst_url, client_kwargs={"verify": False})
    with pytest.raises(ValueError, match="conflicts"):
        open_store(dst_url, key="a", aws_access_key_id="b")


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "import sys; from tqsnap.faces.cli import main; sys.exit(main())", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_cli_copy_all_with_a_destination_profile_prints_json_lines(tmp_path, seaweedfs_auth_endpoint) -> None:
    """The destination's credentials come from its profile alone: the environment's are wrong."""
    src = str(tmp_path / "src")
    _save_many(src, 3)
    tqsnap.tag(src, "best", stream="s", snapshot=2)
    url, options = seaweedfs_auth_endpoint.make_bucket()
    config = tmp_path / "aws-config"
    config.write_text(
        "[profile cluster-b]\n"
        f"aws_access_key_id = {options['aws_access_key_id']}\n"
        f"aws_secret_access_key = {options['aws_secret_access_key']}\n"
        "region = eu-west-1\n"
    )
    env = {
        "AWS_CONFIG_FILE": str(config),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_ACCESS_KEY_ID": "wrong",
        "AWS_SECRET_ACCESS_KEY": "wrong",
    }
    args = ["copy", src, url, "--stream", "s", "--all", "--tags", "--json",
            "--dst-endpoint-url", options["endpoint_url"], "--dst-profile", "cluster-b"]
    done = _cli(*args, env=env)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(d["command"], d["source"]["seq"], d["status"]) for d in lines] == [
        ("copy", 1, COPIED), ("copy", 2, COPIED), ("copy", 3, COPIED)
    ]
    assert lines[1]["tags_copied"] == ["best"] and lines[0]["moved_bytes"] > 0
    again = _cli(*args, env=env)
    assert [json.loads(line)["status"] for line in again.stdout.splitlines()] == [PRESENT] * 3
    fresh, _ = seaweedfs_auth_endpoint.make_bucket()
    dst_flags = ["--dst-endpoint-url", options["endpoint_url"], "--dst-profile", "cluster-b"]
    newest = _cli("copy", src, fresh, "--stream", "s", "--snapshot", "3", *dst_flags, env=env)
    assert newest.returncode == 0 and "copied as s@1" in newest.stdout, newest.stderr
    older = _cli("copy", src, fresh, "--stream", "s", "--snapshot", "1", *dst_flags, env=env)
    assert older.returncode == 2 and "backwards" in older.stderr and older.stdout == ""
    missing = _cli(*args[:-1], "no-such-profile", env=env)
    assert missing.returncode == 2 and "no-such-profile" in missing.stderr
    no_profile = _cli(*args[:-2], env=env)
    assert no_profile.returncode == 4, "the environment's credentials are refused there"
    refused = _cli("snapshots", "file://tmp/x")
    assert refused.returncode == 2 and "file:///tmp/x" in refused.stderr


def test_cli_copy_from_s3_with_an_endpoint_to_local_disk(tmp_path, seaweedfs_endpoint) -> None:
    """The source's S3 settings are not handed to a destination on local disk."""
    url, options = seaweedfs_endpoint.make_bucket()
    tqsnap.save(url, _state(1), stream="s", storage_options=options)
    dst = tmp_path / "backup"
    done = _cli("copy", url, str(dst), "--stream", "s", "--endpoint-url", options["endpoint_url"])
    assert done.returncode == 0, done.stderr
    assert "copied as s@1" in done.stdout
    assert torch.equal(tqsnap.load(str(dst), stream="s")["t0"], _state(1)["t0"])
