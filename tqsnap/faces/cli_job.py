"""How the CLI shows a job snapshot: one unit, with its parts (kind, items, bytes, stall).

A job manifest (docs/format/job.md) lists every part's items under ``<part>/``; these helpers
add the parts themselves to ``tqsnap snapshots`` (``job(loop,queue,trainer)``) and
``tqsnap show`` (one ``part.<name>`` row each, and ``parts`` in ``--json``).
"""

from __future__ import annotations

from typing import Any

from ..errors import ManifestError
from ..format.job import JOB_KIND, JobHeader
from ..format.manifest import Manifest
from .cli_common import fmt_bytes


def kind_label(kind: str, stats: dict[str, Any]) -> str:
    """``job(loop,queue,trainer)`` for a job, the kind itself otherwise."""
    parts = stats.get("parts")
    if kind != JOB_KIND or not isinstance(parts, dict) or not parts:
        return kind
    return f"{kind}({','.join(str(p) for p in sorted(parts))})"


def _header(m: Manifest) -> JobHeader | None:
    if m.kind != JOB_KIND:
        return None
    try:
        return JobHeader.from_manifest(m)
    except ManifestError:
        return None  # show still prints what it can; verify/load report the damage


def parts_json(m: Manifest) -> dict[str, Any] | None:
    """``{name: {kind, items, staged_at, stats}}`` of a job manifest (body loaded), else None."""
    header = _header(m)
    if header is None:
        return None
    return {
        name: {"kind": p.kind, "items": p.items, "staged_at": p.staged_at, "stats": p.stats}
        for name, p in sorted(header.parts.items())
    }


def part_rows(m: Manifest) -> list[tuple[str, str]]:
    """One ``part.<name>`` row per part: kind, items, bytes new and reused, time staging."""
    header = _header(m)
    if header is None:
        return []
    rows = []
    for name, p in sorted(header.parts.items()):
        s = p.stats
        new, reused = s.get("new_bytes", 0), s.get("reused_bytes", 0)
        stage = s.get("stage_s")
        text = f"{p.kind}, {p.items} items, {fmt_bytes(new)} new, {fmt_bytes(reused)} reused"
        if isinstance(stage, int | float) and not isinstance(stage, bool):
            text += f", staged in {stage:.3f}s"
        rows.append((f"part.{name}", text))
    return rows
