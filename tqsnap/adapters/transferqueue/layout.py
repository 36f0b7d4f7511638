"""Item names and small encodings shared by save and restore (docs/transferqueue.md, "Layout").

Item paths are deterministic so that an unchanged block of samples yields the same bytes,
the same shard hash, and no upload in the next snapshot:

- ``c/index_manager``, ``c/sampler``: JSON blobs of the controller's global state;
- ``c/p/<partition>/state``: one partition's metadata as a JSON blob;
- ``c/p/<partition>/production``: its int8 production status ``[rows, fields]``;
- ``c/p/<partition>/consumption/<task>``: one task's int8 consumption status ``[rows]``;
- ``d/<partition>/<field>/b<block>/u<k>of<n>``: the values of one field for the samples of one
  partition whose global index ``gi`` lies in block ``gi // block_size`` and which live on
  storage unit ``k`` of ``n`` (``gi % n == k``).

Each storage unit writes only the ``d/`` items of the samples it holds, so two units never
write the same path, and a unit whose data did not change yields the same items again.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

#: The version of the layout below, stored in ``manifest.extra["tq_layout"]``. Version 2 adds
#: ``meta.lens`` to jagged items of 1-d samples; this version reads both.
LAYOUT_VERSION = 2
#: Snapshot kind written to the manifest; restore refuses any other kind.
KIND = "transferqueue"
#: Global indexes per block. Small enough that a few changed samples re-upload little (an append
#: re-uploads at most the last, partly filled block), large enough that a block of small samples
#: is not dominated by per-item overhead.
DEFAULT_BLOCK_SIZE = 512


def escape(part: str) -> str:
    """Make an arbitrary partition, field or task name safe as one path segment."""
    return part.replace("~", "~0").replace("/", "~1")


def index_manager_path() -> str:
    return "c/index_manager"


def sampler_path() -> str:
    return "c/sampler"


def partition_state_path(pid: str) -> str:
    return f"c/p/{escape(pid)}/state"


def production_path(pid: str) -> str:
    return f"c/p/{escape(pid)}/production"


def consumption_path(pid: str, task: str) -> str:
    return f"c/p/{escape(pid)}/consumption/{escape(task)}"


def data_path(pid: str, field: str, block: int, unit: int, units: int) -> str:
    return f"d/{escape(pid)}/{escape(field)}/b{block:08d}/u{unit}of{units}"


def encode_runs(values: Iterable[int]) -> list[list[int]]:
    """Arithmetic runs, order kept: ``[3, 4, 5, 9]`` -> ``[[3, 3], [9, 1]]``, ``[1, 4, 7]`` -> ``[[1, 3, 3]]``.

    A run is ``[start, count]`` (step 1) or ``[start, count, step]``. Global index sets are
    mostly consecutive ranges, and the samples one unit holds are every n-th index, so both
    shrink to a few runs. Order matters for ``reusable_indexes`` (a FIFO), so callers sort
    sets themselves.

    Runs are cut greedily from the left: a run takes the step of its first two elements and
    extends while the step holds. Long inputs take a vectorised path that cuts the same runs.
    """
    if type(values).__module__ == "numpy" or (isinstance(values, list) and len(values) >= _VECTOR_MIN):
        return _encode_runs_np(values)
    vals = values if isinstance(values, list) else list(values)
    runs: list[list[int]] = []
    for v in vals:
        v = int(v)
        if runs:
            last = runs[-1]
            if last[1] == 1:
                if v != last[0]:  # a second element fixes the run's step (never 0)
                    last[1] = 2
                    if v - last[0] != 1:
                        last.append(v - last[0])
                    continue
            else:
                step = last[2] if len(last) > 2 else 1
                if v == last[0] + last[1] * step:
                    last[1] += 1
                    continue
        runs.append([v, 1])
    return runs


#: From this many values on, :func:`encode_runs` works on whole arrays.
_VECTOR_MIN = 64


def _encode_runs_np(values: Any) -> list[list[int]]:
    """:func:`encode_runs` with one Python step per run instead of one per value."""
    import numpy as np

    arr = np.asarray(values, dtype=np.int64)
    n = len(arr)
    if n < 2:
        return [[int(arr[0]), 1]] if n else []
    diff = np.diff(arr)
    if diff[0] != 0 and (diff == diff[0]).all():  # one arithmetic run: the common case
        step = int(diff[0])
        return [[int(arr[0]), n]] if step == 1 else [[int(arr[0]), n, step]]
    # stretch[i]: the end (exclusive, in diff positions) of the stretch of equal diffs holding i.
    ends = np.append(np.flatnonzero(diff[1:] != diff[:-1]) + 1, n - 1)
    stretch = np.repeat(ends, np.diff(ends, prepend=0)).tolist()
    starts = arr.tolist()
    steps = diff.tolist()
    runs: list[list[int]] = []
    i = 0
    while i < n:
        if i == n - 1 or steps[i] == 0:
            runs.append([starts[i], 1])
            i += 1
            continue
        length = stretch[i] - i  # how many diffs from i on equal steps[i]
        step = steps[i]
        runs.append([starts[i], length + 1] if step == 1 else [starts[i], length + 1, step])
        i += length + 1
    return runs


def decode_runs(runs: Sequence[Sequence[int]]) -> list[int]:
    """The inverse of :func:`encode_runs`."""
    out: list[int] = []
    for run in runs:
        start, count = int(run[0]), int(run[1])
        step = int(run[2]) if len(run) > 2 else 1
        out.extend(range(start, start + count * step, step))
    return out


def unescape(part: str) -> str:
    return part.replace("~1", "/").replace("~0", "~")


def parse_data_path(path: str) -> tuple[str, str, int, int, int] | None:
    """``(partition, field, block, unit, units)`` of a ``d/`` item path, or None."""
    parts = path.split("/")
    if len(parts) != 5 or parts[0] != "d" or not parts[3].startswith("b") or not parts[4].startswith("u"):
        return None
    unit, sep, units = parts[4][1:].partition("of")
    if not sep or not unit.isdigit() or not units.isdigit() or not parts[3][1:].isdigit():
        return None
    return unescape(parts[1]), unescape(parts[2]), int(parts[3][1:]), int(unit), int(units)
