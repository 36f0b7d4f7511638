"""tqsnap.hyper_parallel: hyper_parallel's storage writer and reader, driven through its call sequence.

hyper_parallel cannot be installed here; :mod:`hyper_parallel_planners` calls the writer and
reader in the order its ``save``/``load`` do, with planners written from its interface. One
rank runs in the test process against local disk and both S3 servers; three ranks (and a
reshard onto two) run in spawned gloo processes in tests/test_hyper_parallel_ranks.py. The last
test runs hyper_parallel's own ``save``/``load`` where it is importable. (That ``import tqsnap``
loads no torch is tests/test_layers.py's; this module itself imports ``tqsnap.hyper_parallel``
without hyper_parallel installed.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import hyper_parallel_planners as hp
import pytest
import torch

import tqsnap.hyper_parallel
from tqsnap.adapters.hyper_parallel import types as hp_types
from tqsnap.adapters.hyper_parallel.layout import EXTRA_KEY, KIND, checkpoint_id_text
from tqsnap.engine import Repository, SnapshotWriter
from tqsnap.errors import (
    InconsistentSnapshotError,
    JobError,
    KindMismatchError,
    ManifestError,
    PickleNotAllowedError,
    ShapeMismatchError,
    SnapshotNotFoundError,
    UnsupportedFormatError,
)

Writer = tqsnap.hyper_parallel.Writer
Reader = tqsnap.hyper_parallel.Reader


def full_state(version: int) -> dict[str, Any]:
    """The global state of one version; versions 0 and 1 differ only in the small ``ids``."""
    g = torch.Generator().manual_seed(7)
    return {
        "emb": torch.randn(3072, 256, generator=g),  # 1 MiB rows per rank of 3: shards of their own
        "w": torch.randn(96, 64, generator=g),
        "bias": torch.linspace(0, 1, 33, dtype=torch.float64),
        "ids": torch.arange(120, dtype=torch.int64).reshape(30, 4) + version,
        "step": 1000 + version,
        "cfg": {"lr": 0.25, "betas": (0.9, 0.999), "names": ["a", "b"], "flags": {1, 2}},
    }


def empty_state(version: int, rank: int, world: int) -> dict[str, Any]:
    """This rank's rows of every tensor, zeroed, and placeholders for the values."""
    out: dict[str, Any] = {}
    for fqn, value in full_state(version).items():
        if isinstance(value, torch.Tensor):
            start, end = hp.row_range(value.shape[0], rank, world)
            out[fqn] = torch.zeros_like(value[start:end])
        else:
            out[fqn] = None
    return out


def check_loaded(state: dict[str, Any], version: int, rank: int, world: int) -> None:
    """Exact equality with this rank's rows and with the values."""
    for fqn, value in full_state(version).items():
        if isinstance(value, torch.Tensor):
            start, end = hp.row_range(value.shape[0], rank, world)
            assert torch.equal(state[fqn], value[start:end]), f"{fqn} differs after load"
        else:
            assert state[fqn] == value, fqn


def save_one(url: str, version: int, stream: str = "hp", **kwargs: Any) -> Writer:
    writer = Writer(url, stream=stream, storage_options=kwargs.pop("storage_options", None))
    hp.save(full_state(version), writer, hp.RowSavePlanner(1), **kwargs)
    return writer


def load_one(url: str, version: int, **kwargs: Any) -> dict[str, Any]:
    state = empty_state(version, 0, 1)
    hp.load(state, Reader(url, **kwargs), hp.RowLoadPlanner(1))
    return state


def round_trip_with_a_small_change(url: str, options: dict[str, str] | None = None) -> None:
    first = save_one(url, 0, storage_options=options)
    assert first.last_snapshot is not None and first.last_snapshot.seq == 1
    second = save_one(url, 1, storage_options=options)
    assert second.last_snapshot is not None and second.last_snapshot.seq == 2
    stats = second.last_snapshot.stats
    assert stats["reused_bytes"] >= 3 * 1024 * 1024, stats  # emb is not uploaded again
    assert stats["new_bytes"] < 64 * 1024, stats  # only the small pack holding ids
    check_loaded(load_one(url, 1, stream="hp", storage_options=options), 1, 0, 1)
    check_loaded(load_one(url, 0, stream="hp", snapshot=1, storage_options=options), 0, 0, 1)


