"""The repository config, ``tqsnap.json``: created once with put-if-absent, never rewritten.

``grace`` and ``max_write_duration`` are fixed for the whole repository because the gc safety
argument (docs/protocol.md) needs every writer and every gc run to agree on them.
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
        )
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
