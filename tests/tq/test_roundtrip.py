"""Round trips: every data kind comes back exactly, into the same or another unit count."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from helpers import FIELDS, assert_same, dump, fill, kv_put, put

import tqsnap.tq
from tqsnap.adapters.transferqueue import restore_system, snapshot_system
from tqsnap.adapters.transferqueue.inspection import diff_states, dump_system
from tqsnap.engine import Repository


def test_dense_jagged_and_non_tensor_values_round_trip_exactly_into_fewer_units(tq_main, tq_two, repo_url):
    fill(tq_main.client)
    before = dump(tq_main.system)
    result = tqsnap.tq.snapshot(repo_url, stream="run", metadata={"step": 7})
    assert result.samples == 53 + 9 + 3 and result.units == 3 and result.dropped == 0

    restored = restore_system(tq_two.system, Repository.open(repo_url), "run")

    assert (restored.source_units, restored.units, restored.samples) == (3, 2, 65)
    assert_same(before, dump(tq_two.system))
    assert diff_states(dump_system(tq_main.system), dump_system(tq_two.system)) == []  # what the demo checks


def test_restore_into_more_units_reroutes_every_sample(tq_main, tq_two, repo_url):
    fill(tq_two.client)
    before = dump(tq_two.system)
    repo = Repository.open(repo_url, create=True)
    snapshot_system(tq_two.system, repo, "two")

    restored = tqsnap.tq.restore(repo_url, stream="two")  # into the attached 3-unit TransferQueue

    assert (restored.source_units, restored.units) == (2, 3)
    assert_same(before, dump(tq_main.system))  # dump() also checks gi % 3 placement


def test_round_trip_through_seaweedfs(tq_main, tq_two, seaweedfs_endpoint, make_bucket):
    url, options = make_bucket(seaweedfs_endpoint)
    fill(tq_main.client)
    before = dump(tq_main.system)

    tqsnap.tq.snapshot(url, stream="s3", storage_options=options)
    tqsnap.tq.restore(url, stream="s3", storage_options=options, system=tq_two.system)

    assert_same(before, dump(tq_two.system))


def test_value_kinds_beyond_the_common_ones_round_trip(tq_main, tq_two, repo_url):
    from tensordict import TensorDict
    from tensordict.tensorclass import NonTensorStack

    values: list[Any] = [
        None,
        3,
        2.5,
        "text",
        b"raw bytes",
        {"nested": {"list": [1, (2, 3)], 4: "int key"}},
        torch.tensor([1.5, 2.5]),
    ]
    n = len(values)
    td = TensorDict(
        {
            "obj": NonTensorStack(*values),
            "scalar": torch.arange(n, dtype=torch.float64),  # rows are 0-d tensors
            "flags": torch.tensor([True, False] * 3 + [True]).reshape(n, 1),
            "bf16": torch.randn(n, 4).to(torch.bfloat16),
        },
        batch_size=n,
    )
    tq_main.client.put(data=td, partition_id="odd")
    before = dump(tq_main.system)

    tqsnap.tq.snapshot(repo_url, stream="odd")
    tqsnap.tq.restore(repo_url, stream="odd", system=tq_two.system)

    assert_same(before, dump(tq_two.system))


def test_a_difference_is_reported_in_words(tq_main, tq_two, repo_url):
    put(tq_main.client, "train", list(range(6)))
    tqsnap.tq.snapshot(repo_url, stream="d")
    tqsnap.tq.restore(repo_url, stream="d", system=tq_two.system)
    put(tq_two.client, "train", [99])

    diffs = diff_states(dump_system(tq_main.system), dump_system(tq_two.system))

    assert any("global_indexes differs" in d for d in diffs) and any("field 'dense'" in d for d in diffs)


def test_snapshot_of_an_unchanged_transferqueue_uploads_no_data(tq_main, repo_url):
    put(tq_main.client, "train", list(range(30)))
    kv_put(tq_main.client, "kv", ["a", "b"], [{"t": 1}, {"t": 2}])
    first = tqsnap.tq.snapshot(repo_url, stream="s")
    second = tqsnap.tq.snapshot(repo_url, stream="s")
    assert first.new_bytes > 0
    assert second.new_bytes == 0 and second.reused_bytes == first.new_bytes + first.reused_bytes
    assert second.info.parent == first.info.id


@pytest.mark.parametrize("fields", [FIELDS])
def test_restored_data_reads_back_through_transferqueue(tq_main, tq_two, repo_url, fields):
    put(tq_main.client, "train", list(range(12)))
    tqsnap.tq.snapshot(repo_url, stream="read")
    tqsnap.tq.restore(repo_url, stream="read", system=tq_two.system)

    meta = tq_two.client.get_meta(data_fields=fields, batch_size=12, partition_id="train", task_name="reader")
    data = tq_two.client.get_data(meta)

    assert meta.global_indexes == list(range(12))
    for i, gi in enumerate(meta.global_indexes):
        assert data["dense"][i].tolist() == [float(gi)] * 6
        assert data["jag"][i].shape == (gi % 7 + 1, 2)