def test_one_rank_saves_loads_exactly_and_uploads_only_what_changed_on_disk(tmp_path: Path) -> None:
    round_trip_with_a_small_change(str(tmp_path / "repo"))


def test_one_rank_saves_loads_exactly_and_uploads_only_what_changed_on_s3(
    s3_repo_url: tuple[str, dict[str, str]],
) -> None:
    round_trip_with_a_small_change(*s3_repo_url)


def test_newer_sequence_with_the_global_plan_on_every_rank_saves_and_loads(tmp_path: Path) -> None:
    url = str(tmp_path / "repo")
    save_one(url, 0, every_rank_global_plan=True)
    save_one(url, 1, every_rank_global_plan=True)
    check_loaded(load_one(url, 1, stream="hp"), 1, 0, 1)
    assert Repository.open(url).load_manifest("hp", 2).stats["reused_bytes"] >= 3 * 1024 * 1024


def test_checkpoint_ids_name_repository_stream_and_snapshot_also_as_a_path(tmp_path: Path) -> None:
    url = f"file://{tmp_path / 'repo'}"
    elsewhere = Writer(str(tmp_path / "unused"), stream="ignored")
    # hyper_parallel's save turns a string checkpoint id into a Path, folding '//' of the URL.
    hp.save(full_state(0), elsewhere, hp.RowSavePlanner(1), checkpoint_id=Path(f"{url}#run-a"))
    assert elsewhere.last_checkpoint_id == f"{url}#run-a@1"
    assert not (tmp_path / "unused").exists()
    save_one(url, 1, stream="run-a")
    Repository.open(url).tag("best", "run-a", 1)
    for selector, version in (("run-a", 1), ("run-a@latest", 1), ("run-a@1", 0), ("run-a@tag:best", 0)):
        state = empty_state(version, 0, 1)
        reader = Reader(str(tmp_path / "nowhere"))
        hp.load(state, reader, hp.RowLoadPlanner(1), checkpoint_id=Path(f"{url}#{selector}"))
        check_loaded(state, version, 0, 1)
    assert checkpoint_id_text(Path("s3://bucket/p#run@3")) == "s3://bucket/p#run@3"
    with pytest.raises(ValueError, match="next snapshot"):
        Writer(url).initialize_writer("run-a@2")


def test_metadata_is_json_with_version_and_planner_data(tmp_path: Path) -> None:
    url = str(tmp_path / "repo")
    writer = save_one(url, 0)
    manifest = Repository.open(url).load_manifest("hp", 1)
    assert manifest.kind == KIND
    doc = json.loads(json.dumps(manifest.extra[EXTRA_KEY]))  # plain JSON, nothing pickled
    assert doc["version"] == "2.0"
    assert doc["state_dict"]["emb"]["tensor"]["dtype"] == "torch.float32"
    assert len(doc["state_dict"]["emb"]["tensor"]["chunks"]) == 1
    assert doc["state_dict"]["step"] == {"bytes": "b/step"}
    metadata = Reader(url, stream="hp").load_metadata()
    assert metadata.version == "2.0"
    assert metadata.planner_data == {fqn: (fqn,) for fqn in full_state(0)}
    assert metadata.storage_data[hp_types.MetadataIndex("emb", (0, 0))].relative_path == "t/emb@0,0"
    assert writer.last_snapshot is not None


def test_an_unknown_metadata_version_is_refused_on_save_and_nothing_is_committed(tmp_path: Path) -> None:
    url = str(tmp_path / "repo")
    with pytest.raises(UnsupportedFormatError, match="version '9.9'"):
        hp.save(full_state(0), Writer(url, stream="hp"), hp.RowSavePlanner(1, version="9.9"))
    assert Repository.open(url).visible_seqs("hp") == []


