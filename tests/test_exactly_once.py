"""One save() commits exactly one snapshot, whatever happens to the commit's reply.

Each test puts the fault-injecting proxy (tests/faultproxy.py) in front of SeaweedFS and
scripts one of the orderings that used to commit a save twice (seq 1 and seq 2, same content):

1. the commit PUT is applied after the client gave up on it (a late apply);
2. the reply to the commit PUT is lost, and the read-back then fails past the store's retries;
3. the commit PUT is applied but answered 500, the retry gets 412, and the read-back fails;
4. the commit PUT lands a moment after the client's connection dropped, the read-back misses
   it, and the listing that follows sees it (so a writer that rebases skips past its own seq).

After each: exactly one snapshot, carrying the save's write_id, loading what was saved; the
next save still works. The same for tombstones and tags whose replies are lost.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from faultproxy import ProxiedBucket

import tqsnap
from tqsnap.adapters.state_dict import save_state
from tqsnap.engine import Repository, RetentionPolicy, SnapshotWriter
from tqsnap.engine.retention import forget
from tqsnap.errors import CommitOutcomeUnknownError
from tqsnap.store import open_store

pytestmark = pytest.mark.s3


def _repo(bucket: ProxiedBucket, *, max_write_duration: float = 20, **options: Any) -> Repository:
    """A repository opened through the proxy (created directly, so no fault hits the setup)."""
    Repository.init(
        bucket.url, storage_options=bucket.server.options(), grace=3 * max_write_duration, max_write_duration=max_write_duration
    )
    return Repository.open(bucket.url, storage_options={**bucket.options, **options})


def _direct(bucket: ProxiedBucket) -> Repository:
    return Repository.open(bucket.url, storage_options=bucket.server.options())


def _save_with_script(repo: Repository, proxy: Any, script: list[tuple[str, str, int]], state: dict[str, bytes]) -> Any:
    """Begin and upload without faults, then script the faults and commit."""
    writer = SnapshotWriter.begin(repo, "s", "state_dict")
    packer = writer.packer()
    for path, value in state.items():
        packer.add(path, value)
    writer.add_result(packer.finish())
    for klass, kind, count in script:
        proxy.script(klass, kind, count)
    return writer.commit()


def _assert_exactly_one(bucket: ProxiedBucket, info: Any, state: dict[str, bytes]) -> None:
    repo = _direct(bucket)
    infos = repo.snapshots("s")
    assert [(i.seq, i.write_id) for i in infos] == [(info.seq, info.write_id)], "one save, one snapshot"
    reader = repo.reader("s", info.seq)
    assert reader.verify().ok
    assert {item.path: bytes(reader.read_item(item.path)) for item in reader.manifest.items} == state


def _next_save_works(repo: Repository, bucket: ProxiedBucket) -> None:
    bucket.proxy.clear()
    info = save_state(repo, {"after": b"next"}, stream="s")
    assert info.seq == 2 and [i.seq for i in _direct(bucket).snapshots("s")] == [1, 2]


STATE = {"weights": bytes(range(256)) * 64, "step": b"41"}


def test_a_commit_applied_after_the_client_gave_up_lands_once(faulty_s3: Callable[..., ProxiedBucket]) -> None:
    bucket = faulty_s3(late_s=0.02)
    repo = _repo(bucket)
    info = _save_with_script(repo, bucket.proxy, [("conditional_put", "apply_late", 1)], STATE)
    _assert_exactly_one(bucket, info, STATE)
    _next_save_works(repo, bucket)


def test_a_lost_reply_then_a_failing_read_back_is_never_taken_for_a_rival(
    faulty_s3: Callable[..., ProxiedBucket],
) -> None:
    bucket = faulty_s3()
    repo = _repo(bucket)
    # 10 read failures: more than the store's own 7 attempts, so the writer must ask again.
    script = [("conditional_put", "apply_then_drop", 1), ("get", "503", 10)]
    info = _save_with_script(repo, bucket.proxy, script, STATE)
    assert bucket.proxy.injected[("get", "503")] == 10
    _assert_exactly_one(bucket, info, STATE)
    _next_save_works(repo, bucket)


def test_applied_then_500_then_412_then_failing_read_back_commits_once(
    faulty_s3: Callable[..., ProxiedBucket],
) -> None:
    bucket = faulty_s3()
    repo = _repo(bucket)
    script = [("conditional_put", "apply_then_500", 1), ("get", "503", 10)]
    info = _save_with_script(repo, bucket.proxy, script, STATE)
    assert bucket.proxy.requests["conditional_put"] >= 2, "the store retried the create and got 412"
    _assert_exactly_one(bucket, info, STATE)
    _next_save_works(repo, bucket)


def test_a_commit_landing_just_after_the_drop_is_not_skipped_by_a_rebase(
    faulty_s3: Callable[..., ProxiedBucket],
) -> None:
    """No store retries: the writer alone sees the reset, reads back before the late landing,
    and any listing it makes afterwards is slowed until after the landing."""
    bucket = faulty_s3(late_s=0.15, latency_s=0.4)
    repo = _repo(bucket, retries=0)
    script = [("conditional_put", "apply_late", 1), ("list", "latency", 4)]
    info = _save_with_script(repo, bucket.proxy, script, STATE)
    _assert_exactly_one(bucket, info, STATE)
    _next_save_works(repo, bucket)


def test_a_read_back_that_never_answers_ends_in_unknown_not_in_a_second_commit(
    faulty_s3: Callable[..., ProxiedBucket],
) -> None:
    """Until the deadline every read of the commit fails: the save says the outcome is unknown
    (naming its write_id), and commits nowhere else."""
    bucket = faulty_s3()
    repo = _repo(bucket, max_write_duration=5, retries=1)
    writer_script = [("conditional_put", "apply_then_drop", 1), ("get", "503", 10_000)]
    with pytest.raises(CommitOutcomeUnknownError, match="write_id") as err:
        _save_with_script(repo, bucket.proxy, writer_script, STATE)
    bucket.proxy.clear()
    assert err.value.key == "snapshots/s/00000000000000000001.json"
    infos = _direct(bucket).snapshots("s")
    assert len(infos) == 1 and infos[0].write_id in str(err.value), "the one commit is the save's own"


def test_every_ordering_through_the_public_api(faulty_s3: Callable[..., ProxiedBucket]) -> None:
    """tqsnap.save() itself, each ordering in turn on one stream: one snapshot per call.

    The read faults here land wherever the save reads first (its parent at begin included),
    so they stay within the store's own retries; the tests above script them past it."""
    bucket = faulty_s3(late_s=0.05)
    repo = _repo(bucket)
    orderings = [
        [("conditional_put", "apply_late", 1)],
        [("conditional_put", "apply_then_drop", 1), ("get", "503", 5)],
        [("conditional_put", "apply_then_500", 1), ("get", "503", 5)],
        [("conditional_put", "apply_then_drop", 2)],
    ]
    saved = []
    for n, script in enumerate(orderings):
        for klass, kind, count in script:
            bucket.proxy.script(klass, kind, count)
        info = tqsnap.save(repo, {"n": n}, stream="s")
        bucket.proxy.clear()
        saved.append(info)
    infos = _direct(bucket).snapshots("s")
    assert [(i.seq, i.write_id) for i in infos] == [(s.seq, s.write_id) for s in saved]
    assert [i.seq for i in infos] == [1, 2, 3, 4]
    assert [tqsnap.load(_direct(bucket), stream="s", snapshot=i.seq) for i in infos] == [{"n": n} for n in range(4)]


