"""After a restore, the TransferQueue carries on: consumers, KV reads, new puts."""

from __future__ import annotations

import torch
from helpers import FIELDS, kv_put, put

import tqsnap.tq


def test_consumers_continue_where_they_left_off_after_restore(tq_main, tq_two, repo_url):
    put(tq_main.client, "train", list(range(20)))
    first = tq_main.client.get_meta(
        data_fields=FIELDS, batch_size=6, partition_id="train", task_name="learner"
    )
    tq_main.client.get_data(first)
    critic = tq_main.client.get_meta(
        data_fields=["dense"], batch_size=15, partition_id="train", task_name="critic"
    )
    tqsnap.tq.snapshot(repo_url, stream="c")

    tqsnap.tq.restore(repo_url, stream="c", system=tq_two.system)

    nxt = tq_two.client.get_meta(data_fields=FIELDS, batch_size=14, partition_id="train", task_name="learner")
    assert nxt.global_indexes == list(range(6, 20))
    rest = tq_two.client.get_meta(
        data_fields=["dense"], batch_size=5, partition_id="train", task_name="critic"
    )
    assert rest.global_indexes == list(range(15, 20)) and critic.global_indexes == list(range(15))
    none_left = tq_two.client.get_meta(
        data_fields=FIELDS, batch_size=1, partition_id="train", task_name="learner"
    )
    assert none_left.size == 0


def test_kv_reads_by_key_work_after_restore(tq_main, tq_two, repo_url):
    kv_put(
        tq_main.client, "kv", ["alpha", "beta", "gamma"], [{"score": 0.25}, {"score": 2.0, "src": "x"}, {}]
    )
    tqsnap.tq.snapshot(repo_url, stream="kv")

    tqsnap.tq.restore(repo_url, stream="kv", system=tq_two.system)

    meta = tq_two.client.kv_retrieve_meta(keys=["gamma", "alpha"], partition_id="kv", create=False)
    data = tq_two.client.get_data(meta)
    assert meta.custom_meta == [{}, {"score": 0.25}]
    expected = torch.arange(9, dtype=torch.bfloat16).reshape(3, 3)
    assert torch.equal(data["emb"][0], expected[2]) and torch.equal(data["emb"][1], expected[0])
    assert tq_two.client.kv_list("kv")["kv"] == {
        "alpha": {"score": 0.25},
        "beta": {"score": 2.0, "src": "x"},
        "gamma": {},
    }


def test_new_puts_after_restore_get_indexes_that_collide_with_nothing(tq_main, tq_two, repo_url):
    put(tq_main.client, "train", list(range(10)))
    done = tq_main.client.get_meta(
        data_fields=FIELDS, batch_size=4, partition_id="train", task_name="learner"
    )
    tq_main.client.clear_samples(done)  # frees indexes 0-3 for reuse
    kv_put(tq_main.client, "kv", ["k"], [{"v": 1}])
    tqsnap.tq.snapshot(repo_url, stream="n")

    tqsnap.tq.restore(repo_url, stream="n", system=tq_two.system)

    live = set(range(4, 10)) | {
        tq_two.client.kv_retrieve_meta(keys=["k"], partition_id="kv").global_indexes[0]
    }
    meta = put(tq_two.client, "train", list(range(100, 110)))
    assert not set(meta.global_indexes) & live
    again = tq_two.client.get_meta(
        data_fields=FIELDS, batch_size=16, partition_id="train", task_name="learner"
    )
    data = tq_two.client.get_data(again)
    uids = sorted(int(row[0].item()) for row in data["dense"])
    assert uids == list(range(4, 10)) + list(range(100, 110))
