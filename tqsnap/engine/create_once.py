"""Create a small immutable object exactly once, even when the store loses the reply.

Tombstones and tags are created with put-if-absent, like manifests. When the reply to that
request is lost (:class:`~tqsnap.errors.CommitOutcomeUnknownError`, or any other non-fatal
:class:`~tqsnap.errors.StoreError`), the object may or may not exist, and it may be this
caller's or a concurrent caller's. The answer is found by reading the key back and comparing
the bytes with what was sent: the documents carry the creation time at full float precision,
so two callers that wrote the same key send different bytes, and equal bytes mean "mine"
(the same role ``write_id`` plays for manifests). "Could not tell" is never read as "someone
else's": the read-back is repeated, with backoff, until it answers or the time budget runs out,
and then the outcome is reported as unknown, not as a failure.
"""

from __future__ import annotations

import logging
import random
import time
from enum import Enum

from ..errors import (
    AccessDeniedError,
    BucketNotFoundError,
    CommitOutcomeUnknownError,
    ConditionalWriteUnsupportedError,
    InvalidKeyError,
    ObjectNotFoundError,
    StoreError,
)
from ..store import ObjectStore

log = logging.getLogger(__name__)

#: Errors that no repetition can cure: they surface at once.
FATAL_STORE_ERRORS = (AccessDeniedError, BucketNotFoundError, ConditionalWriteUnsupportedError, InvalidKeyError)

#: How long an unknown outcome is worked on before it is reported as unknown.
DEFAULT_BUDGET_S = 120.0
_MAX_ROUNDS = 1000


class Outcome(Enum):
    """What a read-back of an attempted key says."""

    MINE = "mine"
    THEIRS = "theirs"
    ABSENT = "absent"


def backoff(round_: int) -> None:
    """A short, growing, random pause between resolution rounds (full jitter, 2 s cap)."""
    time.sleep(min(2.0, 0.05 * 2 ** min(round_, 10)) * random.random())


def read_back(store: ObjectStore, key: str, data: bytes) -> Outcome:
    """Whether ``key`` holds ``data`` (mine), something else (theirs), or nothing yet.

    Raises :class:`~tqsnap.errors.StoreError` when the store does not answer: the caller
    tries again; it never guesses.
    """
    try:
        existing = store.get_range(key, 0, len(data) + 1)
    except ObjectNotFoundError:
        return Outcome.ABSENT
    return Outcome.MINE if bytes(existing) == data else Outcome.THEIRS


def create_once(store: ObjectStore, key: str, data: bytes, *, budget_s: float = DEFAULT_BUDGET_S) -> bool:
    """Put-if-absent ``data`` at ``key``; True if this call created it, False if it existed.

    After an attempt whose outcome is unknown, the key is read back until it answers: equal
    bytes mean this call created it (True), other bytes mean another caller did (False), and
    absence means the attempt has not landed (yet), so it is repeated at the same key; a
    late landing then shows up as "mine" in the next read-back. Raises
    :class:`~tqsnap.errors.CommitOutcomeUnknownError` when ``budget_s`` passes without an answer.
    """
    data = bytes(data)
    give_up = time.monotonic() + budget_s
    uncertain: BaseException | None = None
    for round_ in range(_MAX_ROUNDS):
        try:
            if store.put_if_absent(key, data):
                return True
            if uncertain is None:
                return False  # nothing of ours can be there: a definite "exists"
        except FATAL_STORE_ERRORS:
            raise
        except StoreError as exc:
            uncertain = exc
            log.warning("creating %s in %s: outcome unknown (%s); reading it back", key, store.url, exc)
        try:
            outcome = read_back(store, key, data)
        except FATAL_STORE_ERRORS:
            raise
        except StoreError as exc:
            log.warning("reading back %s in %s failed (%s); trying again", key, store.url, exc)
        else:
            if outcome is not Outcome.ABSENT:
                return outcome is Outcome.MINE
        if time.monotonic() > give_up:
            break
        backoff(round_)
    raise CommitOutcomeUnknownError(
        key,
        f"could not tell within {budget_s:g}s whether {key!r} in {store.url} was created by this "
        f"call (last error: {uncertain!r}); run the command again: it is idempotent",
    )