def test_an_unknown_metadata_version_is_refused_on_load(tmp_path: Path) -> None:
    url = str(tmp_path / "repo")
    save_one(url, 0)
    repo = Repository.open(url)
    doc = dict(repo.load_manifest("hp", 1).extra[EXTRA_KEY], version="9.9")
    crafted = SnapshotWriter.begin(repo, "future", KIND, parent=None)
    crafted.commit(extra={EXTRA_KEY: doc})
    with pytest.raises(UnsupportedFormatError, match="version '9.9'"):
        load_one(url, 0, stream="future")


def test_a_stored_value_whose_unpickling_runs_code_is_refused_unless_allow_pickle(tmp_path: Path) -> None:
    url = str(tmp_path / "repo")
    state = full_state(0) | {"cfg": hp.Marker("ran")}
    hp.save(state, Writer(url, stream="hp"), hp.RowSavePlanner(1))
    hp.MARKER_RAN.clear()
    target = empty_state(0, 0, 1)
    with pytest.raises(PickleNotAllowedError, match="b/cfg"):
        hp.load(target, Reader(url, stream="hp"), hp.RowLoadPlanner(1))
    assert hp.MARKER_RAN == []
    assert not target["emb"].any(), "a tensor was filled before the refusal"
    hp.load(target, Reader(url, stream="hp", allow_pickle=True), hp.RowLoadPlanner(1))
    assert hp.MARKER_RAN == ["ran"] and target["cfg"].note == "ran"
    assert torch.equal(target["emb"], state["emb"])


def test_a_value_stored_with_torch_save_loads_through_the_restricted_unpickler(tmp_path: Path) -> None:
    import io

    url = str(tmp_path / "repo")
    buf = io.BytesIO()
    torch.save({"t": torch.arange(4)}, buf)
    writer = Writer(url, stream="hp")
    planner = hp.RowSavePlanner(1)
    hp.save({"blob": buf}, writer, planner)
    target: dict[str, Any] = {"blob": None}
    hp.load(target, Reader(url, stream="hp"), hp.RowLoadPlanner(1))
    assert set(target["blob"]) == {"t"} and torch.equal(target["blob"]["t"], torch.arange(4))


def craft(url: str, stream: str, mutate: Any) -> None:
    """Commit a copy of ``hp``@1 (same items, same bytes) whose metadata ``mutate`` rewrote."""
    repo = Repository.open(url)
    source = repo.reader("hp", 1)
    data = source.read_items()
    writer = SnapshotWriter.begin(repo, stream, KIND, parent=None)
    packer = writer.packer()
    for path, item in source.items.items():
        packer.add(path, data[path], kind=item.kind, dtype=item.dtype, shape=item.shape)
    writer.add_result(packer.finish())
    doc = json.loads(json.dumps(source.manifest.extra[EXTRA_KEY]))
    mutate(doc["state_dict"])
    writer.commit(extra={EXTRA_KEY: doc})


def _set(fqn: str, field: str, value: Any) -> Any:
    return lambda sd: sd[fqn]["tensor"].__setitem__(field, value)


