"""tqsnap.dcp in one process (no process group): what a single-GPU or CPU job relies on."""

from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner, DefaultSavePlanner
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    StorageMeta,
    TensorProperties,
    TensorStorageMetadata,
)

import tqsnap.dcp
from tqsnap.adapters.dcp.metadata_json import decode_metadata, encode_metadata, encode_value
from tqsnap.adapters.state_dict import save_state
from tqsnap.engine import PackOptions, PackResult, Repository, SnapshotWriter
from tqsnap.errors import (
    CorruptShardError,
    KindMismatchError,
    ManifestError,
    MissingShardError,
    PickleNotAllowedError,
    SnapshotNotFoundError,
)
from tqsnap.store import CountingStore, LocalStore

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")

MiB = 1 << 20


def make_state(seed: int = 0) -> dict[str, Any]:
    """A model-and-optimizer-like state: nested dicts and lists, several dtypes, plain values."""
    g = torch.Generator().manual_seed(seed)
    return {
        "model": {
            "embed.weight": torch.randn(256, 64, generator=g),
            "layers": [
                {"w": torch.randn(64, 64, generator=g).bfloat16(), "b": torch.zeros(64)},
                {"w": torch.randn(64, 64, generator=g).half(), "b": torch.ones(64)},
            ],
            "scale": torch.tensor(0.5),
            "empty": torch.empty(0, 4),
        },
        "optim": {"step": torch.tensor(12, dtype=torch.int64), "ids": torch.arange(1000, dtype=torch.int64)},
        "epoch": 3,
        "lr": 1e-4,
        "name": "run",
    }


def zeros_like_state(state: Any) -> Any:
    if isinstance(state, torch.Tensor):
        return torch.zeros_like(state)
    if isinstance(state, dict):
        return {k: zeros_like_state(v) for k, v in state.items()}
    if isinstance(state, list):
        return [zeros_like_state(v) for v in state]
    return None


def assert_same(actual: Any, expected: Any, where: str = "") -> None:
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor), where
        assert actual.dtype == expected.dtype and actual.shape == expected.shape, where
        assert torch.equal(actual, expected), where
    elif isinstance(expected, dict):
        assert set(actual) == set(expected), where
        for k in expected:
            assert_same(actual[k], expected[k], f"{where}/{k}")
    elif isinstance(expected, list):
        assert len(actual) == len(expected), where
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_same(a, e, f"{where}/{i}")
    else:
        assert actual == expected, where


def the_error(exc: BaseException) -> BaseException:
    """DCP wraps each rank's error in a CheckpointException; return the one inside."""
    assert isinstance(exc, CheckpointException), exc
    (inner,) = [e for e, _ in exc.failures.values()]
    return inner


@pytest.fixture
def repo_dir(tmp_path: Path) -> str:
    return str(tmp_path / "repo")


def save(state: dict[str, Any], url: Any, stream: str = "run", **kw: Any) -> tqsnap.dcp.Writer:
    writer = tqsnap.dcp.Writer(url, stream=stream, **kw)
    dcp.save(state, storage_writer=writer)
    return writer


def load(state: dict[str, Any], url: Any, stream: str = "run", snapshot: str | int = "latest") -> None:
    dcp.load(state, storage_reader=tqsnap.dcp.Reader(url, stream=stream, snapshot=snapshot))


# --- round trips ---------------------------------------------------------------------------------


def test_save_then_load_restores_every_value_on_local_disk(repo_dir: str) -> None:
    state = make_state()
    save(state, repo_dir)
    out = zeros_like_state(state)
    load(out, repo_dir)
    assert_same(out, state)


def test_save_then_load_round_trips_through_seaweedfs(seaweedfs_endpoint: Any, make_bucket: Any) -> None:
    url, options = make_bucket(seaweedfs_endpoint)
    state = make_state(1)
    writer = tqsnap.dcp.Writer(url, stream="run", storage_options=options)
    dcp.save(state, storage_writer=writer)
    out = zeros_like_state(state)
    dcp.load(out, storage_reader=tqsnap.dcp.Reader(url, stream="run", storage_options=options))
    assert_same(out, state)
    assert writer.last_snapshot is not None and writer.last_snapshot.seq == 1


