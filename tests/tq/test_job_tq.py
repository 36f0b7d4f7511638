"""A live TransferQueue as the ``queue`` part of a job snapshot: staged, committed with the
loop state in one manifest, and restored alone into fewer and more units than were saved."""

from __future__ import annotations

import pytest
from helpers import FIELDS, assert_same, dump, fill, put

import tqsnap
import tqsnap.job
import tqsnap.tq
from tqsnap.adapters.transferqueue import restore_system
from tqsnap.engine import Repository
from tqsnap.errors import KindMismatchError, SnapshotNotFoundError


def test_queue_and_loop_commit_as_one_snapshot_and_the_queue_restores_into_fewer_units(tq_main, tq_two, repo_url):
    fill(tq_main.client)
    before = dump(tq_main.system)

    job = tqsnap.job.begin(repo_url, stream="run")
    staged = tqsnap.tq.stage(job, part="queue")
    assert staged.kind == "transferqueue" and staged.stats["tq_samples"] == 53 + 9 + 3
    assert len(staged.stats["tq_unit_stall_s"]) == 3
    assert tqsnap.snapshots(repo_url, "run") == []  # staged is not committed
    job.add("queue", staged)
    job.add("loop", {"step": 7, "consumed": 8})
    info = job.commit(metadata={"step": 7})

    assert info.kind == "job" and [s.seq for s in tqsnap.snapshots(repo_url, "run")] == [info.seq]
    assert tqsnap.job.parts(repo_url, "run") == {"loop": "state_dict", "queue": "transferqueue"}
    restored = tqsnap.tq.restore(repo_url, stream="run", part="queue", system=tq_two.system)
    assert (restored.source_units, restored.units, restored.samples) == (3, 2, 65)
    assert_same(before, dump(tq_two.system))  # contents and consumption status
    assert tqsnap.load(repo_url, stream="run", part="loop") == {"step": 7, "consumed": 8}
    assert tqsnap.verify(repo_url, stream="run").ok


def test_queue_part_from_two_units_restores_into_three_and_the_next_job_reuses_its_bytes(tq_main, tq_two, repo_url):
    put(tq_two.client, "train", list(range(0, 64)))
    meta = tq_two.client.get_meta(data_fields=FIELDS, batch_size=8, partition_id="train", task_name="learner")
    tq_two.client.get_data(meta)
    before = dump(tq_two.system)
    first = tqsnap.job.begin(repo_url, stream="two")
    first.add("queue", tqsnap.tq.stage(first, part="queue", system=tq_two.system))
    first.commit()

    meta = tq_two.client.get_meta(data_fields=FIELDS, batch_size=8, partition_id="train", task_name="learner")
    tq_two.client.get_data(meta)  # only the consumption status changes
    second = tqsnap.job.begin(repo_url, stream="two")
    part = tqsnap.tq.stage(second.token, url=repo_url, part="queue", system=tq_two.system)
    second.add("queue", part)
    second.commit()
    # The samples' shards come from the parent's queue part; only the controller state is new.
    assert part.stats["reused_bytes"] > 0 and part.stats["reused_shards"] > 0

    restored = tqsnap.tq.restore(repo_url, stream="two", snapshot=1, part="queue")  # the attached 3 units
    assert (restored.source_units, restored.units) == (2, 3)
    assert_same(before, dump(tq_main.system))


def test_a_job_snapshot_restored_as_a_plain_queue_snapshot_names_its_parts(tq_main, repo_url):
    fill(tq_main.client)
    job = tqsnap.job.begin(repo_url, stream="mixed")
    job.add("queue", tqsnap.tq.stage(job))
    job.add("queue2", tqsnap.tq.stage(job, part="queue2"))
    job.commit()
    repo = Repository.open(repo_url)
    with pytest.raises(KindMismatchError, match="queue2"):  # two queue parts: which one?
        restore_system(tq_main.system, repo, "mixed", force=True)
    with pytest.raises(SnapshotNotFoundError, match="no part 'rollouts'"):
        tqsnap.tq.restore(repo_url, stream="mixed", part="rollouts", force=True)


def test_an_async_queue_part_holds_the_queue_as_captured_whatever_happens_after(tq_main, tq_two, repo_url):
    fill(tq_main.client)
    before = dump(tq_main.system)

    job = tqsnap.job.begin(repo_url, stream="async")
    pending = tqsnap.tq.stage_async(job, part="queue")  # returns once the queue is captured
    assert pending.captured.done() and pending.captured.exception() is None
    # The job goes on at once: new samples, a consumed batch, and that batch cleared.
    put(tq_main.client, "train", list(range(53, 61)))
    meta = tq_main.client.get_meta(data_fields=FIELDS, batch_size=8, partition_id="train", task_name="learner")
    tq_main.client.get_data(meta)
    tq_main.client.clear_samples(meta)
    job.add_async("queue", pending)
    job.add_async("loop", {"step": 8})
    info = job.commit_async(metadata={"step": 8}).result(timeout=300)

    assert info.kind == "job" and job.parts["queue"].stats["tq_samples"] == 53 + 9 + 3
    restored = tqsnap.tq.restore(repo_url, stream="async", part="queue", system=tq_two.system)
    assert restored.samples == 65
    assert_same(before, dump(tq_two.system))  # contents and consumption status as captured
