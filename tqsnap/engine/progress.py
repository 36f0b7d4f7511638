"""The engine's progress hook: where shard bytes moved are reported, a no-op by default.

One process-wide sink, not an argument threaded through every call: shards move deep inside
readers, writers, copy and gc, and the only consumer is the ``tqsnap`` command (one command per
process), which installs a terminal bar for the length of the command (faces/progress.py).
Library users who install nothing pay one attribute lookup per shard. The sink is called from
worker threads; sinks must be thread-safe (tqdm's ``update`` is).
"""

from __future__ import annotations

import threading
from typing import Protocol


class ProgressSink(Protocol):
    def advance(self, nbytes: int) -> None:
        """Shard bytes read, written or deleted since the last call (the bar moves)."""

    def uploaded(self, nbytes: int) -> None:
        """Shard bytes this process wrote (what an interrupted save leaves for gc); counts only."""


class NullSink:
    """Reports nothing: the default."""

    def advance(self, nbytes: int) -> None:
        pass

    def uploaded(self, nbytes: int) -> None:
        pass


_lock = threading.Lock()
_sink: ProgressSink = NullSink()


def sink() -> ProgressSink:
    """The sink now installed."""
    return _sink


def install(new: ProgressSink | None) -> ProgressSink:
    """Install ``new`` (None: the no-op); return the one it replaces."""
    global _sink
    with _lock:
        old, _sink = _sink, (new if new is not None else NullSink())
    return old
