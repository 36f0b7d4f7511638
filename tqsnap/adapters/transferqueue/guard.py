"""A lock that serialises tqsnap's short critical sections with TransferQueue's own threads.

Code sent with ``handle.__ray_call__.remote(fn)`` runs on the actor's Ray thread, beside the
threads that serve TransferQueue's ZMQ requests (the controller's request loop, a storage
unit's worker). Neither takes a lock, so copying their state from another thread could see a
put or a clear half done. On first use, :func:`guard` wraps the mutating methods of the
target object with an instance attribute that takes a re-entrant lock; the original methods
are untouched and the wrapper costs one uncontended lock per request afterwards.

A call that entered an original method just before the wrapper was installed is not covered
by the lock, so :func:`guard` returns only once no thread is inside an unwrapped call. The
wrapper stays installed for the life of the actor.
"""

from __future__ import annotations

import functools
import inspect
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

_ATTR = "_tqsnap_guard"


class _Guard:
    def __init__(self, target: Any, names: tuple[str, ...]) -> None:
        self.lock = threading.RLock()
        self.originals: dict[str, Callable[..., Any]] = {}
        self.codes: set[Any] = set()
        cls = type(target)
        for name in names:
            bound = getattr(target, name)
            self.originals[name] = bound
            for klass in cls.__mro__:  # subclasses may call super().name(): cover every level
                fn = klass.__dict__.get(name)
                # Ray wraps actor methods in one shared tracing helper: look through wrappers,
                # or every actor method on every stack would look like a guarded call.
                fn = inspect.unwrap(fn) if fn is not None else None
                if fn is not None and hasattr(fn, "__code__"):
                    self.codes.add(fn.__code__)
            setattr(target, name, self._wrap(bound))
        self.wrapper_code = self._wrap(lambda: None).__code__

    def _wrap(self, bound: Callable[..., Any]) -> Callable[..., Any]:
        lock = self.lock

        @functools.wraps(bound)
        def locked(*args: Any, **kwargs: Any) -> Any:
            with lock:
                return bound(*args, **kwargs)

        return locked

    def unwrapped_call_in_flight(self) -> bool:
        """Is another thread inside a guarded method it entered without the wrapper?"""
        me = threading.get_ident()
        for ident, frame in sys._current_frames().items():
            if ident == me:
                continue
            inside = wrapped = False
            f = frame
            while f is not None:
                if f.f_code in self.codes:
                    inside = True
                elif f.f_code is self.wrapper_code:
                    wrapped = True
                f = f.f_back
            if inside and not wrapped:
                return True
        return False


def guard(target: Any, names: tuple[str, ...], *, settle_timeout: float = 30.0) -> threading.RLock:
    """Install (once) the lock around ``target``'s methods ``names``; return the lock.

    Waits up to ``settle_timeout`` seconds for calls that started before the wrapper existed.
    """
    g: _Guard | None = target.__dict__.get(_ATTR)
    if g is None:
        g = _Guard(target, names)
        target.__dict__[_ATTR] = g
        deadline = time.monotonic() + settle_timeout
        while g.unwrapped_call_in_flight() and time.monotonic() < deadline:
            time.sleep(0.001)
    return g.lock


def original(target: Any, name: str) -> Callable[..., Any]:
    """The unwrapped bound method, for use while already holding the lock."""
    g: _Guard | None = target.__dict__.get(_ATTR)
    return g.originals[name] if g is not None and name in g.originals else getattr(target, name)
