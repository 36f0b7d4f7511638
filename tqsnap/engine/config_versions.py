"""Reading and changing the repository config through put-if-absent versions.

``tqsnap.json`` is version 1 and is never rewritten; ``config/<version:020d>.json`` objects
follow, and the highest version is the config in force (docs/format.md section 3). Opening a
repository reads the newest, so every writer and gc run started after a change uses it; the
safety rule across the change is :func:`tqsnap.format.config.check_change`.
"""

from __future__ import annotations

import dataclasses
import logging

from ..errors import CommitConflictError, ObjectNotFoundError
from ..format.config import (
    CONFIG_VERSIONS_FORMAT,
    CONFIG_VERSIONS_PREFIX,
    RepoConfig,
    check_change,
    config_version_key,
    parse_duration,
)
from ..format.keys import parse_seq_key
from ..format.strict import MAX_SMALL_DOC_BYTES
from ..store import ObjectStore
from .create_once import create_once

log = logging.getLogger(__name__)


def config_history(store: ObjectStore, first: RepoConfig) -> list[RepoConfig]:
    """Every config version, oldest first: ``first`` (``tqsnap.json``) and the ``config/`` objects."""
    versions = sorted(
        v for i in store.list(CONFIG_VERSIONS_PREFIX) if (v := parse_seq_key(i.key, CONFIG_VERSIONS_PREFIX))
    )
    out = [first]
    for v in versions:
        key = config_version_key(v)
        try:
            raw = store.get_range(key, 0, MAX_SMALL_DOC_BYTES + 1)
        except ObjectNotFoundError:
            continue
        out.append(RepoConfig.decode(raw, key))
    return out


def current_config(store: ObjectStore, first: RepoConfig) -> RepoConfig:
    """The config in force: the highest version."""
    return max(config_history(store, first), key=lambda c: c.version)


def change_config(
    store: ObjectStore,
    first: RepoConfig,
    *,
    grace: float | str | None = None,
    max_write_duration: float | str | None = None,
) -> RepoConfig:
    """Write the next config version with the given settings; refuse an unsafe change.

    Returns the config now in force (unchanged when nothing differs).
    """
    history = config_history(store, first)
    current = max(history, key=lambda c: c.version)
    new = dataclasses.replace(
        current,
        grace=current.grace if grace is None else parse_duration(grace),
        max_write_duration=current.max_write_duration if max_write_duration is None else parse_duration(
            max_write_duration
        ),
        version=current.version + 1,
        changed_at=store.now(),
        format_version=CONFIG_VERSIONS_FORMAT,
    )
    if (new.grace, new.max_write_duration) == (current.grace, current.max_write_duration):
        return current
    check_change(history, new, new.changed_at or 0.0)
    key = config_version_key(new.version)
    if not create_once(store, key, new.encode()):
        raise CommitConflictError(
            f"the config of {store.url} was changed by someone else at the same time ({key} exists); "
            "look at `tqsnap config` and try again"
        )
    log.info(
        "config of %s is now version %d: grace %gs, max_write_duration %gs",
        store.url,
        new.version,
        new.grace,
        new.max_write_duration,
    )
    return new
