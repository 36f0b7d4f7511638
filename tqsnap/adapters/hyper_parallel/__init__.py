"""hyper_parallel's distributed checkpoint storage on tqsnap: incremental, deduplicated, atomic."""

from .layout import KIND, CheckpointRef, checkpoint_id_text
from .metadata_json import KNOWN_VERSIONS
from .reader import Reader
from .types import HYPER_PARALLEL_AVAILABLE
from .writer import Writer

__all__ = [
    "HYPER_PARALLEL_AVAILABLE",
    "KIND",
    "KNOWN_VERSIONS",
    "CheckpointRef",
    "Reader",
    "Writer",
    "checkpoint_id_text",
]
