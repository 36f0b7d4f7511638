"""The local store closes every descriptor it opens, on the paths that find nothing too.

A long-lived process (a Snapshotter, a gc over a big repository) asks for many keys that do not
exist: a descriptor kept per miss would end in "too many open files", or past 1024 in a
``select()`` failure somewhere else in the process.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tqsnap.errors import ObjectNotFoundError
from tqsnap.store import open_store


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd to count descriptors")
def test_misses_and_reads_leave_no_descriptor_open(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "repo"), create=True)
    store.put("shards/ab/present", b"x" * 10)
    store.put("plain", b"a file where a directory is asked for")
    before = _open_descriptors()
    for i in range(200):
        assert store.head(f"shards/ab/missing{i}") is None  # the directory exists, the file not
        assert store.head(f"shards/{i:03d}/missing") is None  # a missing directory
        assert store.head("plain/below") is None  # a regular file where a directory would be
        with pytest.raises(ObjectNotFoundError):
            store.get(f"manifests/none/{i}")
        assert store.get("shards/ab/present") == b"x" * 10
        assert list(store.list(f"nothing{i}/")) == []
    assert _open_descriptors() == before
