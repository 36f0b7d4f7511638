"""The process the SIGKILL harness (tests/killharness.py) kills: one operation on a repository.

Usage: ``python kill_child.py SPEC_JSON``, where the spec names the operation (``save``,
``save_multipart``, ``forget``, ``gc``, ``copy``), the repository URL and store options, the
seed the saved content is derived from, and optionally a checkpoint. The child prints
``ready`` once its imports are done (the parent's kill delay starts then), and, with a
checkpoint, ``checkpoint <name>`` at that point of the operation, after which it waits to be
killed. It prints ``done <json>`` when the operation finished.

Checkpoints: ``upload`` (after the first shard PUT), ``commit`` (just before the manifest's
put-if-absent), ``committed`` (just after it), ``tombstone`` (after the first tombstone),
``delete`` (after gc's first delete request).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from killcontent import content  # noqa: E402

from tqsnap.engine import Repository, RetentionPolicy, SnapshotWriter  # noqa: E402
from tqsnap.engine.copy import copy_snapshot  # noqa: E402
from tqsnap.engine.gc import collect_garbage  # noqa: E402
from tqsnap.engine.retention import forget  # noqa: E402
from tqsnap.store import CountingStore, open_store  # noqa: E402
from tqsnap.store.base import Buffer  # noqa: E402

KIND = "kill-test"


class CheckpointStore(CountingStore):
    """Delegates every verb, and stops (waiting for the parent's SIGKILL) at one checkpoint."""

    def __init__(self, inner: Any, checkpoint: str | None) -> None:
        super().__init__(inner)
        self.checkpoint = checkpoint

    def _stop(self, name: str) -> None:
        if self.checkpoint == name:
            print(f"checkpoint {name}", flush=True)
            time.sleep(60)  # the parent kills the process here
            raise SystemExit(f"checkpoint {name} was not killed")

    def put(self, key: str, data: Buffer) -> None:
        super().put(key, data)
        if key.startswith("shards/"):
            self._stop("upload")

    def put_if_absent(self, key: str, data: Buffer) -> bool:
        if key.startswith("snapshots/"):
            self._stop("commit")
        created = super().put_if_absent(key, data)
        if key.startswith("snapshots/"):
            self._stop("committed")
        if key.startswith("tombstones/"):
            self._stop("tombstone")
        return created

    def delete_many(self, keys: Any) -> int:
        n = super().delete_many(keys)
        self._stop("delete")
        return n


def save(repo: Repository, cid: int, *, multipart: bool = False) -> Any:
    """Save ``content(cid)`` as the next snapshot of stream ``s``, its id in the metadata."""
    writer = SnapshotWriter.begin(repo, "s", KIND)
    packer = writer.packer()
    try:
        for path, data in sorted(content(cid, multipart=multipart).items()):
            packer.add(path, data)
        writer.add_result(packer.finish())
    except BaseException:
        packer.abort()
        raise
    return writer.commit(metadata={"content_id": cid})


def run(spec: dict[str, Any]) -> dict[str, Any]:
    store = CheckpointStore(open_store(spec["url"], **spec.get("options", {})), spec.get("checkpoint"))
    repo = Repository.open(store)
    op = spec["op"]
    print("ready", flush=True)
    if op in ("save", "save_multipart"):
        cid = spec["content_id"]
        info = save(repo, cid, multipart=op == "save_multipart")
        return {"seq": info.seq}
    if op == "forget":
        return {"tombstones": forget(repo, RetentionPolicy(keep_last=2)).tombstones_written}
    if op == "gc":
        report = collect_garbage(repo)
        return {"deleted": report.shards_deleted}
    if op == "copy":
        dst_store = CheckpointStore(open_store(spec["dst_url"], **spec.get("options", {})), spec.get("checkpoint"))
        dst = Repository.open(dst_store)
        if not repo.visible_seqs("s"):
            return {"copied": None}
        info = copy_snapshot(repo, dst, "s", "latest", dst_stream=f"c{spec['content_id']}")
        return {"copied": info.seq}
    raise SystemExit(f"unknown operation {op!r}")


if __name__ == "__main__":
    result = run(json.loads(sys.argv[1]))
    print("done " + json.dumps(result), flush=True)
