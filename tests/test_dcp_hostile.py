"""tqsnap.dcp.Reader against crafted snapshots: no code runs, nothing is half-written, errors are typed.

Each case saves a real checkpoint with ``tqsnap.dcp.Writer``, then commits a crafted copy of it
as a snapshot of its own stream: the items and DCP metadata rewritten (as anyone who can write
the bucket could), or the manifest's bytes rewritten in place. The copy is loaded with
``dcp.load``, in one process, on the SeaweedFS server, and on a gloo group of two ranks. Every
hostile case asserts that:

- the typed ``tqsnap.errors`` error reaches the caller and names the snapshot;
- no code ran: the payload's ``__reduce__`` would create a marker file, which never appears
  (and the payload does create it once the caller opts in with ``allow_pickle=True``);
- every destination value is exactly as it was before the load;
- the repository holds exactly the same objects, byte for byte.
"""

from __future__ import annotations

import copy
import io
import json
import os
import pickle
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp
from test_dcp_distributed import assert_all_ok, run_ranks
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
from torch.distributed.device_mesh import DeviceMesh

import tqsnap.dcp
from tqsnap.engine import Repository, SnapshotWriter
from tqsnap.errors import FormatError, ManifestError, PickleNotAllowedError, ShapeMismatchError, TqsnapError
from tqsnap.format.keys import snapshot_key
from tqsnap.format.shard import content_hash

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")

BASE = "base"


# --- payloads ------------------------------------------------------------------------------------


class RunsCode:
    """Unpickling this creates ``marker``: the proof that a load ran code from the snapshot."""

    def __init__(self, marker: Path, value: Any = 7) -> None:
        self.marker, self.value = str(marker), value

    def __reduce__(self) -> tuple[Any, ...]:
        # eval runs the open() and yields an innocent-looking value, as a real attack would
        return (eval, (f"[open({self.marker!r}, 'w').close(), {self.value!r}][1]",))


def torch_saved(value: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(value, buf)
    return buf.getvalue()


# --- the checkpoint and its destination ----------------------------------------------------------


def make_state() -> dict[str, Any]:
    g = torch.Generator().manual_seed(7)
    return {
        "w": torch.randn(8, 4, generator=g),
        "big": torch.randn(512, 640, generator=g),  # 1.25 MiB: whole raw shards, read in place
        "ids": torch.arange(12, dtype=torch.int64),
        "epoch": 3,
        "cfg": {"lr": 0.1, "betas": (0.9, 0.99), "names": ["a", "b"], "note": None},
    }


def empty_state() -> dict[str, Any]:
    return {
        "w": torch.full((8, 4), -1.0),
        "big": torch.full((512, 640), -1.0),
        "ids": torch.full((12,), -1, dtype=torch.int64),
        "epoch": -1,
        "cfg": {"lr": -1.0, "betas": (), "names": [], "note": "unset"},
    }


def same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and torch.equal(a, b)
        )
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


# --- crafting ------------------------------------------------------------------------------------


@dataclass
class Spec:
    """One item to write into a crafted snapshot."""

    data: bytes
    kind: str
    dtype: str | None = None
    shape: list[int] | None = None


Edit = Callable[[dict[str, Spec], dict[str, Any]], None]


