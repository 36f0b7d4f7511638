"""Puts that race a restore: refused before the holds, held off after them, never half installed."""

from __future__ import annotations

import threading
import time

import pytest
from helpers import assert_same, dump, fill, put

import tqsnap
import tqsnap.tq
from tqsnap.adapters.transferqueue import controller_restore, unit_restore
from tqsnap.adapters.transferqueue.system import TransferQueueSystem
from tqsnap.errors import RestoreError, TargetNotEmptyError


def _before_call(monkeypatch, method: str, fn_wanted, action) -> None:
    """Run ``action()`` in the coordinator just before ``system.<method>(fn_wanted, ...)``."""
    real = getattr(TransferQueueSystem, method)

    def patched(self, fn, *args):
        if fn is fn_wanted:
            action()
        return real(self, fn, *args)

    monkeypatch.setattr(TransferQueueSystem, method, patched)


def test_put_landing_while_staging_refuses_the_restore_and_changes_nothing(
    tq_main, tq_two, repo_url, monkeypatch
):
    fill(tq_main.client)
    tqsnap.tq.snapshot(repo_url, stream="s")
    # The put lands after restore's first emptiness check, just before the holds are taken.
    _before_call(
        monkeypatch, "call_units", unit_restore.hold_unit, lambda: put(tq_two.client, "late", [77, 78])
    )

    with pytest.raises(TargetNotEmptyError):
        tqsnap.tq.restore(repo_url, stream="s", system=tq_two.system)

    monkeypatch.undo()
    after = dump(tq_two.system)
    assert sorted(after["state"].partitions) == ["late"]
    assert {k: sorted(v) for k, v in after["data"].items()} == {f: [0, 1] for f in ("dense", "jag", "txt")}
    t0 = time.monotonic()
    put(tq_two.client, "later", [79])  # no hold was left behind
    assert time.monotonic() - t0 < 5


def test_put_issued_during_the_install_waits_and_lands_after_it(tq_main, tq_two, repo_url, monkeypatch):
    fill(tq_main.client)
    source = dump(tq_main.system)
    tqsnap.tq.snapshot(repo_url, stream="s")
    done = threading.Event()
    errors: list[BaseException] = []
    seen: dict[str, bool] = {}

    def late_put() -> None:
        try:
            put(tq_two.client, "late", [9000, 9001])
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)
        done.set()

    def start_put_and_watch_it_wait() -> None:
        threading.Thread(target=late_put, daemon=True).start()
        seen["finished while held"] = done.wait(1.0)

    # Every unit and the controller are held by now; the controller is not yet installed.
    _before_call(
        monkeypatch, "call_controller", controller_restore.install_staged_controller, start_put_and_watch_it_wait
    )

    result = tqsnap.tq.restore(repo_url, stream="s", system=tq_two.system)

    assert seen == {"finished while held": False}
    assert done.wait(30) and not errors
    assert result.hold_s >= 1.0
    after = dump(tq_two.system)
    late = after["state"].partitions.pop("late")
    restored_gis = set().union(*(p.global_indexes for p in source["state"].partitions.values()))
    assert len(late.global_indexes) == 2 and not (late.global_indexes & restored_gis)
    for f in ("dense", "jag", "txt"):
        for gi in late.global_indexes:
            after["data"][f].pop(gi)
    after["state"].index_manager = source["state"].index_manager  # the late put moved it on
    assert_same(source, after)


def test_a_hold_whose_lease_ran_out_installs_nothing(tq_main, tq_two, repo_url, monkeypatch):
    fill(tq_main.client)
    tqsnap.tq.snapshot(repo_url, stream="s")
    before = dump(tq_two.system)
    # The coordinator stalls past the lease between taking the holds and installing.
    _before_call(monkeypatch, "call_units", unit_restore.install_unit, lambda: time.sleep(1.0))

    with pytest.raises(RestoreError, match="lease ran out"):
        tqsnap.tq.restore(repo_url, stream="s", system=tq_two.system, hold_lease_s=0.3)

    monkeypatch.undo()
    assert_same(before, dump(tq_two.system))