@pytest.mark.parametrize(
    ("mutate", "error", "match"),
    [
        (_set("w", "dtype", "torch.float64"), ManifestError, "float64"),
        (lambda sd: sd["w"]["tensor"]["chunks"][0].__setitem__(1, [48, 64]), ShapeMismatchError, "shape"),
        (lambda sd: sd["w"]["tensor"]["chunks"][0].__setitem__(1, [97, 64]), ManifestError, "outside"),
        (_set("w", "size", [200, 64]), ManifestError, "add up"),
        (lambda sd: sd.__setitem__("w", {"bytes": "t/w@0,0"}), ManifestError, "non-tensor"),
        (lambda sd: sd.__setitem__("w", {"bytes": "b/step"}), ManifestError, "holds a tensor there"),
        (lambda sd: sd.__setitem__("step", {"bytes": "b/none"}), ManifestError, "lacks"),
    ],
    ids=["dtype", "chunk-shape", "chunk-outside", "holes", "tensor-as-value", "value-over-tensor", "missing-item"],
)
def test_a_crafted_snapshot_is_refused_before_anything_is_filled(
    tmp_path: Path, mutate: Any, error: type[Exception], match: str
) -> None:
    url = str(tmp_path / "repo")
    save_one(url, 0)
    craft(url, "evil", mutate)
    target = empty_state(0, 0, 1)
    with pytest.raises(error, match=match):
        hp.load(target, Reader(url, stream="evil"), hp.RowLoadPlanner(1))
    assert not any(t.any() for t in target.values() if isinstance(t, torch.Tensor)), "a tensor was filled"
    assert all(v is None for v in target.values() if not isinstance(v, torch.Tensor)), "a value was set"


class LyingPlanner(hp.RowSavePlanner):
    """Says float64 in its write items while handing over float32 data."""

    def build_local_plan(self) -> Any:
        plan = super().build_local_plan()
        for item in plan.items:
            if item.tensor_data is not None:
                item.tensor_data["properties"] = hp_types.TensorProperties(dtype="torch.float64")
        return plan


def test_a_planner_whose_data_contradicts_its_plan_is_refused_on_save_and_nothing_is_committed(
    tmp_path: Path,
) -> None:
    url = str(tmp_path / "repo")
    with pytest.raises(ManifestError, match="would not load"):
        hp.save({"w": torch.ones(4, 2)}, Writer(url, stream="hp"), LyingPlanner(1))
    assert Repository.open(url).visible_seqs("hp") == []


def test_a_writer_shipped_to_a_persist_process_by_pickle_saves_there(tmp_path: Path) -> None:
    """hyper_parallel's async_save pickles the writer into its persist child process."""
    import pickle

    url = str(tmp_path / "repo")
    writer = save_one(url, 0)
    shipped = pickle.loads(pickle.dumps(writer))
    hp.save(full_state(1), shipped, hp.RowSavePlanner(1))
    assert shipped.last_snapshot is not None and shipped.last_snapshot.seq == 2
    assert shipped.last_snapshot.stats["reused_bytes"] >= 3 * 1024 * 1024
    check_loaded(load_one(url, 1, stream="hp"), 1, 0, 1)


def replay_two_ranks_rank1_first(url: str, version: int) -> float:
    """Two ranks by hand, with a plan that carries no word from the coordinator (as a cached
    plan, which skips both plan steps): rank 1 uploads before rank 0 begins. Returns rank 1's clock."""
    import time

    state = full_state(version)
    planners = [hp.RowSavePlanner(2), hp.RowSavePlanner(2)]
    writers = [Writer(url, stream="hp"), Writer(url, stream="hp")]
    plans = []
    for rank in (0, 1):
        planners[rank].configure_planner(state, rank=rank, is_coordinator=rank == 0)
        plans.append(planners[rank].build_local_plan())
    cached, metadata = planners[0].build_global_plan(plans)
    writers[1].configure_writer(is_coordinator=False, rank=1)
    early = writers[1].execute_write(cached[1], planners[1])
    time.sleep(0.05)
    writers[0].configure_writer(is_coordinator=True, rank=0)
    late = writers[0].execute_write(cached[0], planners[0])
    writers[0].finalize_checkpoint(metadata, [late, early])
    began_at = early[0].storage_data.began_at
    assert began_at is not None
    return began_at


def test_a_rank_replaying_a_cached_plan_before_the_coordinator_begins_moves_the_save_clock_back(
    tmp_path: Path,
) -> None:
    url = str(tmp_path / "repo")
    replay_two_ranks_rank1_first(url, 0)
    began_at = replay_two_ranks_rank1_first(url, 1)
    manifest = Repository.open(url).load_manifest("hp", 2)
    assert manifest.started_at == began_at  # the deadline counts from rank 1's first upload
    assert manifest.stats["reused_bytes"] >= 3 * 1024 * 1024  # rank 1 found the parent on its own
    check_loaded(load_one(url, 1, stream="hp"), 1, 0, 1)  # both ranks' chunks, onto one rank


