"""Hostile TransferQueue snapshots: every count they declare is bounded before anything is made for it.

Each case copies a real snapshot (a filled 3-unit TransferQueue) into a new stream with one
lie planted: a header, a data item's runs or shape, or a controller JSON item that declares
far more indexes than the snapshot holds, or is malformed. Every case must end in a typed
:class:`~tqsnap.errors.FormatError` naming the snapshot and item, raised before the
allocation the lie asks for:

- the restoring process's checks, and the decode the controller actor runs, are run in a
  child process whose address space is capped (``RLIMIT_AS``), so an allocation sized by a
  lie fails there instead of passing unnoticed;
- on the real TransferQueue, the restore is refused, the target is left exactly as it was,
  and the controller actor's peak memory did not grow.
"""

from __future__ import annotations

from typing import Any

import pytest
import ray
from helpers import assert_same, dump, fill, put
from tq_crafting import Draft, craft, run_bounded

from tqsnap.adapters.transferqueue import restore_system, snapshot_system
from tqsnap.adapters.transferqueue.layout import (
    MAX_BLOCK_SIZE,
    MAX_INDEXES,
    index_manager_path,
    partition_state_path,
    production_path,
    sampler_path,
)
from tqsnap.engine import Repository
from tqsnap.errors import FormatError, TqsnapError

SOURCE = "real"
HUGE = 10**10  # indexes a few bytes of JSON can declare


def _gi_run(d: Draft, path: str) -> list[int]:
    return d.items[path]["meta"]["gi"][0]


def _im(edit):
    def run(d: Draft) -> None:
        doc = d.json(index_manager_path())
        edit(doc)
        d.set_json(index_manager_path(), doc)

    return run


def _partition(pid: str, edit, counter: int | None = None):
    def run(d: Draft) -> None:
        doc = d.json(partition_state_path(pid))
        edit(doc)
        d.set_json(partition_state_path(pid), doc)
        if counter is not None:
            im = d.json(index_manager_path())
            im["global_index_counter"] = counter
            d.set_json(index_manager_path(), im)

    return run


def _data(enc: str, edit):
    def run(d: Draft) -> None:
        path = d.first("d/", enc)
        edit(d, path)

    return run


def _set_meta(key: str, value: Any):
    return lambda d, p: d.items[p]["meta"].__setitem__(key, value)


def _rename_data(old: str, new: str):
    def run(d: Draft) -> None:
        path = d.first("d/")
        d.items[path.replace(old, new)] = d.items.pop(path)

    return run


def _extra(key: str, value: Any):
    return lambda d: d.extra.__setitem__(key, value)


def _json_block_over_bytes(d: Draft, path: str) -> None:
    d.extra["block_size"] = MAX_BLOCK_SIZE
    unit, units = (int(x) for x in path.rsplit("/u", 1)[1].split("of"))
    d.items[path]["meta"]["gi"] = [[unit, 300_000, units]]


def _drop_last_shape(d: Draft, path: str) -> None:
    meta = d.items[path]["meta"]
    key = "lens" if "lens" in meta else "shapes"
    meta[key] = meta[key][:-1]


