"""The repository config: ``tqsnap.json`` (version 1) and later versions under ``config/``.

Every config object is created once with put-if-absent and never rewritten. ``tqsnap config``
changes ``grace`` or ``max_write_duration`` by creating ``config/<version:020d>.json``; the
highest version wins. Because writers and gc runs that read an older version may still be
running, a change must keep the gc safety argument (docs/protocol.md, "Changing the config")
true for every version still in force: :func:`check_change`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

from ..errors import ManifestError, UnsafeConfigError
from . import strict
from .shard import HASH_NAME
from .version import FORMAT_VERSION, check_version

DEFAULT_GRACE = 24 * 3600.0
DEFAULT_MAX_WRITE_DURATION = 6 * 3600.0

#: The longest grace or write duration a repository may set: a century, in seconds.
MAX_DURATION = 100 * 365 * 86400.0

_DURATION_RE = re.compile(r"[ \t]*([0-9]{1,12}(?:\.[0-9]{1,9})?)[ \t]*(ms|s|m|h|d|w)?[ \t]*", re.ASCII)
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}


def parse_duration(value: str | float | int) -> float:
    """Seconds from ``90``, ``"90s"``, ``"10m"``, ``"6h"``, ``"7d"``, ``"2w"``.

    NaN, infinities and negatives are refused: every comparison with NaN is false, so a NaN
    grace would pass the gc safety check and a NaN deadline would never fire.
    """
    if isinstance(value, bool):
        raise UnsafeConfigError(f"duration {value!r} is a boolean; use e.g. 90s, 10m, 6h, 7d")
    if isinstance(value, int | float):
        if isinstance(value, int) and abs(value) > MAX_DURATION:
            raise UnsafeConfigError(f"duration {str(value)[:40]} is longer than {MAX_DURATION:g}s")
        seconds = float(value)
    elif isinstance(value, str):
        m = _DURATION_RE.fullmatch(value)
        if not m:
            raise UnsafeConfigError(f"cannot parse duration {value[:40]!r}: use e.g. 90s, 10m, 6h, 7d")
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise UnsafeConfigError(f"duration {value!r:.40} is a {type(value).__name__}; use e.g. 90s, 10m, 6h")
    if not math.isfinite(seconds):
        raise UnsafeConfigError(f"duration {value!r} is not a finite number of seconds")
    if seconds < 0:
        raise UnsafeConfigError(f"duration {value!r} is negative")
    if seconds > MAX_DURATION:
        raise UnsafeConfigError(f"duration {value!r} is longer than {MAX_DURATION:g}s")
    return seconds


@dataclass(frozen=True)
class RepoConfig:
    """Repository-wide settings every writer and every gc run reads before acting."""

    repo_id: str
    created_at: float
    grace: float = DEFAULT_GRACE
    max_write_duration: float = DEFAULT_MAX_WRITE_DURATION
    hash: str = HASH_NAME
    format_version: str = FORMAT_VERSION
    #: Created for one writer on a store whose conditional create failed its probe (or was not
    #: trusted): only one process may write at a time. Absent from older configs: False.
    single_writer: bool = False
    #: 1 for ``tqsnap.json``; ``n`` for ``config/<n:020d>.json`` (format 1.1).
    version: int = 1
    #: Store time at which a later version was written (None for version 1: ``created_at``).
    changed_at: float | None = None

    @property
    def in_force_since(self) -> float:
        return self.created_at if self.changed_at is None else self.changed_at

    def check_safe(self) -> None:
        """Refuse a config where gc could delete a shard a writer within its deadline still needs."""
        for name, value in (("grace", self.grace), ("max_write_duration", self.max_write_duration)):
            if not (isinstance(value, int | float) and math.isfinite(value) and 0 <= value <= MAX_DURATION):
                raise UnsafeConfigError(
                    f"{name} must be a finite number of seconds in [0, {MAX_DURATION:g}], got {value!r}"
                )
        if self.max_write_duration <= 0:
            raise UnsafeConfigError(f"max_write_duration must be positive, got {self.max_write_duration}s")
        if self.grace <= 2 * self.max_write_duration:
            raise UnsafeConfigError(
                f"grace ({self.grace:g}s) must be more than 2 * max_write_duration "
                f"({self.max_write_duration:g}s); raise grace or lower max_write_duration"
            )

    def encode(self) -> bytes:
        doc: dict[str, object] = {
            "format_version": self.format_version,
            "repo_id": self.repo_id,
            "created_at": self.created_at,
            "hash": self.hash,
            "grace_seconds": self.grace,
            "max_write_duration_seconds": self.max_write_duration,
        }
        if self.single_writer:  # written only when set, so shared repositories stay byte-identical
            doc["single_writer"] = True
        if self.version > 1:
            doc["version"] = self.version
            doc["changed_at"] = self.changed_at
        return json.dumps(doc, indent=1).encode()

    @classmethod
    def decode(cls, data: bytes, key: str) -> RepoConfig:
        """Parse ``tqsnap.json`` strictly: exact JSON types, finite bounded durations."""
        what = "repository config"
        doc = strict.obj(strict.load_json(data, key, what, max_bytes=strict.MAX_SMALL_DOC_BYTES), key, what)
        check_version(doc, key)
        config = cls(
            strict.string(doc, "repo_id", key, what, max_len=256),
            strict.timestamp(doc, "created_at", key, what),
            strict.seconds(doc, "grace_seconds", key, what, hi=MAX_DURATION),
            strict.seconds(doc, "max_write_duration_seconds", key, what, hi=MAX_DURATION),
            strict.string(doc, "hash", key, what, max_len=64),
            strict.string(doc, "format_version", key, what, max_len=32),
            _single_writer(doc, key),
            strict.integer(doc, "version", key, what, lo=2, hi=strict.MAX_SEQ) if "version" in doc else 1,
            strict.timestamp(doc, "changed_at", key, what) if "changed_at" in doc else None,
        )
        if key.startswith(CONFIG_VERSIONS_PREFIX) and key != config_version_key(config.version):
            raise ManifestError(f"repository config {key!r} claims to be version {config.version}")
        if config.hash != HASH_NAME:
            raise ManifestError(
                f"repository config {key!r} names hash {config.hash!r}; only {HASH_NAME} is known"
            )
        return config


def _single_writer(doc: dict[str, object], key: str) -> bool:
    """The optional ``single_writer`` flag: a JSON boolean; older configs lack it (False)."""
    value = doc.get("single_writer", False)
    if not isinstance(value, bool):
        raise ManifestError(f"repository config {key!r}: single_writer must be true or false, not {value!r:.40}")
    return value


#: Where config versions after the first live (format 1.1).
CONFIG_VERSIONS_PREFIX = "config/"
#: The format minor version that introduced config versions.
CONFIG_VERSIONS_FORMAT = "1.1"


def config_version_key(version: int) -> str:
    return f"{CONFIG_VERSIONS_PREFIX}{version:020d}.json"


def still_binding_write_duration(history: list[RepoConfig], now: float) -> float:
    """The longest ``max_write_duration`` a save that may still be running could have begun under.

    A save began under version ``k`` while it was the newest; it must commit within version
    ``k``'s write duration, so it can still be running until the next version was written plus
    that duration. The current version always binds.
    """
    ordered = sorted(history, key=lambda c: c.version)
    longest = ordered[-1].max_write_duration
    for older, newer in zip(ordered, ordered[1:], strict=False):
        if now < newer.in_force_since + older.max_write_duration:
            longest = max(longest, older.max_write_duration)
    return longest


def check_change(history: list[RepoConfig], new: RepoConfig, now: float) -> None:
    """Refuse a new config version that could let gc delete what some writer still needs.

    ``grace > 2 * max_write_duration`` must hold (a) for the new values, (b) for the new grace
    against the write duration of every save that may still be running under an older version,
    and (c) for every grace a gc run may still be holding against the new write duration: a gc
    that read the old config keeps the old grace, so a longer write duration than the old grace
    allows is refused until grace has been raised first (docs/protocol.md).
    """
    new.check_safe()
    binding = still_binding_write_duration(history, now)
    if new.grace <= 2 * binding:
        raise UnsafeConfigError(
            f"grace {new.grace:g}s must be more than 2 * {binding:g}s: a save begun under an earlier "
            f"config may still run for up to {binding:g}s; lower grace after those saves have passed "
            "their deadline, or lower max_write_duration first and wait that long"
        )
    current = max(history, key=lambda c: c.version)
    if current.grace <= 2 * new.max_write_duration:
        raise UnsafeConfigError(
            f"max_write_duration {new.max_write_duration:g}s needs grace over {2 * new.max_write_duration:g}s "
            f"in every gc run, but gc runs that started before this change use grace {current.grace:g}s; "
            "raise grace first (one `tqsnap config` change), then max_write_duration"
        )