@dataclass
class Repo:
    """A repository (local or on S3) holding stream ``base``: the honest checkpoint."""

    url: str
    options: dict[str, Any]

    def open(self) -> Repository:
        return Repository.open(self.url, storage_options=self.options)

    def forge(self, stream: str, edit: Edit) -> str:
        """Commit a copy of ``base`` into ``stream`` after ``edit(items, dcp_metadata)``; its name."""
        repo = self.open()
        source = repo.reader(BASE, kind="dcp")
        data = source.read_items()
        items = {
            path: Spec(bytes(data[path]), item.kind, item.dtype, item.shape) for path, item in source.items.items()
        }
        extra = json.loads(json.dumps(source.manifest.extra))
        edit(items, extra["dcp"])
        writer = SnapshotWriter.begin(repo, stream, "dcp", parent=None)
        packer = writer.packer()
        for path, spec in sorted(items.items()):
            packer.add(path, spec.data, kind=spec.kind, dtype=spec.dtype, shape=spec.shape)
        writer.add_result(packer.finish())
        info = writer.commit(extra=extra)
        return f"{info.stream}@{info.seq}"

    def rewrite_manifest(self, stream: str, edit: Callable[[dict[str, Any]], None]) -> None:
        """Rewrite the bytes of ``stream``'s first manifest in place (a writer with overwrite rights)."""
        store = self.open().store
        key = snapshot_key(stream, 1)
        doc = json.loads(store.get(key))
        edit(doc)
        store.put(key, json.dumps(doc).encode())

    def contents(self) -> dict[str, str]:
        """Every object and the hash of its bytes: to prove a load changed nothing."""
        store = self.open().store
        return {info.key: content_hash(store.get(info.key)) for info in store.list("")}

    def reader(self, stream: str, **kw: Any) -> tqsnap.dcp.Reader:
        return tqsnap.dcp.Reader(self.url, stream=stream, storage_options=self.options, **kw)


def _save_base(url: str, options: dict[str, Any]) -> Repo:
    dcp.save(make_state(), storage_writer=tqsnap.dcp.Writer(url, stream=BASE, storage_options=options))
    return Repo(url, options)


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    return _save_base(str(tmp_path_factory.mktemp("hostile") / "repo"), {})


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "code-ran"


def load_refused(repo: Repo, stream: str, error: type[TqsnapError], marker: Path | None = None, **kw: Any) -> str:
    """Load ``stream``; assert ``error`` (naming the stream), no code, nothing changed; the message."""
    dest = empty_state()
    before_dest, before_repo = copy.deepcopy(dest), repo.contents()
    with pytest.raises(CheckpointException) as info:
        dcp.load(dest, storage_reader=repo.reader(stream, **kw))
    (inner,) = [e for e, _ in info.value.failures.values()]
    assert isinstance(inner, error), f"{type(inner).__name__}: {inner}"
    assert stream in str(inner), str(inner)
    if marker is not None:
        assert not marker.exists(), "the snapshot ran code in the loading process"
    assert same(dest, before_dest), "a refused load changed the destination"
    assert repo.contents() == before_repo, "a load changed the repository"
    return str(inner)


# --- non-tensor values: nothing is unpickled by default ------------------------------------------


def _set_value(fqn: str, data: bytes) -> Edit:
    def edit(items: dict[str, Spec], md: dict[str, Any]) -> None:
        items[md["state_dict"][fqn]["bytes"]].data = data

    return edit


def test_the_payload_runs_code_when_fully_unpickled(marker: Path) -> None:
    """Guards the suite: the payload below really runs code, so its absence means something."""
    assert pickle.loads(pickle.dumps(RunsCode(marker))) == 7
    assert marker.exists()


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(lambda m: torch_saved(RunsCode(m)), id="torch-save-of-the-object"),
        pytest.param(lambda m: torch_saved({"step": 3, "hook": RunsCode(m)}), id="torch-save-nested"),
        pytest.param(lambda m: pickle.dumps(RunsCode(m)), id="plain-pickle"),
        pytest.param(lambda m: pickle.dumps(RunsCode(m), protocol=0), id="plain-pickle-protocol-0"),
    ],
)
def test_a_non_tensor_value_that_runs_code_is_refused(
    local: Repo, marker: Path, payload: Any, request: pytest.FixtureRequest
) -> None:
    stream = f"evil-{request.node.callspec.id}"
    local.forge(stream, _set_value("epoch", payload(marker)))
    message = load_refused(local, stream, PickleNotAllowedError, marker)
    assert "'b/epoch'" in message and "allow_pickle=True" in message


