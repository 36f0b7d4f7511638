"""A snapshot taken under live puts, gets and clears restores to a consistent state."""

from __future__ import annotations

import threading
import time

from helpers import FIELDS, dump, put, sample_uid

import tqsnap.tq


def _workload(client, stop: threading.Event, errors: list[BaseException]) -> None:
    """Producer, consumer and cleaner in one loop: put 6, consume up to 4, clear what was read."""
    uid = 10_000
    try:
        while not stop.is_set():
            put(client, "live", list(range(uid, uid + 6)))
            uid += 6
            meta = client.get_meta(data_fields=FIELDS, batch_size=4, partition_id="live", task_name="trainer")
            if meta.size:
                client.get_data(meta)
                client.clear_samples(meta)
    except BaseException as exc:  # noqa: BLE001 - reported by the test
        errors.append(exc)


def _assert_consistent(d: dict) -> None:
    """Every produced (sample, field) has its value, values belong to produced samples, no torn sample."""
    p = d["state"].partitions["live"]
    cols = p.status.field_name_mapping
    prod = p.status.production
    by_gi: dict[int, dict] = {}
    for name, col in cols.items():
        produced = {int(g) for g in prod[:, col].nonzero().flatten().tolist()}
        held = set(d["data"].get(name, {}))
        assert produced == held, name
        for gi in held:
            by_gi.setdefault(gi, {})[name] = d["data"][name][gi]
    for gi, values in by_gi.items():
        assert len(sample_uid(values)) == 1, f"sample {gi} is torn: {values}"
    assert set(by_gi) <= p.global_indexes
    for key, gi in p.keys_mapping.items():
        assert p.revert_keys_mapping[gi] == key


def test_snapshots_under_concurrent_put_get_clear_restore_consistently(tq_main, tq_two, repo_url):
    stop = threading.Event()
    errors: list[BaseException] = []
    worker = threading.Thread(target=_workload, args=(tq_main.client, stop, errors), daemon=True)
    worker.start()
    results = []
    try:
        time.sleep(0.5)
        for _ in range(3):
            results.append(tqsnap.tq.snapshot(repo_url, stream="live"))
            time.sleep(0.2)
    finally:
        stop.set()
        worker.join(30)
    assert not errors, errors
    assert all(r.samples > 0 for r in results)

    for r in results:
        tqsnap.tq.restore(repo_url, stream="live", snapshot=r.info.seq, system=tq_two.system, force=True)
        restored = dump(tq_two.system)
        _assert_consistent(restored)
        # The restored queue serves every unconsumed sample whole.
        meta = tq_two.client.get_meta(
            data_fields=FIELDS, batch_size=1, partition_id="live", task_name="trainer"
        )
        while meta.size:
            data = tq_two.client.get_data(meta)
            assert data["dense"][0][0].item() == float(data["jag"][0].reshape(-1)[0].item())
            meta = tq_two.client.get_meta(
                data_fields=FIELDS, batch_size=1, partition_id="live", task_name="trainer"
            )
