"""The repository config, ``tqsnap.json``: created once with put-if-absent, never rewritten.

``grace`` and ``max_write_duration`` are fixed for the whole repository because the gc safety
argument (docs/protocol.md) needs every writer and every gc run to agree on them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from ..errors import ManifestError, UnsafeConfigError
from .shard import HASH_NAME
from .version import FORMAT_VERSION, check_version

DEFAULT_GRACE = 24 * 3600.0
DEFAULT_MAX_WRITE_DURATION = 6 * 3600.0

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}


def parse_duration(value: str | float | int) -> float:
    """Seconds from ``90``, ``"90s"``, ``"10m"``, ``"6h"``, ``"7d"``, ``"2w"``."""
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = _DURATION_RE.match(value)
        if not m:
            raise ValueError(f"cannot parse duration {value!r}: use e.g. 90s, 10m, 6h, 7d")
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if seconds < 0:
        raise ValueError(f"duration {value!r} is negative")
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

    def check_safe(self) -> None:
        """Refuse a config where gc could delete a shard a writer within its deadline still needs."""
        if self.max_write_duration <= 0:
            raise UnsafeConfigError(f"max_write_duration must be positive, got {self.max_write_duration}s")
        if self.grace <= 2 * self.max_write_duration:
            raise UnsafeConfigError(
                f"grace ({self.grace:g}s) must be more than 2 * max_write_duration "
                f"({self.max_write_duration:g}s); raise grace or lower max_write_duration"
            )

    def encode(self) -> bytes:
        return json.dumps(
            {
                "format_version": self.format_version,
                "repo_id": self.repo_id,
                "created_at": self.created_at,
                "hash": self.hash,
                "grace_seconds": self.grace,
                "max_write_duration_seconds": self.max_write_duration,
            },
            indent=1,
        ).encode()

    @classmethod
    def decode(cls, data: bytes, key: str) -> RepoConfig:
        try:
            doc = json.loads(data)
        except ValueError as exc:
            raise ManifestError(f"repository config {key!r} is not valid JSON: {exc}") from exc
        if not isinstance(doc, dict):
            raise ManifestError(f"repository config {key!r} is not a JSON object")
        check_version(doc, key)
        try:
            config = cls(
                str(doc["repo_id"]),
                float(doc["created_at"]),
                float(doc["grace_seconds"]),
                float(doc["max_write_duration_seconds"]),
                str(doc["hash"]),
                str(doc["format_version"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"repository config {key!r} is malformed: {exc}") from exc
        if config.hash != HASH_NAME:
            raise ManifestError(
                f"repository config {key!r} names hash {config.hash!r}; only {HASH_NAME} is known"
            )
        return config
