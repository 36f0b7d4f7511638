"""Copy between repositories, diff, stats, and the command line as a user runs it."""

from __future__ import annotations

import json

import pytest
import torch

import tqsnap
from tqsnap.faces.cli import main
from tqsnap.store import CountingStore, MemoryStore, open_store


def test_copy_moves_only_the_shards_the_destination_lacks(tmp_path, seaweedfs_endpoint) -> None:
    src = str(tmp_path / "src")
    state = {f"t{i}": torch.randn(300_000) for i in range(6)}
    tqsnap.save(src, state, stream="run")
    url, options = seaweedfs_endpoint.make_bucket()
    dst = CountingStore(open_store(url, **options))
    first = tqsnap.copy(src, dst, stream="run")
    assert first.stats["new_shards"] == 6
    for k, v in tqsnap.load(dst, stream="run").items():
        assert torch.equal(v, state[k])
    state["t3"] = torch.randn(300_000)
    tqsnap.save(src, state, stream="run")
    dst.reset()
    second = tqsnap.copy(src, dst, stream="run")
    assert second.stats["new_shards"] == 1 and second.stats["reused_shards"] == 5
    assert dst.requests["put"] == 1, "only the changed shard crossed the network"
    assert tqsnap.verify(dst, stream="run").ok
    assert torch.equal(tqsnap.load(dst, stream="run")["t3"], state["t3"])


def test_copy_refuses_to_spread_a_corrupt_shard(tmp_path) -> None:
    src = open_store(str(tmp_path / "src"))
    tqsnap.save(src, {"w": torch.randn(300_000)}, stream="s")
    key = next(i.key for i in src.list("shards/"))
    data = bytearray(src.get(key))
    data[7] ^= 1
    src.put(key, data)
    dst = MemoryStore()
    with pytest.raises(tqsnap.errors.CorruptShardError, match=key):
        tqsnap.copy(src, dst, stream="s")
    assert tqsnap.snapshots(dst) == []


def test_cli_init_snapshots_show_verify_diff_stats_as_json(tmp_path, capsys) -> None:
    url = str(tmp_path / "repo")
    assert main(["init", url, "--grace", "1h", "--max-write-duration", "10m", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["grace_seconds"] == 3600
    tqsnap.save(url, {"a": torch.ones(10), "b": torch.zeros(5)}, stream="s")
    tqsnap.save(url, {"a": torch.ones(10), "b": torch.ones(5), "c": 1}, stream="s")
    assert main(["snapshots", url, "--json"]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]  # JSON Lines
    assert [(s["stream"], s["seq"]) for s in listed] == [("s", 1), ("s", 2)]
    assert main(["show", url, "--stream", "s", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["seq"] == 2
    assert main(["verify", url, "--stream", "s", "--snapshot", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    assert main(["diff", url, "--stream", "s", "1", "2", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["changed"] == ["b"] and d["unchanged"] == 1
    assert main(["stats", url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["snapshots"] == 2


def test_cli_exit_codes_say_what_went_wrong(tmp_path, capsys) -> None:
    url = str(tmp_path / "repo")
    assert main(["snapshots", url]) == 3, "no repository: not found"
    assert "tqsnap init" in capsys.readouterr().err
    assert main(["init", url, "--grace", "10s", "--max-write-duration", "10s"]) == 2, (
        "unsafe grace: bad input"
    )
    tqsnap.save(url, {"w": torch.randn(300_000)}, stream="s")
    assert main(["verify", url, "--stream", "nope"]) == 3
    key = next(i.key for i in open_store(url).list("shards/"))
    open_store(url).delete_many([key])
    assert main(["verify", url, "--stream", "s"]) == 1, "damage found"
    assert key in capsys.readouterr().out
