"""Copies held inside an actor between a capture and its upload (asynchronous job snapshots).

An asynchronous stage of the queue freezes the controller and every storage unit for a few
milliseconds (the *capture*) and packs and uploads later, while training goes on. What a capture
copied stays in the actor that made it, under a capture id, until the upload takes it: bulk data
never leaves its actor. A capture whose upload never comes (its job failed, its process died)
would pin memory, so an actor holds at most :data:`MAX_HELD` captures and drops the oldest.
"""

from __future__ import annotations

import logging
from typing import Any

from ...errors import TqsnapError

log = logging.getLogger(__name__)

#: Captures one actor holds at once; older ones are dropped (their uploads then fail clearly).
MAX_HELD = 4
_ATTR = "_tqsnap_held_captures"


def hold(actor: Any, capture_id: str, copy: Any) -> None:
    """Keep ``copy`` in ``actor`` under ``capture_id`` for a later :func:`take`."""
    held: dict[str, Any] = actor.__dict__.setdefault(_ATTR, {})
    held[capture_id] = copy
    while len(held) > MAX_HELD:
        dropped = next(iter(held))
        del held[dropped]
        log.warning("capture %s was never uploaded; dropped to bound the memory it pins", dropped)


def take(actor: Any, capture_id: str) -> Any:
    """Remove and return the copy held under ``capture_id``."""
    held: dict[str, Any] = actor.__dict__.get(_ATTR, {})
    try:
        return held.pop(capture_id)
    except KeyError:
        raise TqsnapError(
            f"capture {capture_id} is no longer held by {type(actor).__name__} (the actor restarted, or "
            f"more than {MAX_HELD} captures were taken without uploading); take the job snapshot again"
        ) from None


def drop(actor: Any, capture_id: str) -> None:
    """Forget the copy held under ``capture_id``, if any (an abandoned capture)."""
    actor.__dict__.get(_ATTR, {}).pop(capture_id, None)
