"""``tqsnap check`` through the real command: references, re-hashing, samples, what a bad shard breaks."""

from __future__ import annotations

import torch
from cli_subprocess import Target, json_any, json_out, target_fixture  # noqa: F401 - the fixture
from cli_subprocess import tqsnap as run
from prometheus_client.parser import text_string_to_metric_families

import tqsnap
from tqsnap.engine import Repository
from tqsnap.engine.reader import load_body
from tqsnap.store import open_store


def _two_snapshots_sharing_a(t: Target) -> str:
    """s@1 and s@2 share item ``a``'s shard; return that shard's key."""
    a = torch.randn(300_000)
    opts = t.storage_options()
    tqsnap.save(t.url, {"a": a, "b": torch.randn(300_000)}, stream="s", storage_options=opts)
    tqsnap.save(t.url, {"a": a, "b": torch.randn(300_000)}, stream="s", storage_options=opts)
    repo = Repository.open(t.url, storage_options=opts)
    m = load_body(repo.store, repo.load_manifest("s", 2))
    (item,) = [i for i in m.items if i.path == "a"]
    return m.shards[item.extents[0].shard].key


def test_check_names_the_snapshots_and_items_a_corrupt_shard_breaks(target: Target, tmp_path) -> None:
    key = _two_snapshots_sharing_a(target)
    sound = json_out(run(target, "check", "--read-data", "--json"))
    assert sound["ok"] is True and sound["snapshots"] == 2 and sound["shards_read"] == sound["shards_referenced"]

    store = open_store(target.url, **target.storage_options())
    data = bytearray(store.get(key))
    data[100:108] = bytes(8) if any(data[100:108]) else b"\xff" * 8
    store.put(key, bytes(data))  # same size: only re-hashing can tell

    assert run(target, "check").returncode == 0, "structure and sizes alone look sound"
    damaged = run(target, "check", "--read-data", "--json")
    assert damaged.returncode == 1
    doc = json_any(damaged)
    (bad,) = doc["bad_shards"]
    assert bad["key"] == key and bad["problem"].startswith("corrupt")
    assert bad["snapshots"] == ["s@1", "s@2"] and bad["items"] == {"s@1": ["a"], "s@2": ["a"]}
    text = run(target, "check", "--read-data")
    assert text.returncode == 1 and "breaks s@1: a" in text.stdout and key in text.stdout

    metrics = tmp_path / "check.prom"
    assert run(target, "check", "--read-data", "--metrics-file", str(metrics)).returncode == 1
    values = {
        (s.name, s.labels.get("command")): s.value
        for fam in text_string_to_metric_families(metrics.read_text())
        for s in fam.samples
    }
    assert values[("tqsnap_check_bad_shards", "check")] == 1
    assert values[("tqsnap_job_success", "check")] == 1, "the job ran; the damage is its finding"


def test_check_finds_a_missing_shard_without_reading_data(tmp_path) -> None:
    t = Target(str(tmp_path / "repo"))
    key = _two_snapshots_sharing_a(t)
    open_store(t.url).delete_many([key])
    proc = run(t, "check", "--json")
    assert proc.returncode == 1
    (bad,) = json_any(proc)["bad_shards"]
    assert bad["key"] == key and bad["problem"] == "missing" and bad["snapshots"] == ["s@1", "s@2"]


def test_subsets_n_of_m_read_every_shard_exactly_once(tmp_path) -> None:
    t = Target(str(tmp_path / "repo"))
    _two_snapshots_sharing_a(t)
    parts = [json_out(run(t, "check", "--read-data-subset", f"{n}/3", "--json")) for n in (1, 2, 3)]
    assert sum(p["shards_read"] for p in parts) == parts[0]["shards_referenced"]
    assert json_out(run(t, "check", "--read-data-subset", "100%", "--json"))["shards_read"] == parts[0][
        "shards_referenced"
    ]
    bad = run(t, "check", "--read-data-subset", "0/3")
    assert bad.returncode == 2 and "1/10" in bad.stderr
