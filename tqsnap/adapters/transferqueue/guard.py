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

A restore also needs to keep requests out *between* calls: it checks every unit and the
controller for emptiness, then installs on each. :func:`hold` closes the gate for one token:
guarded requests wait (without the lock) until :func:`release`, or until the hold's lease
runs out, so a coordinator that dies mid-restore cannot wedge the TransferQueue for good.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from ...errors import RestoreError

log = logging.getLogger(__name__)

_ATTR = "_tqsnap_guard"


class _Guard:
    def __init__(self, target: Any, names: tuple[str, ...]) -> None:
        self.lock = threading.RLock()
        self.gate = threading.Condition(self.lock)
        self.holder: str | None = None  # the token of the restore holding requests off
        self.hold_until = 0.0
        self.local = threading.local()  # .inside: this thread installs for the holder
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
        gate = self.gate

        @functools.wraps(bound)
        def locked(*args: Any, **kwargs: Any) -> Any:
            with gate:
                # The restore's own install may reach a guarded method: it must not wait on itself.
                if self.holder is not None and not getattr(self.local, "inside", 0):
                    self.wait_for_release()
                return bound(*args, **kwargs)

        return locked

    def wait_for_release(self) -> None:
        """Wait (lock released meanwhile) until no hold is in force; the caller holds the lock."""
        while self.holder is not None:
            left = self.hold_until - time.monotonic()
            if left <= 0:
                log.warning("tqsnap hold %s ran out of its lease; requests go on", self.holder)
                self.holder = None
                break
            self.gate.wait(left)

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


@contextlib.contextmanager
def between_requests(target: Any, names: tuple[str, ...]) -> Iterator[None]:
    """Run the block as a request would: under the lock, after any restore's hold has ended.

    A snapshot uses this, so it never sees a target halfway through a restore's install.
    """
    guard(target, names)
    g = _guard_of(target)
    with g.gate:
        if g.holder is not None:
            g.wait_for_release()
        yield


def _guard_of(target: Any) -> _Guard:
    g: _Guard | None = target.__dict__.get(_ATTR)
    if g is None:
        raise RestoreError("no tqsnap guard is installed on this actor; take a hold first")
    return g


def hold(target: Any, names: tuple[str, ...], token: str, lease_s: float, check: Callable[[], None]) -> None:
    """Hold guarded requests off for ``token`` after ``check()`` passes under the lock.

    ``check`` raises to refuse the hold (a target that is not empty); nothing changes then.
    The hold lasts until :func:`release` or ``lease_s`` seconds, whichever comes first.
    """
    guard(target, names)
    g = _guard_of(target)
    with g.gate:
        if g.holder is not None and g.holder != token:
            g.wait_for_release()  # another restore's hold: wait for it, as a request would
        check()
        g.holder = token
        g.hold_until = time.monotonic() + lease_s


@contextlib.contextmanager
def inside_hold(target: Any, token: str, what: str) -> Iterator[None]:
    """Run the block under the lock as ``token``'s holder; refuse if the hold has ended.

    Guarded methods the block reaches run at once instead of waiting for the hold to end.
    """
    g = _guard_of(target)
    with g.gate:
        if not (g.holder == token and time.monotonic() < g.hold_until):
            raise RestoreError(
                f"restore {token} no longer holds {what} (its lease ran out); {what} was not changed"
            )
        g.local.inside = getattr(g.local, "inside", 0) + 1
        try:
            yield
        finally:
            g.local.inside -= 1


def release(target: Any, token: str) -> None:
    """End ``token``'s hold, if it is still the one in force, and let waiting requests go on."""
    g: _Guard | None = target.__dict__.get(_ATTR)
    if g is None:
        return
    with g.gate:
        if g.holder == token:
            g.holder = None
            g.gate.notify_all()