def _deep_sampler(d: Draft) -> None:
    d.items[sampler_path()]["data"] = (
        b'{"class":"x","state":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    )


def _production_dtype(d: Draft) -> None:
    d.items[production_path("train")]["dtype"] = "uint8"


#: Lies the restoring process must refuse before it touches the target (``restore``), and
#: lies in controller items that the controller's decode must refuse (``decode``).
CASES: dict[str, tuple[str, Any]] = {
    "data-runs-leave-their-block": ("restore", _data("dense", _set_meta("gi", [[0, HUGE]]))),
    "data-runs-repeat-past-the-block": (
        "restore",
        _data("dense", lambda d, p: d.items[p]["meta"].__setitem__("gi", [_gi_run(d, p)[:1] + [1]] * 600)),
    ),
    "data-runs-of-another-unit": ("restore", _data("json", _set_meta("gi", [[0, 2, 1]]))),
    "data-run-of-step-zero": ("restore", _data("json", _set_meta("gi", [[0, HUGE, 0]]))),
    "data-runs-not-a-list": ("restore", _data("json", _set_meta("gi", {"0": 1}))),
    "dense-rows-disagree-with-runs": (
        "restore",
        _data("dense", lambda d, p: d.items[p]["shape"].__setitem__(0, HUGE)),
    ),
    "jagged-lengths-fewer-than-samples": (
        "restore",
        _data("jagged", _drop_last_shape),
    ),
    "json-block-declares-more-values-than-bytes": ("restore", _data("json", _json_block_over_bytes)),
    "block-size-huge": ("restore", lambda d: (_extra("block_size", 10**12)(d), _data("dense", _set_meta("gi", [[0, HUGE]]))(d))),
    "units-huge": ("restore", _extra("units", HUGE)),
    "unit-digit-superscript": ("restore", _rename_data("/u0of3", "/u\u00b2of3")),
    "unit-not-below-units": ("restore", _rename_data("/u0of3", "/u5of3")),
    "partitions-not-strings": ("restore", _extra("partitions", [1, 2])),
    "consumption-tasks-not-lists": ("restore", _extra("consumption_tasks", {"train": "learner"})),
    "counter-huge": ("decode", _im(lambda im: im.update(global_index_counter=HUGE, allocated_indexes=[[0, HUGE]]))),
    "allocated-beyond-counter": ("decode", _im(lambda im: im.__setitem__("allocated_indexes", [[0, HUGE]]))),
    "reusable-step-zero": ("decode", _im(lambda im: im.__setitem__("reusable_indexes", [[5, HUGE, 0]]))),
    "counter-not-an-integer": ("decode", _im(lambda im: im.__setitem__("global_index_counter", "53"))),
    "partition-indexes-beyond-counter": (
        "decode",
        _partition("train", lambda p: p.__setitem__("global_indexes", [[0, HUGE]])),
    ),
    "partitions-claim-more-than-the-counter": (
        "decode",
        _partition("train", lambda p: p.__setitem__("pre_allocated", [[0, MAX_INDEXES]]), counter=MAX_INDEXES),
    ),
    "field-indexes-beyond-their-partition": (
        "decode",
        _partition(
            "train",
            lambda p: p["field_metadata"][0][1].__setitem__("global_indexes", [[0, MAX_INDEXES]]),
            counter=MAX_INDEXES,
        ),
    ),
    "empty-tags-beyond-their-partition": (
        "decode",
        _partition(
            "train", lambda p: p.__setitem__("custom_meta", {"gi": [[0, MAX_INDEXES]], "empty": True}), counter=MAX_INDEXES
        ),
    ),
    "shape-map-numbers-disagree": (
        "decode",
        _partition(
            "train",
            lambda p: p["field_metadata"][0][1].__setitem__(
                "per_sample_shapes", {"gi": [[0, 40]], "flat": [1, 2], "ndim": 2}
            ),
        ),
    ),
    "key-index-beyond-counter": (
        "decode",
        _partition("kv", lambda p: p["keys_mapping"].__setitem__("gi", [HUGE] * len(p["keys_mapping"]["gi"]))),
    ),
    "field-column-beyond-status": (
        "decode",
        _partition("train", lambda p: p["field_name_mapping"][0].__setitem__(1, 10**6)),
    ),
    "metadata-of-an-unknown-field": (
        "decode",
        _partition("train", lambda p: p["field_metadata"][0].__setitem__(0, "no-such-field")),
    ),
    "tag-with-bad-base64": (
        "decode",
        _partition("kv", lambda p: p.__setitem__("custom_meta", {"gi": p["custom_meta"]["gi"], "v": [{"$b": "!!"}] * 3})),
    ),
    "sampler-nested-100k-deep": ("decode", _deep_sampler),
    "production-not-int8": ("decode", _production_dtype),
}


_CHILD = """
URL = {url!r}
CASES = {cases!r}


class Untouched:
    def __getattr__(self, name):
        raise AssertionError(f"the restore touched the target ({{name}}) before refusing the snapshot")


def main():
    from tqsnap.adapters.transferqueue import controller_decode
    from tqsnap.adapters.transferqueue.restore import restore_system
    from tqsnap.adapters.transferqueue.validate import check_manifest
    from tqsnap.engine import Repository
    from tqsnap.errors import FormatError

    repo = Repository.open(URL)
    out = {{}}
    for stream, mode in CASES:
        try:
            if mode == "restore":
                restore_system(Untouched(), repo, stream)
            else:
                reader = repo.reader(stream, kind="transferqueue")
                header = check_manifest(reader)
                paths = controller_decode.controller_paths(header.partitions, header.consumption_tasks)
                values = reader.read_items(paths)
                items = {{p: reader.items[p] for p in paths}}
                controller_decode.decode(header.partitions, values, items, snapshot=reader.name, allow_pickle=False)
            out[stream] = {{"error": None}}
        except BaseException as exc:
            out[stream] = {{"error": type(exc).__name__, "typed": isinstance(exc, FormatError), "message": str(exc)}}
    return {{"cases": out}}
"""


@pytest.fixture(scope="module")
def hostile_repo(tq_cluster, tmp_path_factory) -> str:
    """A real snapshot of a filled 3-unit TransferQueue, plus one crafted stream per case."""
    main = tq_cluster["main"]
    restore_system(main.system, tq_cluster["empty_repo"], "empty", force=True)
    fill(main.client)
    url = str(tmp_path_factory.mktemp("hostile") / "repo")
    repo = Repository.open(url, create=True)
    snapshot_system(main.system, repo, SOURCE)
    for name, (_, edit) in CASES.items():
        craft(url, SOURCE, name, edit)
    return url


@pytest.fixture(scope="module")
def bounded_results(hostile_repo) -> dict[str, Any]:
    """Every case, run in one child process under a capped address space."""
    cases = [(name, mode) for name, (mode, _) in CASES.items()]
    return run_bounded(_CHILD.format(url=hostile_repo, cases=cases))


def test_the_untouched_source_snapshot_decodes_in_the_capped_child(hostile_repo):
    got = run_bounded(_CHILD.format(url=hostile_repo, cases=[(SOURCE, "decode")]))
    assert got["cases"] == {SOURCE: {"error": None}}, got


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_snapshot_is_a_typed_error_naming_it_before_any_allocation(case, bounded_results):
    assert "crash" not in bounded_results, bounded_results
    got = bounded_results["cases"][case]
    assert got["typed"], got  # a FormatError, not MemoryError, RecursionError, ValueError...
    assert f"{case}@1" in got["message"], got
    # Nothing was allocated for the lie: the child stayed far below its cap.
    grown_mib = (bounded_results["maxrss_kib"] - bounded_results["base_maxrss_kib"]) / 1024
    assert grown_mib < 256, grown_mib


def _controller_maxrss(system) -> int:
    def peak(_self):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    return ray.get(system.controller.__ray_call__.remote(peak))


@pytest.mark.parametrize(
    "case", ["counter-huge", "partitions-claim-more-than-the-counter", "data-runs-leave-their-block"]
)
def test_real_transferqueue_refuses_a_hostile_snapshot_unchanged_with_bounded_memory(case, hostile_repo, tq_two):
    put(tq_two.client, "mine", [1, 2, 3])
    before = dump(tq_two.system)
    peak_before = _controller_maxrss(tq_two.system)

    with pytest.raises(FormatError) as err:
        restore_system(tq_two.system, Repository.open(hostile_repo), case, force=True)

    assert f"{case}@1" in str(err.value)
    assert (_controller_maxrss(tq_two.system) - peak_before) / 1024 < 128  # MiB: nothing was built
    assert_same(before, dump(tq_two.system))


def test_a_lie_only_the_units_can_see_is_refused_inside_the_unit_actors(hostile_repo, tq_two, tmp_path):
    """A JSON block whose runs fit its bytes but whose body holds one value fewer than they name."""

    def drop_a_value(d: Draft) -> None:
        path = d.first("d/", "json")
        values = d.json(path)
        d.set_json(path, values[:-1])

    stream = craft(hostile_repo, SOURCE, "one-value-short", drop_a_value)
    put(tq_two.client, "mine", [4, 5])
    before = dump(tq_two.system)

    with pytest.raises(FormatError, match="does not hold") as err:
        restore_system(tq_two.system, Repository.open(hostile_repo), stream, force=True)

    assert f"{stream}@1" in str(err.value)
    assert_same(before, dump(tq_two.system))


def test_crafted_copy_of_the_source_restores_exactly(hostile_repo, tq_two):
    """The crafting itself changes nothing: an unedited copy restores like the source."""
    stream = craft(hostile_repo, SOURCE, "plain-copy", lambda d: None)
    repo = Repository.open(hostile_repo)
    restore_system(tq_two.system, repo, SOURCE)
    expected = dump(tq_two.system)
    restore_system(tq_two.system, repo, stream, force=True)
    assert_same(expected, dump(tq_two.system))


_UNIT_CHILD = """
def main():
    from tqsnap.adapters.transferqueue.blocks import block_gis, block_units, decode_block
    from tqsnap.errors import FormatError

    huge = 10**10
    cases = {
        "dense rows of zero bytes": lambda: decode_block(
            {"enc": "dense", "gi": [[0, huge]]}, "float32", [huge, 0], memoryview(b""), where="w"
        ),
        "jagged lengths for a huge run": lambda: decode_block(
            {"enc": "jagged", "gi": [[0, huge]], "lens": [1]}, "int8", [1], memoryview(b"x"), where="w"
        ),
        "json values for a huge run": lambda: decode_block(
            {"enc": "json", "gi": [[0, 1000]]}, None, None, memoryview(b"[1]"), where="w"
        ),
        "jagged lengths that overrun the bytes": lambda: decode_block(
            {"enc": "jagged", "gi": [[0, 2]], "lens": [huge, huge]}, "int8", [2], memoryview(b"xy"), where="w"
        ),
        "block indexes": lambda: block_gis({"gi": [[0, huge]]}, "w"),
        "block units": lambda: block_units({"gi": [[0, huge, 0]]}, 3, "w"),
    }
    out = {}
    for name, run in cases.items():
        try:
            run()
            out[name] = None
        except BaseException as exc:
            out[name] = [type(exc).__name__, isinstance(exc, FormatError)]
    return {"cases": out}
"""


def test_what_unit_actors_decode_is_bounded_by_the_block_before_any_allocation():
    """The checks a storage unit makes on the items it stages, under a capped address space."""
    got = run_bounded(_UNIT_CHILD)
    assert "crash" not in got, got
    assert all(v is not None and v[1] for v in got["cases"].values()), got["cases"]
    assert (got["maxrss_kib"] - got["base_maxrss_kib"]) / 1024 < 256


def test_a_snapshot_is_never_written_with_a_block_size_a_restore_refuses(tq_cluster, tmp_path):
    repo = Repository.open(str(tmp_path / "repo"), create=True)
    with pytest.raises(TqsnapError, match="block_size"):
        snapshot_system(tq_cluster["main"].system, repo, "s", block_size=MAX_BLOCK_SIZE + 1)
    assert repo.visible_seqs("s") == []