def test_dcp_save_returns_metadata_naming_the_committed_snapshot(repo_dir: str) -> None:
    writer = tqsnap.dcp.Writer(repo_dir, stream="run")
    first = dcp.save(make_state(), storage_writer=writer)
    second = dcp.save(make_state(), storage_writer=writer)
    assert first.storage_meta.checkpoint_id.endswith("#run@1")
    assert second.storage_meta.checkpoint_id.endswith("#run@2")
    assert writer.last_snapshot is not None and writer.last_snapshot.seq == 2


def test_each_save_is_one_dcp_snapshot_with_json_metadata_and_no_pickle(repo_dir: str) -> None:
    save(make_state(), repo_dir)
    store = LocalStore(repo_dir)
    keys = [info.key for info in store.list("")]
    assert not any(k.endswith(".metadata") for k in keys), "DCP's pickled .metadata file must not exist"
    (manifest_key,) = [k for k in keys if k.startswith("snapshots/")]
    doc = json.loads(store.get(manifest_key))
    assert doc["kind"] == "dcp"
    entries = doc["extra"]["dcp"]["state_dict"]
    assert entries["model.embed.weight"]["tensor"]["size"] == [256, 64]
    assert entries["model.layers.0.w"]["tensor"]["dtype"] == "bfloat16"
    assert "bytes" in entries["epoch"]
    # The planner's fqn -> key path map survives as JSON, list indexes stay ints.
    assert doc["extra"]["dcp"]["planner_data"]["model.layers.1.b"] == {"$tuple": ["model", "layers", 1, "b"]}


def test_a_stream_keeps_every_save_and_any_one_can_be_loaded(repo_dir: str) -> None:
    writer = tqsnap.dcp.Writer(repo_dir, stream="run")
    states = [make_state(seed) for seed in range(3)]
    for state in states:
        dcp.save(state, storage_writer=writer)
    for seq, state in enumerate(states, start=1):
        out = zeros_like_state(state)
        load(out, repo_dir, snapshot=seq)
        assert_same(out, state)


def test_checkpoint_id_selects_stream_repository_and_snapshot(tmp_path: Path) -> None:
    other = str(tmp_path / "other")
    state = make_state(4)
    dcp.save(
        state, checkpoint_id=f"{other}#named", storage_writer=tqsnap.dcp.Writer(str(tmp_path / "unused"))
    )
    dcp.save(make_state(5), checkpoint_id=f"{other}#named", storage_writer=tqsnap.dcp.Writer(other))
    out = zeros_like_state(state)
    dcp.load(out, checkpoint_id="named@1", storage_reader=tqsnap.dcp.Reader(other))
    assert_same(out, state)
    Repository.open(other).tag("good", "named", 1)
    out = zeros_like_state(state)
    dcp.load(
        out, checkpoint_id=f"{other}#named@tag:good", storage_reader=tqsnap.dcp.Reader(str(tmp_path / "x"))
    )
    assert_same(out, state)


@pytest.mark.parametrize(
    ("checkpoint_id", "writer_ok", "reader_ok"),
    [
        ("run-1", True, True),
        ("run-1@latest", True, True),
        ("run-1@7", False, True),
        ("run-1@tag:best", False, True),
        ("s3://bucket/prefix#run-1@3", False, True),
        ("s3://bucket/prefix#run-1", True, True),
        ("run/1", False, False),
        ("run-1@yesterday", False, False),
        (Path("/tmp/ckpt"), False, False),
    ],
)
def test_validate_checkpoint_id_accepts_stream_and_snapshot_names_only(
    checkpoint_id: Any, writer_ok: bool, reader_ok: bool
) -> None:
    assert tqsnap.dcp.Writer.validate_checkpoint_id(checkpoint_id) is writer_ok
    assert tqsnap.dcp.Reader.validate_checkpoint_id(checkpoint_id) is reader_ok


# --- incremental ---------------------------------------------------------------------------------