def test_ranks_that_resolved_different_snapshots_are_refused_by_the_coordinator(tmp_path: Path) -> None:
    url = str(tmp_path / "repo")
    save_one(url, 0)
    save_one(url, 1)
    plans = []
    for snapshot in (1, 2):  # as if a save committed between two ranks' load_metadata
        reader = Reader(url, stream="hp", snapshot=snapshot)
        reader.configure_reader(reader.load_metadata(), is_coordinator=snapshot == 1, rank=snapshot - 1)
        plans.append(reader.optimize_local_plan(hp_types.LoadPlan(items=[])))
    with pytest.raises(InconsistentSnapshotError, match="hp@1, hp@2"):
        reader.optimize_global_plan(plans)


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_a_dcp_snapshot_and_a_missing_one_are_refused_with_typed_errors(tmp_path: Path) -> None:
    import torch.distributed.checkpoint as dcp

    import tqsnap.dcp

    url = str(tmp_path / "repo")
    dcp.save({"x": torch.ones(3)}, storage_writer=tqsnap.dcp.Writer(url, stream="d"), no_dist=True)
    with pytest.raises(KindMismatchError, match="'dcp' snapshot"):
        Reader(url, stream="d").load_metadata()
    with pytest.raises(SnapshotNotFoundError):
        Reader(url, stream="d", snapshot=7).load_metadata()


def test_a_save_staged_as_a_job_part_commits_with_the_job_and_loads_by_part(tmp_path: Path) -> None:
    import tqsnap.job

    url = str(tmp_path / "repo")
    staged = []
    for version in (0, 1):
        job = tqsnap.job.begin(url, stream="run")
        writer = Writer(url, stream="run", stage=job.token, part="model")
        hp.save(full_state(version), writer, hp.RowSavePlanner(1))
        assert writer.staged is not None and writer.last_snapshot is None
        assert Repository.open(url).visible_seqs("run") == list(range(1, version + 1)), "staging committed"
        job.add("model", writer.staged)
        job.add("loop", {"step": 1000 + version})
        job.commit()
        staged.append(writer.staged.stats)
    assert staged[1]["reused_bytes"] >= 3 * 1024 * 1024 and staged[1]["new_bytes"] < 64 * 1024, staged[1]
    for seq, version in ((1, 0), (2, 1)):
        check_loaded(load_one(url, version, stream="run", snapshot=seq, part="model"), version, 0, 1)
        check_loaded(load_one(url, version, stream="run", snapshot=seq), version, 0, 1)  # the only such part
    with pytest.raises(JobError, match="needs stage"):
        Writer(url, stream="run", part="model")


@pytest.mark.skipif(
    not hp_types.HYPER_PARALLEL_AVAILABLE,
    reason=f"hyper_parallel is not importable here ({hp_types.IMPORT_ERROR}); it is not on PyPI",
)
def test_hyper_parallels_own_save_and_load_use_tqsnap(tmp_path: Path) -> None:  # pragma: no cover
    from hyper_parallel.core.distributed_checkpoint import api

    url = str(tmp_path / "repo")
    state = {"w": torch.randn(16, 8), "step": 3}
    api.save(state, storage_writer=Writer(url, stream="hp"), no_dist=True)
    api.save(state | {"step": 4}, storage_writer=Writer(url, stream="hp"), no_dist=True)
    loaded = {"w": torch.zeros(16, 8), "step": 0}
    api.load(loaded, storage_reader=Reader(url, stream="hp"), no_dist=True)
    assert torch.equal(loaded["w"], state["w"]) and loaded["step"] == 4
    assert Repository.open(url).load_manifest("hp", 2).stats["reused_bytes"] > 0
