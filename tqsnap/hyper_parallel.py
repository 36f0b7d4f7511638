"""``tqsnap.hyper_parallel``: hyper_parallel storage that saves each checkpoint as one tqsnap snapshot.

Save::

    from hyper_parallel.core.distributed_checkpoint import api
    import tqsnap.hyper_parallel

    api.save(state_dict, storage_writer=tqsnap.hyper_parallel.Writer("s3://bucket/ckpt", stream="run-1"))

Load (on any number of ranks)::

    api.load(state_dict, storage_reader=tqsnap.hyper_parallel.Reader("s3://bucket/ckpt", stream="run-1"))

Importing this module works without hyper_parallel installed (see docs/hyper_parallel.md).
"""

from .adapters.hyper_parallel import (
    HYPER_PARALLEL_AVAILABLE,
    KIND,
    KNOWN_VERSIONS,
    CheckpointRef,
    Reader,
    Writer,
    checkpoint_id_text,
)

__all__ = [
    "HYPER_PARALLEL_AVAILABLE",
    "KIND",
    "KNOWN_VERSIONS",
    "CheckpointRef",
    "Reader",
    "Writer",
    "checkpoint_id_text",
]
