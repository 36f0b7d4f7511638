"""Wait, before a final gc, exactly as long as the repository's grace period still requires.

A test that ends with "once everything is older than grace, gc leaves no garbage" need not
sleep ``grace`` plus a margin after its last checks: the clock that matters is the server's,
and it started with the newest object, not with the end of the checks, which have usually
used up much of the wait already. Waiting from the newest LastModified (or multipart upload
start) keeps the promise and spends no more time than it needs.
"""

from __future__ import annotations

import logging
import time

from tqsnap.engine import Repository

log = logging.getLogger(__name__)

#: Covers the one-second resolution of LastModified and of the ``Date`` header from which each
#: side (this wait, and the gc after it) estimates the server's clock.
MARGIN_S = 2.0


def sleep_past_grace(*repos: Repository, grace: float, margin: float = MARGIN_S) -> float:
    """Sleep until every object and open upload in ``repos`` is older than ``grace`` by the
    server's clock (plus ``margin``); return the seconds slept."""
    newest = 0.0
    for repo in repos:
        for info in repo.store.list(""):
            newest = max(newest, info.last_modified)
        for upload in repo.store.list_uploads():
            newest = max(newest, upload.initiated)
    wait = max(0.0, newest + grace + margin - repos[0].store.now())
    log.info("waiting %.1fs until every object is older than the grace period (%.1fs)", wait, grace)
    time.sleep(wait)
    return wait