def test_with_allow_pickle_the_stored_bytes_reach_dcps_planner(local: Repo, marker: Path) -> None:
    """The opt-in does what it says: DCP's planner unpickles, so the payload runs."""
    local.forge("evil-opt-in", _set_value("epoch", torch_saved(RunsCode(marker, value=42))))
    dest = empty_state()
    dcp.load(dest, storage_reader=local.reader("evil-opt-in", allow_pickle=True))
    assert marker.exists() and dest["epoch"] == 42


def test_plain_values_load_by_default_without_allow_pickle(local: Repo) -> None:
    dest = empty_state()
    dcp.load(dest, storage_reader=local.reader(BASE))
    assert same(dest, make_state())


def test_plain_values_also_load_with_allow_pickle(local: Repo) -> None:
    dest = empty_state()
    dcp.load(dest, storage_reader=local.reader(BASE, allow_pickle=True))
    assert same(dest, make_state())


def test_a_value_holding_tensors_and_containers_decodes_safely(local: Repo) -> None:
    value = {"t": torch.arange(5, dtype=torch.int32), "pairs": [(1, "a"), (2, "b")], "size": torch.Size([2, 3])}
    local.forge("value-with-tensors", _set_value("epoch", torch_saved(value)))
    dest = empty_state()
    dcp.load(dest, storage_reader=local.reader("value-with-tensors"))
    assert same(dest["epoch"], value) and same(dest["w"], make_state()["w"])


def test_a_value_whose_archive_hides_a_compressed_entry_is_refused(local: Repo) -> None:
    honest = torch_saved(5)
    with zipfile.ZipFile(io.BytesIO(honest)) as src:
        entries = [(info.filename, src.read(info)) for info in src.infolist()]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as dst:
        for name, data in entries:
            dst.writestr(name, data + b"\0" * (1 << 20) if name.endswith("data.pkl") else data)
    local.forge("zip-bomb", _set_value("epoch", buf.getvalue()))
    assert "compressed" in load_refused(local, "zip-bomb", FormatError)


def test_a_truncated_archive_is_refused(local: Repo) -> None:
    local.forge("cut-archive", _set_value("epoch", torch_saved(list(range(100)))[:-40]))
    load_refused(local, "cut-archive", FormatError)


def test_an_item_that_says_bytes_where_dcp_metadata_says_tensor_is_refused(local: Repo, marker: Path) -> None:
    """Once routed the tensor request to ``planner.load_bytes``, which unpickled the chunk."""

    def edit(items: dict[str, Spec], md: dict[str, Any]) -> None:
        path = md["state_dict"]["w"]["tensor"]["chunks"][0][2]
        items[path] = Spec(torch_saved(RunsCode(marker)), "bytes")

    local.forge("kind-bytes", edit)
    assert "kind 'bytes'" in load_refused(local, "kind-bytes", ManifestError, marker)


def test_metadata_that_marks_a_tensor_as_bytes_is_refused(local: Repo, marker: Path) -> None:
    """The entry says bytes and its item agrees, but the state dict holds a tensor there."""

    def edit(items: dict[str, Spec], md: dict[str, Any]) -> None:
        md["state_dict"]["w"] = {"bytes": "b/w"}
        items["b/w"] = Spec(torch_saved(RunsCode(marker)), "bytes")

    local.forge("tensor-as-bytes", edit)
    assert "holds a tensor there" in load_refused(local, "tensor-as-bytes", ManifestError, marker)


def test_metadata_that_marks_a_tensor_as_bytes_pointing_at_the_tensor_item_is_refused(local: Repo) -> None:
    def edit(items: dict[str, Spec], md: dict[str, Any]) -> None:
        md["state_dict"]["w"] = {"bytes": md["state_dict"]["w"]["tensor"]["chunks"][0][2]}

    local.forge("tensor-as-bytes-2", edit)
    load_refused(local, "tensor-as-bytes-2", ManifestError)


def test_a_tensor_chunk_stored_as_a_pickle_item_is_refused(local: Repo, marker: Path) -> None:
    def edit(items: dict[str, Spec], md: dict[str, Any]) -> None:
        path = md["state_dict"]["big"]["tensor"]["chunks"][0][2]
        items[path] = Spec(pickle.dumps(RunsCode(marker)), "pickle")

    local.forge("kind-pickle", edit)
    load_refused(local, "kind-pickle", ManifestError, marker)


