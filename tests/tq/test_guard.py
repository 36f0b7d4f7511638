"""The guard's hold: requests wait while a restore holds, the restore's own calls do not."""

from __future__ import annotations

import threading
import time

import pytest

from tqsnap.adapters.transferqueue.guard import between_requests, hold, inside_hold, release
from tqsnap.errors import RestoreError, TargetNotEmptyError

NAMES = ("put_data", "clear")


class Unit:
    """Stands in for a storage unit's data: ``put_data`` reaches ``clear`` through ``self``."""

    def __init__(self) -> None:
        self.data: dict[int, str] = {}

    def put_data(self, values: dict[int, str]) -> None:
        self.clear([k for k in values if k in self.data])
        self.data.update(values)

    def clear(self, keys: list[int]) -> None:
        for k in keys:
            self.data.pop(k, None)


def _put_in_thread(unit: Unit, values: dict[int, str]) -> threading.Event:
    done = threading.Event()

    def run() -> None:
        unit.put_data(values)
        done.set()

    threading.Thread(target=run, daemon=True).start()
    return done


def test_requests_wait_for_the_hold_and_the_holder_does_not():
    unit = Unit()
    hold(unit, NAMES, "t1", 30.0, check=lambda: None)
    late = _put_in_thread(unit, {1: "late"})
    assert not late.wait(0.3), "a put went through a hold"

    with inside_hold(unit, "t1", "the unit"):
        unit.put_data({1: "restored", 2: "restored"})  # reaches the wrapped clear: must not wait
    assert not late.is_set()

    release(unit, "t1")
    assert late.wait(5)
    assert unit.data == {1: "late", 2: "restored"}


def test_a_refused_check_takes_no_hold():
    unit = Unit()
    unit.put_data({1: "x"})

    def must_be_empty() -> None:
        if unit.data:
            raise TargetNotEmptyError("not empty")

    with pytest.raises(TargetNotEmptyError):
        hold(unit, NAMES, "t1", 30.0, check=must_be_empty)
    assert _put_in_thread(unit, {2: "y"}).wait(5)
    with pytest.raises(RestoreError, match="no longer holds"):
        with inside_hold(unit, "t1", "the unit"):
            pass


def test_an_expired_lease_lets_requests_go_and_refuses_the_install():
    unit = Unit()
    hold(unit, NAMES, "t1", 0.2, check=lambda: None)
    started = time.monotonic()
    assert _put_in_thread(unit, {1: "late"}).wait(5)
    assert time.monotonic() - started >= 0.15
    with pytest.raises(RestoreError, match="lease ran out"):
        with inside_hold(unit, "t1", "the unit"):
            unit.data.clear()
    assert unit.data == {1: "late"}


def test_a_snapshot_waits_for_the_hold_to_end():
    unit = Unit()
    hold(unit, NAMES, "t1", 30.0, check=lambda: None)
    seen = threading.Event()

    def snapshot() -> None:
        with between_requests(unit, NAMES):
            seen.set()

    threading.Thread(target=snapshot, daemon=True).start()
    assert not seen.wait(0.3)
    release(unit, "t1")
    assert seen.wait(5)