def test_a_tombstone_whose_reply_was_lost_is_reported_and_forget_is_idempotent(
    faulty_s3: Callable[..., ProxiedBucket],
) -> None:
    bucket = faulty_s3()
    repo = _repo(bucket)
    for n in range(3):
        tqsnap.save(repo, {"n": n}, stream="s")
    bucket.proxy.script("conditional_put", "apply_then_drop")
    report = forget(repo, RetentionPolicy(keep_last=2))
    assert report.tombstones_written == 1, "the tombstone that landed is reported as written"
    assert _direct(bucket).tombstoned_seqs("s") == {1}
    again = forget(repo, RetentionPolicy(keep_last=2))
    assert again.tombstones_written == 0 and not again.removed
    assert [i.seq for i in _direct(bucket).snapshots("s")] == [2, 3]


def test_a_tag_whose_reply_was_lost_exists_once_and_tagging_again_is_idempotent(
    faulty_s3: Callable[..., ProxiedBucket],
) -> None:
    bucket = faulty_s3()
    repo = _repo(bucket)
    first = tqsnap.save(repo, {"n": 1}, stream="s")
    tqsnap.save(repo, {"n": 2}, stream="s")
    bucket.proxy.script("conditional_put", "apply_then_500")
    tag = repo.tag("best", "s", first.seq)
    assert tag.target == first.id
    assert repo.tag("best", "s", first.seq).target == first.id  # a re-run succeeds
    with pytest.raises(FileExistsError, match="names s@1"):
        repo.tag("best", "s", "latest")  # never moved
    assert [t.name for t in _direct(bucket).tags()] == ["best"]
    assert open_store(bucket.url, **bucket.server.options()).exists("tags/best.json")
