"""What a fault workload counted and found, and the Markdown table that reports it.

Kept apart from :mod:`fault_workload` (which runs the operations and checks the server) so the
benchmark script and the tests read one result type, and several runs add up with
:func:`combine`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from faultproxy import KINDS

if TYPE_CHECKING:
    from fault_workload import WorkloadConfig

OPS = ("save", "load", "verify", "snapshots", "forget", "gc", "copy", "tag")


@dataclass
class Failure:
    """One operation that raised, or returned something a user would call wrong."""

    op: int
    kind: str
    detail: str
    trace: str = ""


@dataclass
class WorkloadResult:
    """Counts per operation kind, the injected faults, and the findings of the final checks."""

    config: WorkloadConfig
    attempted: Counter[str] = field(default_factory=Counter)
    completed: Counter[str] = field(default_factory=Counter)
    seconds: Counter[str] = field(default_factory=Counter)
    failures: list[Failure] = field(default_factory=list)
    injected: Counter[tuple[str, str]] = field(default_factory=Counter)
    requests: Counter[str] = field(default_factory=Counter)
    wrong_data: list[str] = field(default_factory=list)
    lost_commits: list[str] = field(default_factory=list)
    duplicate_commits: list[str] = field(default_factory=list)
    wrongly_forgotten: list[str] = field(default_factory=list)
    missing_tags: list[str] = field(default_factory=list)
    wrong_reports: list[str] = field(default_factory=list)
    orphan_shards: list[str] = field(default_factory=list)
    incomplete_uploads: list[str] = field(default_factory=list)
    landed_after_error: int = 0
    visible_snapshots: int = 0
    final_gc_passes: int = 0
    final_gc: Counter[str] = field(default_factory=Counter)  # what the gc after grace removed
    duration_s: float = 0.0

    @property
    def failed(self) -> Counter[str]:
        return Counter(f.kind for f in self.failures)

    def goal_failures(self) -> list[str]:
        """Every goal figure the run missed, in words; empty when all were met."""
        out = [f"{n} of {self.attempted[k]} {k} operations failed" for k, n in sorted(self.failed.items())]
        out += [f"{n} {name}" for name, n in self.findings().items() if n]
        return out

    def describe(self, limit: int = 10) -> str:
        """The table, then the first ``limit`` failures and findings with their tracebacks."""
        out = [self.table()]
        for failure in self.failures[:limit]:
            out.append(f"--- op {failure.op} {failure.kind}: {failure.detail}\n{failure.trace}")
        for name in ("wrong_data", "lost_commits", "duplicate_commits", "wrongly_forgotten", "missing_tags",
                     "wrong_reports", "orphan_shards", "incomplete_uploads"):
            for line in getattr(self, name)[:limit]:
                out.append(f"--- {name.replace('_', ' ')}: {line}")
        return "\n".join(out)

    def findings(self) -> dict[str, int]:
        return {
            "wrong data": len(self.wrong_data),
            "lost commits": len(self.lost_commits),
            "duplicate commits": len(self.duplicate_commits),
            "wrongly forgotten": len(self.wrongly_forgotten),
            "missing or moved tags": len(self.missing_tags),
            "forget reports that miscount": len(self.wrong_reports),
            "orphan shards after final gc": len(self.orphan_shards),
            "incomplete uploads after final gc": len(self.incomplete_uploads),
        }

    def table(self) -> str:
        """The per-operation table, the injected faults per kind, and the findings, as Markdown."""
        lines = ["| operation | attempted | completed | failed | seconds |", "|---|---:|---:|---:|---:|"]
        for kind in OPS:
            lines.append(
                f"| {kind} | {self.attempted[kind]} | {self.completed[kind]} | {self.failed[kind]} "
                f"| {self.seconds[kind]:.1f} |"
            )
        lines.append(
            f"| **all** | {sum(self.attempted.values())} | {sum(self.completed.values())} "
            f"| {len(self.failures)} | {sum(self.seconds.values()):.1f} |"
        )
        per_kind: Counter[str] = Counter()
        for (_, kind), n in self.injected.items():
            per_kind[kind] += n
        lines += ["", "| fault | injected |", "|---|---:|"]
        lines += [f"| {kind} | {per_kind[kind]} |" for kind in KINDS]
        lines.append(f"| **all** (of {sum(self.requests.values())} requests) | {sum(per_kind.values())} |")
        per_class: Counter[str] = Counter()
        for (klass, _), n in self.injected.items():
            per_class[klass] += n
        lines += ["", "| request class | requests | faulted |", "|---|---:|---:|"]
        lines += [f"| {k} | {n} | {per_class[k]} |" for k, n in sorted(self.requests.items())]
        lines += ["", "| check | count |", "|---|---:|"]
        lines += [f"| {name} | {n} |" for name, n in self.findings().items()]
        lines.append(f"| snapshots visible at the end | {self.visible_snapshots} |")
        lines.append(f"| commits that landed although the save raised | {self.landed_after_error} |")
        lines.append(f"| final gc passes (until one deletes nothing) | {self.final_gc_passes} |")
        for what, n in sorted(self.final_gc.items()):
            lines.append(f"| final gc: {what} | {n} |")
        return "\n".join(lines)


def combine(results: list[WorkloadResult]) -> WorkloadResult:
    """One result summing several runs (the counts add up; the findings are concatenated)."""
    total = WorkloadResult(results[0].config)
    for r in results:
        for name in ("attempted", "completed", "seconds", "injected", "requests"):
            getattr(total, name).update(getattr(r, name))
        for name in ("failures", "wrong_data", "lost_commits", "duplicate_commits", "wrongly_forgotten",
                     "missing_tags", "wrong_reports", "orphan_shards", "incomplete_uploads"):
            getattr(total, name).extend(getattr(r, name))
        total.final_gc.update(r.final_gc)
        total.landed_after_error += r.landed_after_error
        total.visible_snapshots += r.visible_snapshots
        total.final_gc_passes = max(total.final_gc_passes, r.final_gc_passes)
        total.duration_s += r.duration_s
    return total
