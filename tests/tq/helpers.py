"""Workloads to put into a TransferQueue and a full dump of one, for exact comparisons."""

from __future__ import annotations

import dataclasses
import math
import sys
from typing import Any

import ray
import torch
from tensordict import TensorDict
from tensordict.tensorclass import NonTensorStack

from tqsnap.adapters.transferqueue.controller_capture import capture_controller
from tqsnap.adapters.transferqueue.controller_state import PartitionState
from tqsnap.adapters.transferqueue.system import unwrap

FIELDS = ["dense", "jag", "txt"]

# Functions here run inside actors (__ray_call__); the workers cannot import this test module.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def batch(uids: list[int]) -> TensorDict:
    """Dense, jagged and non-tensor values, each derived from a per-sample ``uid``.

    Every field of a sample carries its uid, so a restored sample whose fields disagree (a
    torn put) is detectable.
    """
    n = len(uids)
    dense = torch.stack([torch.full((6,), float(u)) for u in uids]) if n else torch.zeros(0, 6)
    jag = torch.nested.as_nested_tensor(
        [torch.full((u % 7 + 1, 2), u, dtype=torch.int64) for u in uids], layout=torch.jagged
    )
    txt = [f"uid-{u}" if u % 4 else {"uid": u, "pair": [u, -u], "note": "ü"} for u in uids]
    return TensorDict({"dense": dense, "jag": jag, "txt": NonTensorStack(*txt)}, batch_size=n)


def sample_uid(values: dict[str, Any]) -> set[int]:
    """The uids a sample's fields carry (one, unless the sample is torn)."""
    out = set()
    if "dense" in values:
        out.add(int(values["dense"][0].item()))
    if "jag" in values:
        out.add(int(values["jag"].reshape(-1)[0].item()))
    if "txt" in values:
        t = values["txt"]
        out.add(int(t.split("-")[1]) if isinstance(t, str) else int(t["uid"]))
    return out


def put(client: Any, pid: str, uids: list[int]) -> Any:
    return client.put(data=batch(uids), partition_id=pid)


def kv_put(client: Any, pid: str, keys: list[str], tags: list[dict[str, Any]]) -> Any:
    meta = client.kv_retrieve_meta(keys=keys, partition_id=pid, create=True)
    meta.update_custom_meta(tags)
    n = len(keys)
    td = TensorDict({"emb": torch.arange(n * 3, dtype=torch.bfloat16).reshape(n, 3)}, batch_size=n)
    return client.put(td, metadata=meta)


def fill(client: Any) -> None:
    """A mixed state: two partitions of samples, a KV partition with tags, some consumption."""
    put(client, "train", list(range(0, 40)))
    put(client, "train", list(range(40, 53)))
    put(client, "eval", list(range(1000, 1009)))
    kv_put(client, "kv", ["alpha", "beta", "gamma"], [{"score": 0.5}, {"score": 1.5, "tags": ["a"]}, {}])
    meta = client.get_meta(data_fields=FIELDS, batch_size=8, partition_id="train", task_name="learner")
    client.get_data(meta)
    meta = client.get_meta(data_fields=["dense"], batch_size=3, partition_id="train", task_name="critic")
    client.get_data(meta)


def _unit_data(self: Any) -> dict[str, Any]:
    return {
        "fields": {f: dict(d) for f, d in self.storage_data.field_data.items()},
        "keys": set(self.storage_data._active_keys),
    }


def dump(system: Any) -> dict[str, Any]:
    """Controller state plus every stored value; checks values live on unit ``gi % n``."""
    state = unwrap(ray.get(system.controller.__ray_call__.remote(capture_controller)))
    units = ray.get([u.__ray_call__.remote(_unit_data) for u in system.units])
    data: dict[str, dict[int, Any]] = {}
    n = len(units)
    for k, u in enumerate(units):
        for f, values in u["fields"].items():
            for gi, v in values.items():
                assert gi % n == k, f"sample {gi} of {f} lives on unit {k} of {n}"
                data.setdefault(f, {})[gi] = v
        assert all(gi % n == k for gi in u["keys"])
    data = {f: v for f, v in data.items() if v}
    return {"state": state, "data": data}


def _canon(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return ("tensor", str(v.dtype), tuple(v.shape), v.float().tolist() if v.numel() else [])
    if isinstance(v, float) and math.isnan(v):
        return ("nan",)
    if isinstance(v, dict):
        return {k: _canon(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return type(v)(_canon(x) for x in v)
    if isinstance(v, set):
        return v
    return v


def canon_partition(p: PartitionState) -> dict[str, Any]:
    out = {f.name: _canon(getattr(p, f.name)) for f in dataclasses.fields(p) if f.name != "status"}
    out["field_metadata"] = {name: _canon(dataclasses.asdict(m)) for name, m in p.field_metadata.items()}
    out["production"] = p.status.production.tolist()
    out["consumption"] = {t: c.tolist() for t, c in p.status.consumption.items()}
    out["field_name_mapping"] = p.status.field_name_mapping
    return out


def assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Two dumps hold the same TransferQueue state, whatever their unit counts."""
    sa, sb = a["state"], b["state"]
    assert sorted(sa.partitions) == sorted(sb.partitions)
    for pid in sa.partitions:
        assert canon_partition(sa.partitions[pid]) == canon_partition(sb.partitions[pid]), pid
    assert sa.index_manager == sb.index_manager
    assert _canon(sa.sampler.state) == _canon(sb.sampler.state)
    assert sorted(a["data"]) == sorted(b["data"])
    for f in a["data"]:
        assert sorted(a["data"][f]) == sorted(b["data"][f]), f
        for gi, v in a["data"][f].items():
            w = b["data"][f][gi]
            assert type(v) is type(w), (f, gi, type(v), type(w))
            if isinstance(v, torch.Tensor):
                assert v.dtype == w.dtype and v.shape == w.shape and torch.equal(v, w), (f, gi)
            else:
                assert _canon(v) == _canon(w), (f, gi, v, w)
