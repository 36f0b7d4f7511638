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

import re
from collections.abc import Iterable, Sequence
from typing import Any

from ...errors import FormatError

#: The version of the layout below, stored in ``manifest.extra["tq_layout"]``. Version 2 adds
#: ``meta.lens`` to jagged items of 1-d samples; this version reads both.
LAYOUT_VERSION = 2
#: Snapshot kind written to the manifest; restore refuses any other kind.
KIND = "transferqueue"
#: Global indexes per block. Small enough that a few changed samples re-upload little (an append
#: re-uploads at most the last, partly filled block), large enough that a block of small samples
#: is not dominated by per-item overhead.
DEFAULT_BLOCK_SIZE = 512

# Limits a restore checks before it allocates anything for what a snapshot declares. A run of
# indexes costs a few bytes of JSON however many indexes it stands for, so every count read
# from a snapshot is checked against these (and against what the snapshot really holds)
# before a list, set or tensor is made for it.
#: The most storage units a snapshot may name (``u<k>of<n>``).
MAX_UNITS = 1 << 16
#: The largest ``block_size``; a snapshot with a larger one is neither written nor read.
MAX_BLOCK_SIZE = 1 << 20
#: The largest ``global_index_counter``: every global index of a snapshot lies below it, and
#: every index set or map of the controller holds at most that many entries.
MAX_INDEXES = 1 << 26


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
    """The inverse of :func:`encode_runs`, for runs this process made or has checked.

    Runs read from a snapshot go through :func:`read_runs`, which bounds them first.
    """
    out: list[int] = []
    for run in runs:
        start, count = int(run[0]), int(run[1])
        step = int(run[2]) if len(run) > 2 else 1
        out.extend(range(start, start + count * step, step))
    return out


def _int(value: Any) -> bool:
    return type(value) is int


def count_runs(runs: Any, where: str, *, lo: int = 0, hi: int) -> int:
    """How many indexes ``runs`` stand for, without making them; every one must lie in ``[lo, hi)``.

    A run is ``[start, count]`` or ``[start, count, step]`` of exact integers, with
    ``count >= 1`` and ``step != 0``. Anything else, or an index outside the range, is a
    :class:`~tqsnap.errors.FormatError` naming ``where``.
    """
    if type(runs) is not list:
        raise FormatError(f"{where}: index runs must be a list, not {type(runs).__name__}")
    total = 0
    for run in runs:
        if type(run) is not list or len(run) not in (2, 3) or not all(_int(x) for x in run):
            raise FormatError(f"{where}: an index run must be [start, count] or [start, count, step], not {run!r:.60}")
        start, count = run[0], run[1]
        step = run[2] if len(run) == 3 else 1
        if count < 1 or step == 0:
            raise FormatError(f"{where}: index run {run!r:.60} has a count below 1 or a step of 0")
        last = start + (count - 1) * step
        if not (lo <= start < hi and lo <= last < hi):
            raise FormatError(f"{where}: index run {run!r:.60} leaves the range [{lo}, {hi})")
        total += count
    return total


def read_runs(runs: Any, where: str, *, lo: int = 0, hi: int, limit: int) -> list[int]:
    """:func:`decode_runs` of runs read from a snapshot: checked, and refused above ``limit`` indexes.

    The count is computed from the runs and compared with ``limit`` before any list is made.
    """
    total = count_runs(runs, where, lo=lo, hi=hi)
    if total > limit:
        raise FormatError(f"{where}: index runs stand for {total} indexes, more than the {limit} allowed here")
    return decode_runs(runs)


def unescape(part: str) -> str:
    return part.replace("~1", "/").replace("~0", "~")


_DATA_PATH_RE = re.compile(r"d/([^/]+)/([^/]+)/b([0-9]{1,12})/u([0-9]{1,6})of([0-9]{1,6})", re.ASCII)


def parse_data_path(path: str) -> tuple[str, str, int, int, int] | None:
    """``(partition, field, block, unit, units)`` of a ``d/`` item path, or None.

    The one parser of data item paths: digits are ASCII only (``str.isdigit`` also takes
    '²'), and ``unit < units <= MAX_UNITS``.
    """
    m = _DATA_PATH_RE.fullmatch(path)
    if m is None:
        return None
    block, unit, units = int(m[3]), int(m[4]), int(m[5])
    if not unit < units <= MAX_UNITS:
        return None
    return unescape(m[1]), unescape(m[2]), block, unit, units
