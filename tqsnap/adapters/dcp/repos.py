"""Open repositories once per process, the way fsspec caches its filesystem instances.

DCP code usually builds a new storage writer or reader for every ``dcp.save`` / ``dcp.load``
call. Opening an S3 repository builds a boto3 client (about half a second of CPU) and reads
``tqsnap.json``; both are the same for every call, and a repository's config never changes
after it is created. So repositories opened from a URL are shared within a process, keyed by
the URL, the store options and the process id (connections must not cross a fork).
"""

from __future__ import annotations

import os
import threading
from typing import Any

from ...engine import Repository
from ...store import ObjectStore

RepoLike = str | ObjectStore | Repository

_cache: dict[tuple[int, str, str], Repository] = {}
_lock = threading.Lock()


def open_repository(url: RepoLike, storage_options: dict[str, Any], *, create: bool) -> Repository:
    """The repository at ``url``; URLs are opened once per process and options."""
    if isinstance(url, Repository):
        return url
    if not isinstance(url, str):
        return Repository.open(url, create=create, storage_options=storage_options)
    key = (os.getpid(), url, repr(sorted(storage_options.items())))
    with _lock:
        repo = _cache.get(key)
    if repo is None:
        repo = Repository.open(url, create=create, storage_options=storage_options)
        with _lock:
            repo = _cache.setdefault(key, repo)
    return repo


def repo_url(repo: RepoLike) -> str:
    """The URL a repository argument stands for, for checkpoint ids and logs."""
    return repo if isinstance(repo, str) else repo.url
