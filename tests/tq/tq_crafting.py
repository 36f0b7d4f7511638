"""Hostile TransferQueue snapshots, made from a real one, and a bounded-memory runner for them.

:func:`craft` copies a real snapshot into a new stream of the same repository through the
format's own writer, after an edit of its header (``extra``), of an item's manifest fields
(``meta``, ``dtype``, ``shape``), or of a JSON item's body. The result is a well-formed
repository (hashes, sizes and keys all correct) whose TransferQueue content lies: exactly
what a writer with access to a shared bucket could plant.

:func:`run_bounded` runs code in a child process whose address space is capped a little above
what it uses once imports are done, so an allocation sized by a hostile count fails there
with MemoryError (or is killed) instead of slowing down the machine, and the test sees it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqsnap.adapters.transferqueue import KIND
from tqsnap.engine import Repository, SnapshotWriter


@dataclass
class Draft:
    """A snapshot's content as editable data: header, and per item its bytes and manifest fields."""

    extra: dict[str, Any]
    items: dict[str, dict[str, Any]] = field(default_factory=dict)  # path -> data/kind/dtype/shape/meta

    def json(self, path: str) -> Any:
        return json.loads(bytes(self.items[path]["data"]))

    def set_json(self, path: str, doc: Any) -> None:
        self.items[path]["data"] = json.dumps(doc, separators=(",", ":")).encode()

    def first(self, prefix: str, enc: str | None = None) -> str:
        """The first item path under ``prefix`` (of block encoding ``enc`` if given)."""
        return next(
            p
            for p, it in sorted(self.items.items())
            if p.startswith(prefix) and (enc is None or it["meta"].get("enc") == enc)
        )


def craft(repo_url: str, source: str, stream: str, edit: Callable[[Draft], None]) -> str:
    """Write ``stream`` as a copy of ``source``'s latest snapshot with ``edit`` applied; return it."""
    repo = Repository.open(repo_url)
    reader = repo.reader(source, kind=KIND)
    values = reader.read_items()
    draft = Draft(json.loads(json.dumps(reader.manifest.extra)))
    for path, item in reader.items.items():
        draft.items[path] = {
            "data": bytes(values[path]),
            "kind": item.kind,
            "dtype": item.dtype,
            "shape": list(item.shape) if item.shape is not None else None,
            "meta": json.loads(json.dumps(item.meta)),
        }
    edit(draft)
    writer = SnapshotWriter.begin(repo, stream, KIND, parent=None)
    packer = writer.packer()
    for path, it in draft.items.items():
        packer.add(path, it["data"], kind=it["kind"], dtype=it["dtype"], shape=it["shape"], meta=it["meta"])
    writer.add_result(packer.finish())
    writer.commit(extra=draft.extra)
    return stream


#: Address space the child may take on top of what it holds after its imports.
HEADROOM = 768 << 20


def run_bounded(script: str, timeout: float = 240) -> dict[str, Any]:
    """Run ``script`` (which defines ``main() -> dict``) under a capped address space; its result.

    The cap is set after the imports (torch alone maps a few GiB of address space), at the
    child's current size plus :data:`HEADROOM`. The child prints ``main()``'s result as JSON;
    a child that dies (killed, MemoryError) fails the caller's assertions with its output.
    """
    prelude = textwrap.dedent(
        """
        import json, resource, sys, traceback
        import torch, numpy  # noqa: F401 - mapped before the cap is set
        import tqsnap.adapters.transferqueue.restore  # noqa: F401

        def _cap():
            with open("/proc/self/status") as f:
                vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
            resource.setrlimit(resource.RLIMIT_AS, (vm + HEADROOM, resource.RLIM_INFINITY))
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        """
    ).replace("HEADROOM", str(HEADROOM))
    tail = textwrap.dedent(
        """
        base = _cap()
        try:
            out = main()
        except BaseException as exc:  # reported to the parent as data
            out = {"crash": type(exc).__name__, "message": str(exc)[:500], "tb": traceback.format_exc()[-2000:]}
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print("RESULT " + json.dumps({**out, "base_maxrss_kib": base, "maxrss_kib": peak}))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(script) + tail],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=str(Path(__file__).parent),
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, f"child died (rc {proc.returncode}): {proc.stderr[-3000:]}"
    return json.loads(lines[-1][len("RESULT ") :])