# --- chunks, dtypes and sizes are checked before anything is written ----------------------------


def _tensor(md: dict[str, Any], fqn: str = "w") -> dict[str, Any]:
    return md["state_dict"][fqn]["tensor"]


def _split_w(rows: list[tuple[int, int]]) -> Edit:
    """Store ``w`` as row blocks ``(first row, row count)`` of the honest values."""

    def edit(items: dict[str, Spec], md: dict[str, Any]) -> None:
        t = _tensor(md)
        w = make_state()["w"]
        del items[t["chunks"][0][2]]
        t["chunks"] = []
        for first, count in rows:
            path = f"t/w@{first},0"
            items[path] = Spec(w[first : first + count].numpy().tobytes(), "tensor", "float32", [count, 4])
            t["chunks"].append([[first, 0], [count, 4], path])

    return edit


def test_a_tensor_split_into_row_blocks_still_loads(local: Repo) -> None:
    local.forge("split-ok", _split_w([(0, 3), (3, 5)]))
    dest = empty_state()
    dcp.load(dest, storage_reader=local.reader("split-ok"))
    assert same(dest, make_state())


@pytest.mark.parametrize(
    ("rows", "words"),
    [
        pytest.param([(0, 5), (3, 3)], "overlapping", id="overlap"),
        pytest.param([(0, 3), (4, 4)], "do not add up", id="hole"),
        pytest.param([(0, 8), (0, 8)], "do not add up", id="twice"),
        pytest.param([(0, 4), (6, 4)], "outside the tensor", id="past-the-end"),
    ],
)
def test_chunks_that_do_not_tile_their_tensor_are_refused(local: Repo, rows: Any, words: str) -> None:
    stream = "tiles-" + "-".join(f"{a}x{b}" for a, b in rows)
    local.forge(stream, _split_w(rows))
    assert words in load_refused(local, stream, ManifestError)


def _edit_md(change: Callable[[dict[str, Any]], None]) -> Edit:
    def edit(items: dict[str, Spec], md: dict[str, Any]) -> None:
        change(md)

    return edit


def _deep(levels: int) -> Any:
    node: Any = "leaf"
    for _ in range(levels):
        node = {"$tuple": [node]}
    return node


MALFORMED_METADATA: dict[str, Callable[[dict[str, Any]], None]] = {
    "negative-size": lambda md: _tensor(md).update(size=[-8, 4]),
    "negative-chunk-size": lambda md: _tensor(md)["chunks"][0].__setitem__(1, [-8, 4]),
    "negative-offset": lambda md: _tensor(md)["chunks"][0].__setitem__(0, [-1, 0]),
    "float-size": lambda md: _tensor(md).update(size=[8.0, 4]),
    "bool-size": lambda md: _tensor(md).update(size=[True, 4]),
    "string-size": lambda md: _tensor(md).update(size="84"),
    "missing-size": lambda md: _tensor(md).pop("size"),
    "missing-chunks": lambda md: _tensor(md).pop("chunks"),
    "chunk-of-two": lambda md: _tensor(md)["chunks"][0].pop(),
    "offsets-of-wrong-rank": lambda md: _tensor(md)["chunks"][0].__setitem__(0, [0]),
    "non-string-dtype": lambda md: _tensor(md).update(dtype=7),
    "list-dtype": lambda md: _tensor(md).update(dtype=["float32"]),
    "unknown-dtype": lambda md: _tensor(md).update(dtype="os.system"),
    "sparse-layout": lambda md: _tensor(md)["properties"].update(layout="sparse_coo"),
    "string-requires-grad": lambda md: _tensor(md)["properties"].update(requires_grad="yes"),
    "tensor-and-bytes": lambda md: md["state_dict"]["w"].update(bytes="b/w"),
    "entry-not-an-object": lambda md: md["state_dict"].update(w=["tensor"]),
    "non-string-item-path": lambda md: md["state_dict"]["epoch"].update(bytes=12),
    "missing-item": lambda md: md["state_dict"]["epoch"].update(bytes="b/nothing-here"),
    "format-true": lambda md: md.update(format=True),
    "state-dict-list": lambda md: md.update(state_dict=[]),
    "version-number": lambda md: md.update(version=1.0),
    "modules-string": lambda md: md["storage_meta"].update(modules="abc"),
    "size-tag-of-strings": lambda md: md.update(planner_data={"w": {"$size": ["8", "4"]}}),
    "deep-planner-data": lambda md: md.update(planner_data={"w": _deep(100)}),
    "huge-list-index": lambda md: md["planner_data"].update(w={"$tuple": ["w", 10**12]}),
    "negative-list-index": lambda md: md["planner_data"].update(w={"$tuple": ["w", -1]}),
    "empty-key-path": lambda md: md["planner_data"].update(w={"$tuple": []}),
    "bad-float-tag": lambda md: md.update(planner_data={"x": {"$float": "1e999"}}),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_METADATA))
