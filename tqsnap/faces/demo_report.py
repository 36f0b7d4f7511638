"""The demo's summary: every job snapshot with its parts' bytes and stalls, the restore, the checks."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from .cli_common import fmt_bytes, table
from .demo_job import PART_NAMES, SnapshotRecord


@dataclass
class Verification:
    """What the resumed job was compared with, and every difference found (none: verified)."""

    first_step: int
    last_step: int
    model_diffs: list[str] = field(default_factory=list)
    queue_diffs: list[str] = field(default_factory=list)
    queue_keys: int = 0

    @property
    def ok(self) -> bool:
        return not self.model_diffs and not self.queue_diffs


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.0f}ms" if seconds < 10 else f"{seconds:.1f}s"


def summary(
    snapshots: list[SnapshotRecord],
    restored: str,
    restore_times: dict[str, float],
    shape: dict[str, Any],
    check: Verification,
) -> str:
    """The table and lines ``tqsnap demo`` ends with."""
    header = ["snapshot", "step", *(f"{name}: new / reused / stall" for name in PART_NAMES), "training stall"]
    rows = []
    for s in snapshots:
        row: list[Any] = [s.snapshot, s.step]
        for name in PART_NAMES:
            p = s.parts[name]
            row.append(f"{fmt_bytes(p.new_bytes)} / {fmt_bytes(p.reused_bytes)} / {_ms(p.stall_s)}")
        row.append(_ms(s.training_stall_s))
        rows.append(row)
    totals = []
    for name in PART_NAMES:
        new = sum(s.parts[name].new_bytes for s in snapshots)
        reused = sum(s.parts[name].reused_bytes for s in snapshots)
        totals.append(f"{name} {fmt_bytes(new)} new / {fmt_bytes(reused)} reused")
    stalls = [s.training_stall_s for s in snapshots]
    lines = [
        table(header, rows),
        "",
        "stall: trainer = the longest a rank was blocked in dcp.save; queue = the longest a storage unit or "
        "the controller was blocked; loop = staging the loop state; training stall = the loop's whole wait, "
        "boundary to commit (the queue stages beside the trainer)",
        f"job snapshots: {len(snapshots)} ({', '.join(totals)}); "
        f"training stall per snapshot: median {_ms(statistics.median(stalls))}, max {_ms(max(stalls))}",
        f"job: {shape['ranks']} trainer ranks (DDP, gloo), TransferQueue with {shape['units']} units; "
        f"{shape['steps']} steps trained, {shape['produced']} rollout samples produced; "
        f"killed (SIGKILL) at step {shape['killed_at']}",
        f"restore: {restored} -> fresh job with {shape['new_ranks']} trainer rank(s) and {shape['new_units']} units: "
        f"{_ms(restore_times['parts'])} for the three parts (queue {_ms(restore_times['queue'])}, "
        f"trainer {_ms(restore_times['trainer'])}, loop {_ms(restore_times['loop'])}), "
        f"{_ms(restore_times['total'])} including starting the new trainer ranks",
        f"resumed steps {check.first_step}..{check.last_step} and compared with the uninterrupted run: "
        f"model and optimizer {'BIT-EXACT at every step' if not check.model_diffs else 'DIFFERENT'}, "
        f"queue ({check.queue_keys} keys: values, tags, consumption) "
        f"{'EQUAL' if not check.queue_diffs else 'DIFFERENT'}",
        "verification: " + ("EQUAL" if check.ok else "DIFFERENT"),
    ]
    lines += [f"  - {d}" for d in check.model_diffs + check.queue_diffs]
    return "\n".join(lines)
