"""One retry policy for every backend: exponential backoff with full jitter, bounded twice.

restic's ``retry.Backend`` and kopia's ``retrying`` storage are the models: the policy knows
*how* to repeat a request (how often, how long to wait, when to give up), while the backend
says *which* failures are worth repeating (:attr:`RetryPolicy.run`'s ``retryable``) and how a
final failure reads to the user (``final``). A request is repeated only while both bounds
hold: attempts (``max_attempts``, the first one included) and a time budget (``budget_s``,
measured from the first attempt, so a throttled bucket cannot stall a job for hours).

Which requests may be repeated at all is the caller's decision, not the policy's: reads,
lists, puts to fresh keys and deletes of garbage are safe; a conditional create is not, and
the S3 store and :class:`RetryingStore` handle it themselves (an attempt whose outcome is
unknown raises :class:`~tqsnap.errors.CommitOutcomeUnknownError` rather than guessing).

:func:`policy_from_botocore` reads botocore's own settings (``AWS_MAX_ATTEMPTS``,
``AWS_RETRY_MODE``, the config file, a ``Config(retries=...)``), so a user who has tuned
retries for every AWS tool gets the same behaviour here.
"""

from __future__ import annotations

import errno
import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from ..errors import CommitOutcomeUnknownError, StoreError
from .base import Buffer, ObjectInfo, ObjectStore, PendingUpload

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Seven attempts (six retries) with a 50 ms base: about 3 s of waiting in the worst case
#: before the cap, enough to ride out a connection reset storm or a SlowDown burst.
DEFAULT_ATTEMPTS = 7
DEFAULT_BUDGET_S = 120.0
RETRY_MODES = ("legacy", "standard", "adaptive")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to repeat a failed request.

    Parameters:
        max_attempts: attempts in all, the first included (1 = never retry).
        budget_s: no retry starts later than this many seconds after the first attempt.
        base_s, cap_s: the backoff before retry ``n`` is uniform in
            ``[0, min(cap_s, base_s * 2**n)]`` (full jitter: racing clients spread out).
        mode: botocore's retry mode the settings came from (``legacy``, ``standard``,
            ``adaptive``); the backoff is the same for all three, the name is kept for messages.
    """

    max_attempts: int = DEFAULT_ATTEMPTS
    budget_s: float = DEFAULT_BUDGET_S
    base_s: float = 0.05
    cap_s: float = 5.0
    mode: str = "standard"
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False, compare=False)
    clock: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, not {self.max_attempts}")
        if self.budget_s < 0 or self.base_s < 0 or self.cap_s < 0:
            raise ValueError("budget_s, base_s and cap_s must not be negative")
        if self.mode not in RETRY_MODES:
            raise ValueError(f"retry mode must be one of {RETRY_MODES}, not {self.mode!r}")

    def with_attempts(self, max_attempts: int) -> RetryPolicy:
        return replace(self, max_attempts=max_attempts)

    def backoff(self, retry: int) -> float:
        """The pause before retry number ``retry`` (0-based)."""
        return random.uniform(0, min(self.cap_s, self.base_s * 2**retry))

    def attempts(self) -> Iterator[int]:
        """Attempt numbers (1, 2, ...) while both bounds allow another, sleeping between them.

        For loops that keep state across attempts and decide themselves what ends them.
        """
        started = self.clock()
        for attempt in range(1, self.max_attempts + 1):
            if attempt > 1:
                delay = self.backoff(attempt - 2)
                if self.clock() + delay - started > self.budget_s:
                    return
                self.sleep(delay)
            yield attempt

    def run(
        self,
        fn: Callable[[], T],
        *,
        retryable: Callable[[BaseException], bool],
        catch: tuple[type[BaseException], ...] = (Exception,),
        final: Callable[[BaseException, int], BaseException] | None = None,
        what: str | Callable[[], str] = "request",
        describe: Callable[[BaseException], str] = repr,
    ) -> T:
        """Call ``fn`` until it returns, fails with a non-retryable error, or a bound is reached.

        Only exceptions of types in ``catch`` are considered; anything else is a bug and surfaces
        unchanged at once. The last failure is passed to ``final(exc, attempts)`` and what that
        returns is raised (chained to the original); without ``final`` it is re-raised as is.
        ``what`` names the request in log lines; a callable is called only when one is written.
        """
        started = self.clock()
        attempt = 0
        while True:
            attempt += 1
            try:
                return fn()
            except catch as exc:
                delay = self.backoff(attempt - 1)
                if (
                    attempt < self.max_attempts
                    and self.clock() + delay - started <= self.budget_s
                    and retryable(exc)
                ):
                    logger.info(
                        "%s failed (%s); retry %d/%d in %.2fs",
                        what() if callable(what) else what,
                        describe(exc),
                        attempt,
                        self.max_attempts - 1,
                        delay,
                    )
                    self.sleep(delay)
                    continue
                if final is None:
                    raise
                error = final(exc, attempt)
                if error is exc:
                    raise
                raise error from exc


# --- botocore's settings ------------------------------------------------------------------


def _attempts_from_retries(retries: Mapping[str, Any]) -> int | None:
    """botocore's ``retries`` dict: ``total_max_attempts`` counts the first attempt,
    ``max_attempts`` does not; the first wins when both are given (as in botocore)."""
    if retries.get("total_max_attempts") is not None:
        return int(retries["total_max_attempts"])
    if retries.get("max_attempts") is not None:
        return int(retries["max_attempts"]) + 1
    return None


def policy_from_botocore(
    retries: int | Mapping[str, Any] | RetryPolicy | None = None,
    *,
    config: Any = None,
    session: Any = None,
    budget_s: float | None = None,
) -> RetryPolicy:
    """The policy the user asked for, from the most specific setting that is present.

    1. ``retries`` given to the store: a :class:`RetryPolicy`; an int (retries after the first
       attempt, tqsnap's historical option); or botocore's dict (``total_max_attempts``,
       ``max_attempts``, ``mode``);
    2. ``retries`` of a botocore ``Config`` given as ``config``;
    3. botocore's session variables ``max_attempts`` and ``retry_mode``: the environment
       (``AWS_MAX_ATTEMPTS``, ``AWS_RETRY_MODE``) and the profile in ``~/.aws/config``;
    4. :data:`DEFAULT_ATTEMPTS`.
    """
    if isinstance(retries, RetryPolicy):
        return retries if budget_s is None else replace(retries, budget_s=budget_s)
    attempts: int | None = None
    mode: str | None = None
    if isinstance(retries, bool):
        raise TypeError("retries must be a number of retries, a botocore retries dict or a RetryPolicy")
    if isinstance(retries, int):
        attempts = max(0, retries) + 1
    elif isinstance(retries, Mapping):
        attempts, mode = _attempts_from_retries(retries), retries.get("mode")
    elif retries is not None:
        raise TypeError(f"retries must be an int, a dict or a RetryPolicy, not {type(retries).__name__}")
    config_retries = getattr(config, "retries", None) or {}
    if attempts is None:
        attempts = _attempts_from_retries(config_retries)
    mode = mode or config_retries.get("mode")
    if session is not None:
        if attempts is None:
            value = session.get_config_variable("max_attempts")
            attempts = int(value) if value is not None else None
        mode = mode or session.get_config_variable("retry_mode")
    return RetryPolicy(
        max_attempts=max(1, attempts if attempts is not None else DEFAULT_ATTEMPTS),
        budget_s=DEFAULT_BUDGET_S if budget_s is None else budget_s,
        mode=mode or "standard",
    )


# --- a wrapper for any backend --------------------------------------------------------------

#: OS errors that a network file system (NFS, SMB, FUSE) raises for a passing condition.
TRANSIENT_ERRNOS = frozenset(
    {errno.EAGAIN, errno.EINTR, errno.ETIMEDOUT, errno.EBUSY, errno.ESTALE, errno.EIO, errno.ECONNRESET}
)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    cur: BaseException | None = exc
    for _ in range(8):
        if cur is None:
            return
        yield cur
        cur = cur.__cause__ or cur.__context__


def refused_os_error(exc: BaseException) -> bool:
    """True when the request was refused before it reached the store (nothing was applied)."""
    return any(
        isinstance(e, ConnectionRefusedError) or (isinstance(e, OSError) and e.errno == errno.ECONNREFUSED)
        for e in _chain(exc)
    )


def transient_os_error(exc: BaseException) -> bool:
    """True when ``exc`` (or what caused it) is a connection or NFS failure that may pass."""
    return any(
        isinstance(e, ConnectionError | TimeoutError) or (isinstance(e, OSError) and e.errno in TRANSIENT_ERRNOS)
        for e in _chain(exc)
    )


class RetryingStore(ObjectStore):
    """Any store, with its safe-to-repeat verbs retried under one :class:`RetryPolicy`.

    For backends without retries of their own (a local or NFS mount, a test store). Reads,
    HEAD, lists, ``put`` (by contract only to keys no one else writes), ``delete_many``
    (deleting an absent key is not an error) and the multipart leftovers verbs are repeated
    on failures ``retryable`` accepts. A list that fails part-way resumes after the last key
    it yielded, because listings are in key order.

    ``put_if_absent`` is the commit and is never repeated blindly: a failure that
    ``not_applied`` says changed nothing (a refused connection) is repeated freely, but after
    an attempt that may have been applied a later "exists" cannot tell the writer's own object
    from a rival's, so :class:`~tqsnap.errors.CommitOutcomeUnknownError` is raised for the
    caller to resolve. A True is always definite.
    """

    def __init__(
        self,
        inner: ObjectStore,
        policy: RetryPolicy | None = None,
        *,
        retryable: Callable[[BaseException], bool] = transient_os_error,
        not_applied: Callable[[BaseException], bool] = refused_os_error,
    ) -> None:
        self.inner = inner
        self.policy = policy or RetryPolicy()
        self.retryable = retryable
        self.not_applied = not_applied
        self.url = inner.url
        self.atomic_create = inner.atomic_create

    def _run(self, verb: str, key: str | None, fn: Callable[[], T]) -> T:
        return self.policy.run(fn, retryable=self.retryable, what=lambda: f"{verb} of {key!r} in {self.url}")

    def get(self, key: str) -> bytes:
        return self._run("get", key, lambda: self.inner.get(key))

    def get_range(self, key: str, start: int, length: int) -> bytes:
        return self._run("get_range", key, lambda: self.inner.get_range(key, start, length))

    def get_into(self, key: str, buf: memoryview, start: int = 0) -> int:
        return self._run("get_into", key, lambda: self.inner.get_into(key, buf, start))

    def declare_single_writer(self) -> None:
        self.inner.declare_single_writer()

    def get_into_sized(self, key: str, buf: memoryview, start: int = 0) -> tuple[int, int | None]:
        return self._run("get_into", key, lambda: self.inner.get_into_sized(key, buf, start))

    def put(self, key: str, data: Buffer) -> None:
        self._run("put", key, lambda: self.inner.put(key, data))

    def put_if_absent(self, key: str, data: Buffer) -> bool:
        uncertain: BaseException | None = None
        for _attempt in self.policy.attempts():
            try:
                created = self.inner.put_if_absent(key, data)
            except Exception as exc:
                if not self.retryable(exc):
                    raise
                if not self.not_applied(exc):
                    uncertain = exc
                logger.info("put_if_absent of %r in %s failed (%r); retrying", key, self.url, exc)
                continue
            if created or uncertain is None:
                return created
            raise CommitOutcomeUnknownError(
                key,
                f"put_if_absent of {key!r} in {self.url} failed ({uncertain!r}) and a retry found the "
                "object existing: it may be this writer's own or a rival's. Read it back to tell",
            ) from uncertain
        if uncertain is None:
            raise StoreError(
                f"put_if_absent of {key!r} in {self.url} was refused on every attempt; nothing was "
                "written. Check that the store is reachable and run it again"
            )
        raise CommitOutcomeUnknownError(
            key,
            f"put_if_absent of {key!r} in {self.url} failed on every attempt (last: {uncertain!r}); "
            "an attempt may still have been applied. Read the key back to tell",
        ) from uncertain

    def head(self, key: str) -> ObjectInfo | None:
        return self._run("head", key, lambda: self.inner.head(key))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """The inner listing; after a failure it starts again and skips the keys already yielded.

        Each stretch of progress earns a fresh budget, as each page of an S3 listing does, so
        a long listing on a flaky mount finishes as long as it keeps advancing.
        """
        last: str | None = None
        failures, started = 0, self.policy.clock()
        while True:
            before = last
            try:
                for info in self.inner.list(prefix):
                    if last is not None and info.key <= last:
                        continue
                    yield info
                    last = info.key
                return
            except Exception as exc:
                if not self.retryable(exc):
                    raise
                if last != before:
                    failures, started = 0, self.policy.clock()
                delay = self.policy.backoff(failures)
                failures += 1
                if failures >= self.policy.max_attempts or self.policy.clock() + delay - started > self.policy.budget_s:
                    raise
                logger.info("list of %r in %s failed after %r (%r); resuming", prefix, self.url, last, exc)
                self.policy.sleep(delay)

    def delete_many(self, keys: Iterable[str]) -> int:
        keys = list(keys)
        return self._run("delete_many", keys[0] if keys else None, lambda: self.inner.delete_many(keys))

    def now(self) -> float:
        return self._run("now", None, self.inner.now)

    def list_uploads(self, prefix: str = "") -> Iterator[PendingUpload]:
        return iter(self._run("list_uploads", prefix, lambda: list(self.inner.list_uploads(prefix))))

    def abort_upload(self, upload: PendingUpload) -> None:
        self._run("abort_upload", upload.key, lambda: self.inner.abort_upload(upload))

    def close(self) -> None:
        self.inner.close()