def test_malformed_dcp_metadata_is_a_typed_error_naming_the_snapshot(local: Repo, case: str) -> None:
    """Never AssertionError, RecursionError, RuntimeError or TypeError from inside DCP."""
    stream = f"md-{case}"
    local.forge(stream, _edit_md(MALFORMED_METADATA[case]))
    load_refused(local, stream, ManifestError)


def test_metadata_nested_past_the_json_limit_is_a_typed_error(local: Repo) -> None:
    local.forge("md-deeper", _edit_md(lambda md: md.update(planner_data={"w": _deep(400)})))
    load_refused(local, "md-deeper", ManifestError)


def test_a_huge_list_index_is_refused_by_dcps_empty_state_dict_planner_too(local: Repo) -> None:
    """That planner rebuilds the state dict from planner_data: a list of 10**12 slots, once."""
    local.forge("md-index-empty", _edit_md(MALFORMED_METADATA["huge-list-index"]))
    dest: dict[str, Any] = {}
    with pytest.raises(CheckpointException) as info:
        dcp.load(dest, storage_reader=local.reader("md-index-empty"), planner=_EmptyStateDictLoadPlanner())
    (inner,) = [e for e, _ in info.value.failures.values()]
    assert isinstance(inner, ManifestError) and dest == {}


def _retype_item(fqn: str, **changes: Any) -> Edit:
    def edit(items: dict[str, Spec], md: dict[str, Any]) -> None:
        spec = items[_tensor(md, fqn)["chunks"][0][2]]
        for name, value in changes.items():
            setattr(spec, name, value)

    return edit


@pytest.mark.parametrize(
    ("case", "edit", "error"),
    [
        pytest.param("dtype", _retype_item("w", dtype="int32"), ManifestError, id="dtype-disagrees"),
        pytest.param("big-dtype", _retype_item("big", dtype="float16"), ManifestError, id="big-dtype-disagrees"),
        pytest.param("shape", _retype_item("w", shape=[4, 8]), ShapeMismatchError, id="shape-disagrees"),
        pytest.param("short", _retype_item("w", data=bytes(64)), ShapeMismatchError, id="fewer-bytes"),
        pytest.param(
            "big-short", _retype_item("big", data=bytes(512 * 640 * 2)), ShapeMismatchError, id="big-fewer-bytes"
        ),
        pytest.param("long", _retype_item("ids", data=bytes(12 * 8 + 8)), ShapeMismatchError, id="more-bytes"),
    ],
)
def test_an_item_that_disagrees_with_its_chunk_is_refused_before_any_write(
    local: Repo, case: str, edit: Edit, error: type[TqsnapError]
) -> None:
    """The whole destination stays as it was, ``big`` (read in place) included."""
    local.forge(f"item-{case}", edit)
    load_refused(local, f"item-{case}", error)


