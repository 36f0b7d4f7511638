"""Tags that can move and be deleted, on a store whose only safe write is put-if-absent.

A tag is a chain of immutable versions (docs/format.md section 9): version 0 is the original
``tags/<name>.json``; every later change is ``tags/<name>/<version:020d>.json`` written with
put-if-absent, and the highest version wins. A deletion is a version whose target is null.

Why versions and not an overwrite: two operators moving the same tag at once must not both
believe they won. Each computes ``current + 1`` and creates that key; the store lets exactly one
create it, the other sees "exists", reads the winner back and reports a conflict naming the
winner's target. Nothing is ever overwritten or deleted, so a reader that listed an older
version still reads a complete, valid object, and gc never needs to look at tags.

Format 1.0 readers read only ``tags/<name>.json``; a tag that was never moved stays readable by
them. A moved tag is seen by them at its first target, so a repository whose tags move should
be read with tqsnap that knows format 1.1.
"""

from __future__ import annotations

import fnmatch
import logging
import re

from ..errors import ObjectNotFoundError, SnapshotNotFoundError, TqsnapError
from ..format.keys import SEQ_DIGITS, TAGS_PREFIX, validate_name
from ..format.manifest import SnapshotId, Tag
from ..format.strict import MAX_SMALL_DOC_BYTES
from ..store import ObjectStore
from .create_once import create_once

log = logging.getLogger(__name__)

#: The format minor version that introduced tag versions (written into each version object).
TAG_VERSIONS_FORMAT = "1.1"

_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
_LEGACY_KEY = re.compile(rf"tags/({_NAME})\.json", re.ASCII)
_VERSION_KEY = re.compile(rf"tags/({_NAME})/([0-9]{{{SEQ_DIGITS}}})\.json", re.ASCII)


class TagConflictError(TqsnapError, FileExistsError):
    """A tag exists and names another snapshot, or another writer changed it first."""


def legacy_tag_key(name: str) -> str:
    return f"{TAGS_PREFIX}{validate_name(name, 'tag')}.json"


def tag_version_key(name: str, version: int) -> str:
    return f"{TAGS_PREFIX}{validate_name(name, 'tag')}/{version:0{SEQ_DIGITS}d}.json"


def _read(store: ObjectStore, key: str) -> Tag | None:
    try:
        raw = store.get_range(key, 0, MAX_SMALL_DOC_BYTES + 1)
    except ObjectNotFoundError:
        return None
    return Tag.decode(raw, key)


def tag_versions(store: ObjectStore) -> dict[str, int]:
    """Every tag name with its highest version, from one listing of ``tags/``."""
    latest: dict[str, int] = {}
    for info in store.list(TAGS_PREFIX):
        m = _LEGACY_KEY.fullmatch(info.key)
        if m and ".." not in m.group(1):
            latest.setdefault(m.group(1), 0)
            continue
        m = _VERSION_KEY.fullmatch(info.key)
        if m and ".." not in m.group(1):
            latest[m.group(1)] = max(latest.get(m.group(1), 0), int(m.group(2)))
    return latest


def _highest_version(store: ObjectStore, name: str) -> int | None:
    """The highest version of one tag (None: no version at all), from a listing of its prefix."""
    versions = [
        int(m.group(2))
        for info in store.list(f"{TAGS_PREFIX}{name}/")
        if (m := _VERSION_KEY.fullmatch(info.key)) and m.group(1) == name
    ]
    if versions:
        return max(versions)
    return None if store.head(legacy_tag_key(name)) is None else 0


def current_tag(store: ObjectStore, name: str) -> Tag | None:
    """The winning version of tag ``name`` (a deletion included), or None if it never existed."""
    validate_name(name, "tag")
    version = _highest_version(store, name)
    if version is None:
        return None
    key = legacy_tag_key(name) if version == 0 else tag_version_key(name, version)
    return _read(store, key)


def read_tag(store: ObjectStore, name: str) -> Tag:
    """The live tag ``name``; :class:`SnapshotNotFoundError` if absent or deleted."""
    tag = current_tag(store, name)
    if tag is None or tag.deleted:
        state = "was deleted" if tag is not None else "does not exist"
        raise SnapshotNotFoundError(f"tag {name!r} {state} in {store.url}")
    return tag


def list_tags(store: ObjectStore, pattern: str | None = None) -> list[Tag]:
    """Every live tag (deleted ones left out), by name; ``pattern`` is a glob on the name."""
    out = []
    for name, version in sorted(tag_versions(store).items()):
        if pattern and not fnmatch.fnmatchcase(name, pattern):
            continue
        key = legacy_tag_key(name) if version == 0 else tag_version_key(name, version)
        tag = _read(store, key)
        if tag is not None and not tag.deleted:
            out.append(tag)
    return out


def set_tag(store: ObjectStore, name: str, target: SnapshotId | None, *, move: bool = False) -> Tag:
    """Point tag ``name`` at ``target`` (None deletes it); returns the version that now wins.

    Without ``move``, a live tag naming another snapshot is refused (tags pin what they name
    unless the caller means to move them). Idempotent: a tag that already says what is asked
    is returned unchanged, so a command re-run after a lost reply succeeds.
    """
    validate_name(name, "tag")
    current = current_tag(store, name)
    if current is not None and current.target == target:
        return current
    if target is None and (current is None or current.deleted):
        raise SnapshotNotFoundError(f"tag {name!r} does not exist in {store.url}; nothing to delete")
    if target is not None and current is not None and not current.deleted and not move:
        raise TagConflictError(
            f"tag {name!r} already exists in {store.url} and names {current.target}; "
            f"pass --move to point it at {target}"
        )
    if current is None:  # a brand-new tag keeps the format 1.0 object, readable by every reader
        tag = Tag(name, target, store.now())
        key = legacy_tag_key(name)
    else:
        tag = Tag(name, target, store.now(), TAG_VERSIONS_FORMAT, current.version + 1)
        key = tag_version_key(name, tag.version)
    if create_once(store, key, tag.encode()):
        log.info("tag %s -> %s (version %d) in %s", name, target or "deleted", tag.version, store.url)
        return tag
    winner = _read(store, key)
    if winner is not None and winner.target == target:
        return winner
    raise TagConflictError(
        f"tag {name!r} in {store.url} was changed by another writer at the same time "
        f"(version {tag.version} names {winner.target if winner else 'unknown'}); look at `tqsnap tags` "
        "and try again"
    )
