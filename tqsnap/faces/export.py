"""Write a snapshot out as files that load without tqsnap: ``torch.save``, safetensors or a DCP directory.

This is the way out of tqsnap (``tqsnap restore URL SNAPSHOT --to ...``), so each target is
a format its own library reads on its own:

- ``FILE.pt`` / ``FILE.pth``: ``torch.save`` of the state, tensors and plain values only
  (numbers, strings, bytes, lists, tuples, dicts), so ``torch.load(path, weights_only=True)``
  reads it. A pickled item is refused, never written (loading it would run code).
- ``FILE.safetensors``: the tensors only, keyed by their dotted path (``model.layers.0.weight``);
  needs the ``safetensors`` package. Other values are listed as skipped.
- any other path: a DCP checkpoint directory written by DCP's own ``FileSystemWriter``, which
  ``torch.distributed.checkpoint.load`` (or ``dcp_to_torch_save``) reads.

Both ``state_dict`` and ``dcp`` snapshots go to any target. ``include`` takes glob patterns
(item paths for a state_dict snapshot, fully qualified names for a DCP one; a pattern naming a
parent takes everything below it) and fetches only the shards the chosen entries need.
A file is written to a temporary name beside it and renamed, so an interrupted restore
leaves no half-written file; an existing target is replaced only with ``force``.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..adapters.state_dict import KIND as STATE_DICT_KIND
from ..adapters.state_dict import load_state
from ..engine import Repository
from ..engine.job_read import job_parts
from ..errors import PickleNotAllowedError, RestoreError, SnapshotNotFoundError, TqsnapError
from ..format.job import JOB_KIND
from ..format.manifest import SnapshotId

TORCH_SUFFIXES = (".pt", ".pth")
SAFETENSORS_SUFFIX = ".safetensors"
_PLAIN = (type(None), bool, int, float, str, bytes, bytearray)


@dataclass
class ExportReport:
    """What a restore to files wrote."""

    snapshot: str
    kind: str
    target: str
    format: str
    tensors: int = 0
    values: int = 0
    bytes: int = 0
    skipped: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "snapshot": self.snapshot,
            "kind": self.kind,
            "target": self.target,
            "format": self.format,
            "tensors": self.tensors,
            "values": self.values,
            "tensor_bytes": self.bytes,
            "skipped": self.skipped,
        }


def target_format(target: Path) -> str:
    if target.suffix.lower() in TORCH_SUFFIXES:
        return "torch"
    if target.suffix.lower() == SAFETENSORS_SUFFIX:
        return "safetensors"
    return "dcp"


def export_snapshot(
    repo: Repository,
    stream: str,
    snapshot: str | int,
    target: str | os.PathLike[str],
    *,
    include: Sequence[str] | None = None,
    force: bool = False,
    part: str | None = None,
) -> ExportReport:
    """Write the snapshot to ``target`` in the format its suffix names (module docstring).

    ``part`` names the part of a job snapshot to write (a job's ``dcp`` or ``state_dict`` part).
    """
    path = Path(target)
    fmt = target_format(path)
    if fmt == "safetensors":
        _require_safetensors()
    _check_target(path, fmt, force)
    sid = repo.resolve(stream, snapshot)
    kind = repo.load_manifest(sid.stream, sid.seq).kind
    if kind == JOB_KIND or part is not None:
        kind = _job_part_kind(repo, sid, part)
    if kind == STATE_DICT_KIND:
        state = _load_state_dict(repo, sid, include, part)
    elif kind == "dcp":
        state = _load_dcp(repo, sid, include, part)
    else:
        raise RestoreError(
            f"snapshot {sid} is a {kind!r} snapshot; only state_dict and dcp snapshots can be written to "
            "files (restore TransferQueue snapshots with `tqsnap tq-restore`)"
        )
    report = ExportReport(str(sid), kind, str(path), fmt)
    _count(state, report, [])
    if fmt == "torch":
        _write_torch(state, path)
    elif fmt == "safetensors":
        _write_safetensors(state, path, report)
    else:
        _write_dcp(state, path)
    return report


# --- reading -------------------------------------------------------------------------------------


def _job_part_kind(repo: Repository, sid: SnapshotId, part: str | None) -> str:
    """The kind of the job part to write; a job with several parts needs ``part`` named."""
    kinds = job_parts(repo, sid.stream, sid.seq)  # a single-kind snapshot with a part raises here
    if part is None:
        listing = ", ".join(f"{n} ({k})" for n, k in kinds.items())
        raise RestoreError(f"snapshot {sid} is a job snapshot with parts {listing}; pass --part NAME to write one")
    if part not in kinds:
        raise SnapshotNotFoundError(f"job snapshot {sid} has no part {part!r}; its parts are {', '.join(kinds)}")
    return kinds[part]


def _load_state_dict(repo: Repository, sid: SnapshotId, include: Sequence[str] | None, part: str | None = None) -> Any:
    try:
        return load_state(repo, stream=sid.stream, snapshot=sid.seq, include=include, part=part)
    except PickleNotAllowedError as exc:
        raise RestoreError(
            f"{exc}. A file written by restore must load without running code: leave the pickled "
            "items out with --include"
        ) from None


def _load_dcp(
    repo: Repository, sid: SnapshotId, include: Sequence[str] | None, part: str | None = None
) -> dict[str, Any]:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner

    from ..adapters.dcp import Reader

    reader = Reader(repo, sid.stream, sid.seq, part=part)
    keys = None
    if include is not None:
        fqns = list(reader.read_metadata().state_dict_metadata)
        keys = {f for f in fqns if _dotted_match(f, include)}
        if not keys:
            raise SnapshotNotFoundError(
                f"nothing in snapshot {sid} matches --include {', '.join(map(repr, include))}; "
                f"`tqsnap ls` lists its {len(fqns)} entries"
            )
        reader = Reader(repo, sid.stream, sid.seq, part=part)
    # DCP's planner for loading without a template (what torch's dcp_to_torch_save uses): it
    # builds the state dict from the checkpoint's metadata and keeps it as original_state_dict.
    planner = _EmptyStateDictLoadPlanner(keys=keys)
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.simplefilter("ignore", UserWarning)
        dcp.load({}, storage_reader=reader, planner=planner)
    return planner.original_state_dict


def _dotted_match(fqn: str, patterns: Sequence[str]) -> bool:
    parts = fqn.split(".")
    prefixes = [".".join(parts[:n]) for n in range(len(parts), 0, -1)]
    return any(fnmatch.fnmatchcase(p, pat) for p in prefixes for pat in patterns)


def _count(value: Any, report: ExportReport, parts: list[str]) -> None:
    import torch

    if isinstance(value, torch.Tensor):
        report.tensors += 1
        report.bytes += value.numel() * value.element_size()
    elif isinstance(value, dict):
        for k, v in value.items():
            _count(v, report, [*parts, str(k)])
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _count(v, report, [*parts, str(i)])
    elif isinstance(value, _PLAIN):
        report.values += 1
    else:  # DCP restores non-tensor values with its own loader: anything may come back
        raise RestoreError(
            f"the value at {'.'.join(parts) or '<root>'} is a {type(value).__name__}, which a file loadable "
            "with weights_only cannot hold; leave it out with --include"
        )


# --- writing -------------------------------------------------------------------------------------


def _check_target(path: Path, fmt: str, force: bool) -> None:
    if not path.parent.is_dir():
        raise FileNotFoundError(f"the directory of {str(path)!r} does not exist; create it first")
    if fmt == "dcp":
        if path.exists() and (not path.is_dir() or any(path.iterdir())) and not force:
            raise FileExistsError(
                f"{str(path)!r} exists and is not an empty directory; pass --force to replace it, or "
                "end the target with .pt or .safetensors to write a file"
            )
    elif path.exists() and not force:
        raise FileExistsError(f"{str(path)!r} exists; pass --force to replace it")


def _write_file(path: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_torch(state: Any, path: Path) -> None:
    import torch

    _write_file(path, lambda tmp: torch.save(state, tmp))


def _require_safetensors() -> None:
    try:
        import safetensors.torch  # noqa: F401
    except ImportError:
        raise TqsnapError(
            "writing .safetensors needs the safetensors package (pip install safetensors); "
            "or restore to a .pt file"
        ) from None


def _flatten_tensors(value: Any, parts: list[str], out: dict[str, Any], skipped: list[str]) -> None:
    import torch

    if isinstance(value, torch.Tensor):
        out[".".join(parts)] = value.detach().contiguous().clone()
    elif isinstance(value, dict):
        for k, v in value.items():
            _flatten_tensors(v, [*parts, str(k)], out, skipped)
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _flatten_tensors(v, [*parts, str(i)], out, skipped)
    else:
        skipped.append(".".join(parts) or "<root>")


def _write_safetensors(state: Any, path: Path, report: ExportReport) -> None:
    from safetensors.torch import save_file

    tensors: dict[str, Any] = {}
    _flatten_tensors(state, [], tensors, report.skipped)
    if not tensors:
        raise RestoreError(f"snapshot {report.snapshot} holds no tensors to write to {str(path)!r}")
    _write_file(path, lambda tmp: save_file(tensors, tmp, metadata={"tqsnap_snapshot": report.snapshot}))


def _write_dcp(state: Any, path: Path) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemWriter

    if not isinstance(state, dict):
        raise RestoreError(f"a DCP checkpoint holds a dict, and this snapshot's state is a {type(state).__name__}")
    if path.exists() and path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dcp.save(state, storage_writer=FileSystemWriter(str(path)))