def test_second_save_with_90_percent_unchanged_uploads_at_most_12_percent(repo_dir: str) -> None:
    store = CountingStore(LocalStore(repo_dir))
    state = {f"layer{i}": torch.randn(MiB // 4) for i in range(20)}  # 20 tensors of 1 MiB
    writer = tqsnap.dcp.Writer(store, stream="run")
    dcp.save(state, storage_writer=writer)
    total = sum(t.nbytes for t in state.values())
    state["layer3"].add_(1)
    state["layer17"].mul_(2)
    store.reset()
    dcp.save(state, storage_writer=writer)
    stats = writer.last_snapshot.stats
    uploaded = store.bytes["put"] + store.bytes["put_if_absent"]
    assert stats["stored_bytes"] <= 0.12 * total
    assert uploaded <= 0.12 * total, f"uploaded {uploaded} of {total} bytes"
    assert stats["reused_shards"] == 18
    out = {k: torch.zeros_like(v) for k, v in state.items()}
    load(out, store)
    assert_same(out, state)


def test_an_unchanged_save_uploads_only_its_manifest(repo_dir: str) -> None:
    store = CountingStore(LocalStore(repo_dir))
    state = make_state()
    writer = tqsnap.dcp.Writer(store, stream="run")
    dcp.save(state, storage_writer=writer)
    store.reset()
    dcp.save(state, storage_writer=writer)
    assert store.requests["put"] == 0
    assert store.requests["put_if_absent"] == 1
    assert writer.last_snapshot.stats["new_shards"] == 0


def test_parent_none_uploads_everything_again(repo_dir: str) -> None:
    state = make_state()
    save(state, repo_dir)
    writer = save(state, repo_dir, parent=None)
    assert writer.last_snapshot.stats["reused_shards"] == 0
    assert writer.last_snapshot.stats["new_shards"] > 0


def test_async_save_commits_a_loadable_snapshot(repo_dir: str) -> None:
    state = make_state(7)
    writer = tqsnap.dcp.Writer(repo_dir, stream="run")
    response = dcp.async_save(state, storage_writer=writer)
    future = getattr(response, "upload_completion", response)
    metadata = future.result(timeout=60)
    assert metadata.storage_meta.checkpoint_id.endswith("#run@1")
    out = zeros_like_state(state)
    load(out, repo_dir)
    assert_same(out, state)


def test_writer_and_reader_pickle_without_their_connections(repo_dir: str) -> None:
    writer = save(make_state(), repo_dir)
    clone = pickle.loads(pickle.dumps(writer))
    dcp.save(make_state(1), storage_writer=clone)
    assert clone.last_snapshot is not None and clone.last_snapshot.seq == 2
    reader = tqsnap.dcp.Reader(repo_dir, stream="run")
    reader.read_metadata()
    out = zeros_like_state(make_state())
    dcp.load(out, storage_reader=pickle.loads(pickle.dumps(reader)))
    assert_same(out, make_state(1))


# --- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["state_dict", "transferqueue"])
def test_loading_a_snapshot_of_another_kind_raises_kind_mismatch(repo_dir: str, kind: str) -> None:
    repo = Repository.open(repo_dir, create=True)
    if kind == "state_dict":
        save_state(repo, {"w": torch.ones(3)}, stream="run")
    else:  # what the TransferQueue adapter commits: items and shards of its own, another kind
        writer = SnapshotWriter.begin(repo, "run", kind)
        packer = writer.packer()
        packer.add("field/0", b"\x00" * 64)
        writer.add_result(packer.finish())
        writer.commit(extra={"partitions": {}})
    with pytest.raises(CheckpointException) as info:
        load({"w": torch.zeros(3)}, repo_dir)
    assert isinstance(the_error(info.value), KindMismatchError)
    with pytest.raises(KindMismatchError):  # and directly, outside DCP's wrapping
        tqsnap.dcp.Reader(repo_dir, stream="run").read_metadata()


def test_loading_a_stream_that_does_not_exist_raises_snapshot_not_found(repo_dir: str) -> None:
    save(make_state(), repo_dir)
    with pytest.raises(CheckpointException) as info:
        load({"w": torch.zeros(3)}, repo_dir, stream="nope")
    assert isinstance(the_error(info.value), SnapshotNotFoundError)


def _shard_keys(repo_dir: str) -> list[str]:
    return [info.key for info in LocalStore(repo_dir).list("shards/")]


def test_loading_with_a_missing_shard_raises_missing_shard_error(repo_dir: str) -> None:
    state = {"a": torch.randn(MiB // 2), "b": torch.randn(MiB // 2)}
    save(state, repo_dir)
    keys = _shard_keys(repo_dir)
    LocalStore(repo_dir).delete_many(keys[:1])
    with pytest.raises(CheckpointException) as info:
        load({k: torch.zeros_like(v) for k, v in state.items()}, repo_dir)
    error = the_error(info.value)
    assert isinstance(error, MissingShardError) and error.key == keys[0]


def test_loading_a_corrupt_shard_raises_corrupt_shard_error(repo_dir: str) -> None:
    state = {"a": torch.randn(MiB // 2)}
    save(state, repo_dir)
    (key,) = _shard_keys(repo_dir)
    path = Path(repo_dir) / key
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointException) as info:
        load({"a": torch.zeros_like(state["a"])}, repo_dir)
    assert isinstance(the_error(info.value), CorruptShardError)


def test_loading_into_a_tensor_of_another_shape_fails_before_any_shard_is_fetched(repo_dir: str) -> None:
    save({"w": torch.randn(8, 4)}, repo_dir)
    store = CountingStore(LocalStore(repo_dir))
    target = {"w": torch.zeros(4, 8)}
    with pytest.raises(CheckpointException) as info:
        load(target, store)
    error = the_error(info.value)
    assert isinstance(error, ValueError) and str(error).endswith("for w")
    assert store.bytes["get"] < 64 * 1024  # only the manifest was read
    assert torch.equal(target["w"], torch.zeros(4, 8))


def test_a_stored_chunk_whose_shape_disagrees_with_its_metadata_raises_shape_mismatch(repo_dir: str) -> None:
    save({"w": torch.randn(8, 4)}, repo_dir)
    repo = Repository.open(repo_dir)
    reader = repo.reader("run", kind="dcp")
    extra = json.loads(json.dumps(reader.manifest.extra))
    entry = extra["dcp"]["state_dict"]["w"]["tensor"]
    entry["size"] = [4, 8]
    entry["chunks"][0][1] = [4, 8]  # the item still holds an 8x4 tensor
    forged = SnapshotWriter.begin(repo, "run", "dcp")
    forged.add_result(PackResult(shards=reader.manifest.shards, items=list(reader.items.values())))
    forged.commit(extra=extra)
    with pytest.raises(CheckpointException) as info:
        load({"w": torch.zeros(4, 8)}, repo_dir)
    assert isinstance(the_error(info.value), tqsnap.dcp.ShapeMismatchError)


def test_a_destination_of_the_wrong_shape_raises_shape_mismatch(repo_dir: str) -> None:
    save({"w": torch.randn(8, 4)}, repo_dir)

    class WrongBuffer(DefaultLoadPlanner):
        """A planner that hands storage a buffer of the wrong shape (a bug in user code)."""

        def resolve_tensor(self, read_item: Any) -> torch.Tensor:
            return torch.zeros(2, 2)

    with pytest.raises(CheckpointException) as info:
        dcp.load(
            {"w": torch.zeros(8, 4)}, storage_reader=tqsnap.dcp.Reader(repo_dir, "run"), planner=WrongBuffer()
        )
    assert isinstance(the_error(info.value), tqsnap.dcp.ShapeMismatchError)


def test_use_collectives_false_in_one_process_still_commits(repo_dir: str) -> None:
    state = make_state(2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(state, storage_writer=tqsnap.dcp.Writer(repo_dir, stream="run"), use_collectives=False)
    out = zeros_like_state(state)
    load(out, repo_dir)
    assert_same(out, state)


# --- metadata JSON -------------------------------------------------------------------------------


def test_metadata_json_round_trips_every_field() -> None:
    props = TensorProperties(dtype=torch.bfloat16, requires_grad=True, memory_format=torch.channels_last)
    md = Metadata(
        state_dict_metadata={
            "w": TensorStorageMetadata(
                props,
                torch.Size([4, 6]),
                [
                    ChunkStorageMetadata(torch.Size([0, 0]), torch.Size([2, 6])),
                    ChunkStorageMetadata(torch.Size([2, 0]), torch.Size([2, 6])),
                ],
            ),
            "extra": BytesStorageMetadata(),
        },
        planner_data={"w": ("model", 0, "w"), "k": {1: (2.5, float("inf")), "$x": [None, True]}},
        storage_meta=StorageMeta(checkpoint_id="s3://b/p#run", save_id="abc", modules=["m"]),
        version="1.0.0",
    )
    paths = {
        MetadataIndex("w", [0, 0]): "t/w@0,0",
        MetadataIndex("w", [2, 0]): "t/w@2,0",
        MetadataIndex("extra"): "b/extra",
    }
    doc = json.loads(json.dumps(encode_metadata(md, paths), allow_nan=False))
    back = decode_metadata(doc, "test")
    assert back.state_dict_metadata["w"] == md.state_dict_metadata["w"]
    assert isinstance(back.state_dict_metadata["extra"], BytesStorageMetadata)
    assert back.planner_data == md.planner_data
    assert back.storage_meta == md.storage_meta
    assert back.version == "1.0.0"
    assert back.storage_data == paths


def test_planner_data_that_only_pickle_could_store_is_refused() -> None:
    with pytest.raises(PickleNotAllowedError):
        encode_value({"a": object()})


def test_metadata_of_another_format_is_refused() -> None:
    with pytest.raises(ManifestError):
        decode_metadata({"format": 99}, "test")
    with pytest.raises(ManifestError):
        decode_metadata({"format": 1, "state_dict": {"w": {"tensor": {"dtype": "os.system"}}}}, "test")


def test_pack_options_reach_the_packer(repo_dir: str) -> None:
    state = {"w": torch.randn(MiB)}  # 4 MiB
    writer = save(state, repo_dir, options=PackOptions(chunk_size=MiB))
    assert writer.last_snapshot.stats["new_shards"] == 4


class StagingPlanner(DefaultLoadPlanner):
    """Hands out ONE staging buffer per tensor and copies it back in commit_tensor.

    Legal under DCP's planner contract, and only correct if storage strictly alternates
    resolve_tensor -> copy -> commit_tensor; it records that order.
    """

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def resolve_tensor(self, read_item: Any) -> torch.Tensor:
        self.calls.append("resolve")
        self.staging = torch.empty_like(super().resolve_tensor(read_item))
        return self.staging

    def commit_tensor(self, read_item: Any, tensor: torch.Tensor) -> None:
        self.calls.append("commit")
        assert tensor.data_ptr() == self.staging.data_ptr()
        super().resolve_tensor(read_item).copy_(tensor)


@pytest.mark.parametrize("planner", [None, StagingPlanner], ids=["default-planner", "staging-planner"])
def test_tensors_spanning_several_shards_load_exactly_with_any_planner(repo_dir: str, planner: Any) -> None:
    state = {"big": torch.randn(MiB), "wide": torch.randn(300, 1000).bfloat16(), "small": torch.arange(7)}
    save(state, repo_dir, options=PackOptions(chunk_size=MiB // 2))
    out = zeros_like_state(state)
    used = planner() if planner else None
    dcp.load(out, storage_reader=tqsnap.dcp.Reader(repo_dir, stream="run"), planner=used)
    assert_same(out, state)
    if used is not None:
        assert used.calls == ["resolve", "commit"] * 3


class CachingSavePlanner(DefaultSavePlanner):
    """DCP's plan caching, under a class name of its own (DCP keys its global cache by it)."""

    def __init__(self) -> None:
        super().__init__(enable_plan_caching=True)


def test_a_cached_plan_naming_a_forgotten_parent_reuses_nothing_from_it(repo_dir: str) -> None:
    """DCP's plan cache replays an earlier save's storage_data; its parent is re-checked."""
    state = {f"w{i}": torch.randn(MiB // 4) for i in range(4)}
    save(state, repo_dir)  # seq 1
    planner = CachingSavePlanner()
    writer = tqsnap.dcp.Writer(repo_dir, stream="run")
    dcp.save(state, storage_writer=writer, planner=planner)  # seq 2, plan cached naming parent 1
    assert writer.last_snapshot.stats["reused_shards"] == 4
    repo = Repository.open(repo_dir)
    repo.write_tombstone("run", 1)
    dcp.save(state, storage_writer=writer, planner=planner)  # replays the plan naming seq 1
    assert writer.last_snapshot.seq == 3
    assert writer.last_snapshot.stats["reused_shards"] == 0, "must not reuse shards of a forgotten parent"
    out = {k: torch.zeros_like(v) for k, v in state.items()}
    load(out, repo_dir)
    assert_same(out, state)
