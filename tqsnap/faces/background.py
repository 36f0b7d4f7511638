"""Futures for the parts of an asynchronous job snapshot, run on threads of their own.

Each background stage or commit gets its own thread rather than a slot in a shared pool: a
commit waits for its parts, and a pool too small for both would deadlock. The threads are not
daemons, so a program that returns from its loop still finishes the uploads and the commit it
started before it exits (killing it leaves nothing visible, as always).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")


class PendingPart(Future):  # type: ignore[type-arg]
    """A part of a job being staged in the background: ``result()`` is its ``StagedPart``.

    ``captured`` completes when the part's state is frozen (the moment the loop may change it
    again); ``result()`` when its shards are uploaded.
    """

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.captured: Future[Any] = Future()

    def __repr__(self) -> str:
        state = "done" if self.done() else "captured" if self.captured.done() else "capturing"
        return f"PendingPart({self.name!r}, {state})"


def in_background(fn: Callable[[], T], future: Future[T] | None = None, *, name: str) -> Future[T]:
    """Run ``fn`` on a new thread; its return value or exception completes ``future``."""
    fut: Future[T] = future if future is not None else Future()

    def run() -> None:
        if not fut.set_running_or_notify_cancel():
            return
        try:
            result = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on the future
            fut.set_exception(exc)
        else:
            fut.set_result(result)

    threading.Thread(target=run, name=name).start()
    return fut
