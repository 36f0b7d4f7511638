"""A job driver for tests/test_job_kill.py: stages parts, says where it is, and waits to be killed.

``python job_kill_child.py URL STREAM STOP``: begins a job of STREAM, stages part ``loop``,
then part ``opt``, then commits. At STOP (``between``: after ``loop``; ``before_commit``: after
both; ``async``: after both were staged in the background by ``add_async``) it prints
``STAGED <parts>`` and sleeps until the test SIGKILLs it.
"""

from __future__ import annotations

import sys
import time

import torch

import tqsnap.job


def state(stream: str, part: str) -> dict[str, object]:
    """Content no other job holds, so its shards are this job's alone."""
    g = torch.Generator().manual_seed(hash((stream, part, time.time_ns())) % 2**31)
    return {"w": torch.randn(200_000, generator=g), "part": part}


def main(url: str, stream: str, stop: str) -> None:
    job = tqsnap.job.begin(url, stream=stream)
    if stop == "async":  # both parts staged in the background, the commit not yet begun
        job.add_async("loop", state(stream, "loop"))
        job.add_async("opt", state(stream, "opt"))
        job.wait_parts()
        print("STAGED loop,opt", flush=True)
        time.sleep(120)
    job.add("loop", state(stream, "loop"))
    if stop == "between":
        print("STAGED loop", flush=True)
        time.sleep(120)
    job.add("opt", state(stream, "opt"))
    if stop == "before_commit":
        print("STAGED loop,opt", flush=True)
        time.sleep(120)
    info = job.commit()
    print(f"COMMITTED {info.seq}", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
