"""The key layout of a repository (docs/format.md, "Layout").

Every key is relative to the repository root. Names are validated here so that a stream or tag
name can never escape its prefix (``/``, ``..``) or collide with another object kind.
"""

from __future__ import annotations

import re

from ..errors import InvalidNameError

CONFIG_KEY = "tqsnap.json"
SHARDS_PREFIX = "shards/"
SNAPSHOTS_PREFIX = "snapshots/"
TOMBSTONES_PREFIX = "tombstones/"
TAGS_PREFIX = "tags/"

SEQ_DIGITS = 20
# Matched with ``fullmatch`` only: ``$`` would also match before a trailing newline.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", re.ASCII)
_SHARD_RE = re.compile(r"shards/([0-9a-f]{2})/([0-9a-f]{32})\.([0-9a-z]{1,64})(?:\.([a-z0-9]{1,16}))?", re.ASCII)
_SEQ_FILE_RE = re.compile(rf"([0-9]{{{SEQ_DIGITS}}})\.json", re.ASCII)


def validate_name(name: str, what: str = "stream") -> str:
    """Return ``name`` if it is a legal stream or tag name, else raise :class:`InvalidNameError`."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or ".." in name:
        raise InvalidNameError(
            f"invalid {what} name {name!r:.80}: use 1-128 characters from [A-Za-z0-9._-], "
            "starting with a letter or digit, without '..' or '/'"
        )
    return name


def shard_key(digest: str, upload_id: str, codec: str = "raw") -> str:
    """``shards/<h[0:2]>/<hash>.<upload-id>[.<codec>]``; the raw codec has no suffix."""
    suffix = "" if codec == "raw" else f".{codec}"
    return f"{SHARDS_PREFIX}{digest[:2]}/{digest}.{upload_id}{suffix}"


def parse_shard_key(key: str) -> tuple[str, str, str] | None:
    """Return (hash, upload_id, codec) of a shard key, or None if the key is not a shard.

    The fan-out directory must be the hash's first two digits: a key filed under another
    prefix is not one this writer made.
    """
    m = _SHARD_RE.fullmatch(key) if isinstance(key, str) else None
    if not m or m.group(2)[:2] != m.group(1):
        return None
    return m.group(2), m.group(3), m.group(4) or "raw"


def shard_prefixes() -> list[str]:
    """The 256 fan-out prefixes under ``shards/``, for parallel listing."""
    return [f"{SHARDS_PREFIX}{i:02x}/" for i in range(256)]


def snapshot_prefix(stream: str) -> str:
    return f"{SNAPSHOTS_PREFIX}{validate_name(stream)}/"


def snapshot_key(stream: str, seq: int) -> str:
    return f"{snapshot_prefix(stream)}{seq:0{SEQ_DIGITS}d}.json"


def tombstone_prefix(stream: str) -> str:
    return f"{TOMBSTONES_PREFIX}{validate_name(stream)}/"


def tombstone_key(stream: str, seq: int) -> str:
    return f"{tombstone_prefix(stream)}{seq:0{SEQ_DIGITS}d}.json"


def tag_key(name: str) -> str:
    return f"{TAGS_PREFIX}{validate_name(name, 'tag')}.json"


def parse_seq_key(key: str, prefix: str) -> int | None:
    """The seq of ``<prefix><seq:020d>.json``, or None for any other key under the prefix."""
    if not key.startswith(prefix):
        return None
    m = _SEQ_FILE_RE.fullmatch(key, len(prefix))  # ASCII digits: str.isdigit takes '²' and '٩'
    return None if m is None else int(m.group(1))


def parse_stream_key(key: str, kind_prefix: str) -> tuple[str, int] | None:
    """Split ``snapshots/<stream>/<seq>.json`` (or tombstones/) into (stream, seq)."""
    if not key.startswith(kind_prefix):
        return None
    rest = key[len(kind_prefix) :]
    stream, sep, _ = rest.partition("/")
    if not sep or not _NAME_RE.fullmatch(stream) or ".." in stream:
        return None
    seq = parse_seq_key(key, f"{kind_prefix}{stream}/")
    return None if seq is None else (stream, seq)