@pytest.mark.parametrize(
    ("case", "change", "error"),
    [
        pytest.param("neg-dim", lambda item: item.update(shape=[-8, -4]), ManifestError, id="negative-dims"),
        pytest.param("float-dim", lambda item: item.update(shape=[8.0, 4]), ManifestError, id="float-dims"),
        pytest.param("no-shape", lambda item: item.pop("shape"), ShapeMismatchError, id="missing-shape"),
        pytest.param("no-dtype", lambda item: item.pop("dtype"), ManifestError, id="missing-dtype"),
        pytest.param("num-dtype", lambda item: item.update(dtype=5), ManifestError, id="non-string-dtype"),
    ],
)
def test_a_rewritten_manifest_item_is_a_typed_error(
    local: Repo, case: str, change: Callable[[dict[str, Any]], None], error: type[TqsnapError]
) -> None:
    stream = f"manifest-{case}"
    local.forge(stream, lambda items, md: None)

    def edit(doc: dict[str, Any]) -> None:
        (item,) = [i for i in doc["items"] if i["path"].startswith("t/w@")]
        change(item)

    local.rewrite_manifest(stream, edit)
    load_refused(local, stream, error)


def test_a_manifest_whose_dcp_metadata_is_missing_is_a_typed_error(local: Repo) -> None:
    local.forge("no-md", lambda items, md: None)
    local.rewrite_manifest("no-md", lambda doc: doc["extra"].pop("dcp"))
    load_refused(local, "no-md", ManifestError)


# --- on a real S3 server -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def on_s3(seaweedfs_endpoint: Any, make_bucket: Any) -> Repo:
    url, options = make_bucket(seaweedfs_endpoint, prefix="hostile")
    return _save_base(url, options)


@pytest.mark.s3
def test_on_s3_a_value_that_runs_code_is_refused_and_plain_values_load(on_s3: Repo, marker: Path) -> None:
    on_s3.forge("evil", _set_value("epoch", torch_saved(RunsCode(marker))))
    load_refused(on_s3, "evil", PickleNotAllowedError, marker)
    dest = empty_state()
    dcp.load(dest, storage_reader=on_s3.reader(BASE))
    assert same(dest, make_state())


@pytest.mark.s3
def test_on_s3_a_kind_mismatch_and_a_rewritten_manifest_are_refused(on_s3: Repo, marker: Path) -> None:
    def edit(items: dict[str, Spec], md: dict[str, Any]) -> None:
        items[_tensor(md, "big")["chunks"][0][2]] = Spec(torch_saved(RunsCode(marker)), "bytes")

    on_s3.forge("kind", edit)
    load_refused(on_s3, "kind", ManifestError, marker)
    on_s3.forge("neg-dim", lambda items, md: None)
    on_s3.rewrite_manifest("neg-dim", lambda doc: doc["extra"]["dcp"]["state_dict"]["w"]["tensor"].update(size=[-1]))
    load_refused(on_s3, "neg-dim", ManifestError)


# --- two ranks in a gloo group -------------------------------------------------------------------


def _ranks_job(rank: int, mesh: DeviceMesh, url: str) -> dict[str, Any]:
    """Every rank loads each case of ``cases.json`` and reports what it saw."""
    out = Path(os.environ["TQSNAP_TEST_OUT"])
    report: dict[str, Any] = {}
    for case in json.loads((out / "cases.json").read_text()):
        dest = empty_state()
        before = copy.deepcopy(dest)
        reader = tqsnap.dcp.Reader(url, stream=case["stream"], allow_pickle=case.get("allow_pickle", False))
        try:
            dcp.load(dest, storage_reader=reader)
            outcome = {"error": None, "loaded": same(dest, make_state())}
        except CheckpointException as exc:
            errors = [e for e, _ in exc.failures.values()]
            outcome = {
                "error": sorted({type(e).__name__ for e in errors}),
                "typed": all(isinstance(e, TqsnapError) for e in errors),
                "unchanged": same(dest, before),
            }
        outcome["marker"] = Path(case["marker"]).exists()
        report[case["name"]] = outcome
    return report


