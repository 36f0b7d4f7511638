"""copy fanned out over threads and Ray tasks: the same copies as one worker, into real S3.

Each destination is a fresh bucket on the SeaweedFS fixture. An interrupted copy's orphans are
planted the way a killed copy leaves them (verified uploads at fresh keys, no commit), and the
orphan search is forced onto its fanned-out prefix listing, so both halves of a copy (finding
what an earlier copy left, moving the rest) run on the executor under test.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import torch

import tqsnap
from tqsnap.engine import PackOptions, Repository, copy_resume
from tqsnap.engine.copy import copy_all
from tqsnap.engine.shards import Shards
from tqsnap.faces.cli import main

pytestmark = pytest.mark.timeout(240)

OPTS = PackOptions(small_item=16 * 1024)  # each 32 KiB tensor is a shard of its own


def _state(i: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(i)
    return {f"t{k}": torch.randn(8192, generator=g) for k in range(6)}


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Two streams, the second sharing half its tensors with the first."""
    src = str(tmp_path_factory.mktemp("src") / "repo")
    for i in range(3):
        tqsnap.save(src, _state(i), stream="a", options=OPTS)
    for i in range(2):
        tqsnap.save(src, {**_state(i), "extra": torch.full((8192,), float(i))}, stream="b", options=OPTS)
    return src


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    ray = pytest.importorskip("ray")
    os.environ.update({"RAY_DEDUP_LOGS": "1", "RAY_AUTH_MODE": "disabled"})
    started = not ray.is_initialized()
    if started:
        try:
            ray.init(
                num_cpus=2,
                _node_ip_address="127.0.0.1",
                include_dashboard=False,
                logging_level="WARNING",
                log_to_driver=False,
            )
        except Exception as exc:  # noqa: BLE001 - Ray's startup timeout is a bare Exception
            pytest.skip(f"a local Ray cluster could not start on this machine: {exc}")
    yield
    if started:
        ray.shutdown()


def _interrupted_copy(src: str, url: str, options: dict[str, str], count: int) -> None:
    """What a copy killed before its commit leaves: the first ``count`` shards of ``a@1``, verified."""
    manifest = Repository.open(src).load_manifest("a", 1)
    source = Shards(Repository.open(src).store, threads=1)
    dst = Repository.open(url, create=True, storage_options=options)
    target = Shards(dst.store, threads=1)
    for ref in manifest.shards[:count]:
        target.adopt(source, ref)


def _mirror(source: str, endpoint: Any, **fanout: Any) -> tuple[list[tuple[Any, ...]], dict[str, Any]]:
    """Copy everything into a fresh bucket; what was copied, and what the bucket then holds."""
    url, options = endpoint.make_bucket()
    _interrupted_copy(source, url, options, 4)
    dst = Repository.open(url, storage_options=options)
    results = copy_all(Repository.open(source), dst, **fanout)
    summary = [
        (r.source.stream, r.source.seq, r.status, r.moved_shards, r.moved_bytes, r.reused_shards, r.resumed_shards)
        for r in results
    ]
    held = {}
    for stream in ("a", "b"):
        for info in dst.snapshots(stream):
            manifest = dst.load_manifest(stream, info.seq)
            held[f"{stream}@{info.seq}"] = (
                manifest.metadata["copied_from"]["seq"],
                [(ref.hash, ref.size, ref.stored_size, ref.codec) for ref in manifest.shards],
                [item.to_json() for item in manifest.items],
            )
    for seq, i in ((1, 0), (3, 2)):
        loaded = tqsnap.load(url, stream="a", snapshot=seq, storage_options=options)
        assert all(torch.equal(loaded[k], v) for k, v in _state(i).items())
    return summary, held


def test_copy_all_fanned_out_copies_what_one_worker_copies(source, seaweedfs_endpoint, ray_cluster, monkeypatch):
    monkeypatch.setattr(copy_resume, "SWEEP_ABOVE", 0)  # the orphan search lists whole prefixes
    one = _mirror(source, seaweedfs_endpoint, workers=1, executor="threads")
    summary, _ = one
    assert [s[:3] for s in summary] == [("a", 1, "copied"), ("a", 2, "copied"), ("a", 3, "copied"),
                                        ("b", 1, "copied"), ("b", 2, "copied")]
    assert summary[0][6] == 4, "the interrupted copy's shards were found and reused"
    assert _mirror(source, seaweedfs_endpoint, workers=4, executor="threads") == one
    assert _mirror(source, seaweedfs_endpoint, workers=2, executor="ray") == one


def test_cli_copy_all_takes_workers_and_executor(source, seaweedfs_endpoint, capsys):
    url, options = seaweedfs_endpoint.make_bucket()
    code = main(["copy", source, url, "--all", "--workers", "3", "--executor", "threads",
                 "--dst-endpoint-url", options["endpoint_url"]])
    assert code == 0
    out = capsys.readouterr().out
    assert "5 copied" in out, out
    assert main(["copy", source, url, "--all", "--workers", "0"]) == 2
    assert "use 1 to 1024" in capsys.readouterr().err
