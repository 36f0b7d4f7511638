"""Names inside a ``hyper_parallel`` snapshot, and checkpoint ids that went through ``Path``.

Item paths are the DCP adapter's (:mod:`tqsnap.adapters.dcp.layout`): ``t/<fqn>@<offsets>`` for
a tensor chunk, ``b/<fqn>`` for a non-tensor value, a pure function of hyper_parallel's
``MetadataIndex``; so is the checkpoint id syntax ``[URL#]STREAM[@SNAPSHOT]``. Only the kind and
the key under ``extra`` differ, so neither adapter's reader takes the other's snapshots.

hyper_parallel's ``save``/``load`` turn a string ``checkpoint_id`` into a :class:`pathlib.Path`
before handing it on, and ``Path`` folds the ``//`` of a URL: ``s3://bucket/p#run`` arrives as
``s3:/bucket/p#run``. :func:`checkpoint_id_text` undoes exactly that.
"""

from __future__ import annotations

import os
import re

from ..dcp.layout import CheckpointRef, bytes_item_path, parse_checkpoint_id, tensor_item_path

#: The manifest ``kind`` of every snapshot this adapter writes; its reader refuses others.
KIND = "hyper_parallel"
#: The key under the manifest's ``extra`` that holds hyper_parallel's metadata as JSON.
EXTRA_KEY = "hyper_parallel"

#: A URL scheme whose ``//`` a ``Path`` folded into one ``/``.
_FOLDED_URL = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*):/(?!/)")

__all__ = [
    "EXTRA_KEY",
    "KIND",
    "CheckpointRef",
    "bytes_item_path",
    "checkpoint_id_text",
    "dtype_key",
    "parse_hp_checkpoint_id",
    "tensor_item_path",
]


def dtype_key(name: object) -> str:
    """One spelling per element type: ``torch.bfloat16``, ``BFloat16`` and ``bfloat16`` all give
    ``bfloat16`` (hyper_parallel's dtype strings are its platform's, tqsnap's items torch's)."""
    return str(name).removeprefix("torch.").removeprefix("mindspore.").lower()


def checkpoint_id_text(checkpoint_id: str | os.PathLike[str]) -> str:
    """The checkpoint id as the user wrote it, also after hyper_parallel made it a ``Path``.

    ``file:///abs`` becomes ``file:/abs`` in a ``Path`` and comes back as ``file:///abs``;
    other schemes (``s3``, ``obs``, ``memory``) get their ``//`` back.
    """
    text = os.fspath(checkpoint_id)
    if not isinstance(text, str):
        raise ValueError(f"a tqsnap checkpoint id is text, not {type(text).__name__}")
    match = _FOLDED_URL.match(text)
    if match is None:
        return text
    scheme = match.group("scheme")
    rest = text[match.end() :]
    return f"{scheme}:///{rest}" if scheme.lower() == "file" else f"{scheme}://{rest}"


def parse_hp_checkpoint_id(checkpoint_id: str | os.PathLike[str]) -> CheckpointRef:
    """Parse ``[URL#]STREAM[@SNAPSHOT]`` given as text or as the ``Path`` hyper_parallel made of it."""
    return parse_checkpoint_id(checkpoint_id_text(checkpoint_id))