def test_two_ranks_refuse_hostile_snapshots_and_load_honest_ones(
    local: Repo, tmp_path: Path, marker: Path
) -> None:
    local.forge("ranks-evil", _set_value("epoch", torch_saved(RunsCode(marker))))

    def kind_edit(items: dict[str, Spec], md: dict[str, Any]) -> None:
        items[_tensor(md)["chunks"][0][2]] = Spec(pickle.dumps(RunsCode(marker)), "bytes")

    local.forge("ranks-kind", kind_edit)
    local.forge("ranks-hole", _split_w([(0, 3), (4, 4)]))

    def as_bytes_edit(items: dict[str, Spec], md: dict[str, Any]) -> None:
        md["state_dict"]["big"] = {"bytes": "b/big"}
        items["b/big"] = Spec(torch_saved(RunsCode(marker)), "bytes")

    local.forge("ranks-as-bytes", as_bytes_edit)
    local.forge("ranks-deep", _edit_md(MALFORMED_METADATA["deep-planner-data"]))
    local.forge("ranks-dtype", _retype_item("big", dtype="int32"))
    cases = [
        {"name": "evil", "stream": "ranks-evil", "marker": str(marker)},
        {"name": "kind", "stream": "ranks-kind", "marker": str(marker)},
        {"name": "hole", "stream": "ranks-hole", "marker": str(marker)},
        {"name": "as-bytes", "stream": "ranks-as-bytes", "marker": str(marker)},
        {"name": "deep", "stream": "ranks-deep", "marker": str(marker)},
        {"name": "dtype", "stream": "ranks-dtype", "marker": str(marker)},
        {"name": "honest", "stream": BASE, "marker": str(marker)},
        {"name": "honest-opt-in", "stream": BASE, "marker": str(marker), "allow_pickle": True},
    ]
    out = tmp_path / "ranks"
    out.mkdir()
    (out / "cases.json").write_text(json.dumps(cases))
    before = local.contents()
    reports = assert_all_ok(run_ranks(_ranks_job, 2, local.url, out))
    for report in reports:
        refused = {"typed": True, "unchanged": True, "marker": False}
        assert report["evil"] == {"error": ["PickleNotAllowedError"], **refused}
        assert report["kind"] == {"error": ["ManifestError"], **refused}
        for name in ("hole", "as-bytes", "deep", "dtype"):
            assert report[name] == {"error": ["ManifestError"], **refused}, name
        assert report["honest"] == report["honest-opt-in"] == {"error": None, "loaded": True, "marker": False}
    assert not marker.exists()
    assert local.contents() == before


def test_an_unexpected_error_in_read_metadata_reaches_the_caller_not_an_assertion(local: Repo) -> None:
    """DCP swallows read_metadata's error and reports a bare AssertionError; the reader keeps it."""

    class Failing(tqsnap.dcp.Reader):
        def _repository(self) -> Repository:
            raise RecursionError("stand-in for a bug below the reader")

    with pytest.raises(CheckpointException) as info:
        dcp.load(empty_state(), storage_reader=Failing(local.url, stream=BASE))
    (inner,) = [e for e, _ in info.value.failures.values()]
    assert isinstance(inner, RecursionError) and "stand-in" in str(inner)


@pytest.mark.parametrize("snapshot", ["²", "٩", "1\n", " 1", "1.0", "-1", "tag:best\n"])
def test_a_snapshot_selector_that_is_not_ascii_digits_latest_or_a_tag_is_a_typed_error(
    local: Repo, snapshot: str
) -> None:
    assert not tqsnap.dcp.Reader.validate_checkpoint_id(f"{BASE}@{snapshot}")
    dest = empty_state()
    with pytest.raises(CheckpointException) as info:
        dcp.load(dest, storage_reader=local.reader(BASE, snapshot=snapshot))
    (inner,) = [e for e, _ in info.value.failures.values()]
    assert isinstance(inner, TqsnapError), f"{type(inner).__name__}: {inner}"
    assert same(dest, empty_state())
