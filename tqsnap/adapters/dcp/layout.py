"""Names inside a ``dcp`` snapshot: the snapshot kind, item paths, and checkpoint ids.

Item paths are a pure function of DCP's :class:`~torch.distributed.checkpoint.metadata.MetadataIndex`
(the fully qualified name plus, for tensors, the chunk's offset in the global tensor), so the
same chunk of an unchanged tensor gets the same path, the same bytes and therefore the same
shard in the next save: it is reused without an upload.

A *checkpoint id* is the string DCP passes around as ``checkpoint_id``. For tqsnap it names a
stream, optionally in another repository, optionally at one snapshot::

    run-1                      stream run-1 of the writer's or reader's own repository
    run-1@latest  run-1@7      a snapshot of it: latest, a seq, or tag:<name>
    run-1@tag:best
    s3://bucket/prefix#run-1@7 the same, in the repository at that URL
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from ...format.keys import validate_name
from ...format.strict import ascii_digits

#: The manifest ``kind`` of every snapshot this adapter writes; the reader refuses others.
KIND = "dcp"
#: The key under the manifest's ``extra`` that holds DCP's metadata as JSON.
EXTRA_KEY = "dcp"

#: Matched whole (``fullmatch``): ``$`` would also accept a trailing newline.
_SNAPSHOT_RE = re.compile(r"latest|[0-9]{1,20}|tag:[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def tensor_item_path(fqn: str, offsets: Sequence[int] | None) -> str:
    """``t/<fqn>@<o0>,<o1>,...``: one chunk of a tensor, named by where it sits in the whole.

    The part after the last ``@`` holds only digits and commas, so the mapping is injective
    whatever characters the fqn contains.
    """
    return f"t/{fqn}@{','.join(str(int(o)) for o in offsets or ())}"


def bytes_item_path(fqn: str) -> str:
    """``b/<fqn>``: a non-tensor value, which DCP's planner has already serialised to bytes."""
    return f"b/{fqn}"


@dataclass(frozen=True)
class CheckpointRef:
    """A parsed checkpoint id: an optional repository URL, a stream, an optional snapshot."""

    url: str | None
    stream: str
    snapshot: str | None

    def __str__(self) -> str:
        text = self.stream if self.snapshot is None else f"{self.stream}@{self.snapshot}"
        return text if self.url is None else f"{self.url}#{text}"


def parse_checkpoint_id(checkpoint_id: str | os.PathLike[str]) -> CheckpointRef:
    """Parse ``[URL#]STREAM[@SNAPSHOT]``; raise ``ValueError`` naming what is wrong.

    A :class:`os.PathLike` is refused: a filesystem path means DCP's own FileSystemWriter,
    and accepting one here would let automatic storage selection pick the wrong backend.
    """
    if not isinstance(checkpoint_id, str):
        raise ValueError(
            f"a tqsnap checkpoint id is a string like 'run-1@latest' or 's3://bucket/prefix#run-1', "
            f"not {type(checkpoint_id).__name__}"
        )
    url: str | None = None
    rest = checkpoint_id
    if "#" in checkpoint_id:
        url, _, rest = checkpoint_id.rpartition("#")
        if not url:
            raise ValueError(f"checkpoint id {checkpoint_id!r} has an empty repository URL before '#'")
    stream, sep, snapshot = rest.partition("@")
    validate_name(stream)
    if sep and not _SNAPSHOT_RE.fullmatch(snapshot):
        raise ValueError(
            f"checkpoint id {checkpoint_id!r}: snapshot {snapshot!r} is not 'latest', a seq or 'tag:<name>'"
        )
    return CheckpointRef(url, stream, snapshot if sep else None)


def is_checkpoint_id(checkpoint_id: object) -> bool:
    """True when ``checkpoint_id`` parses as ``[URL#]STREAM[@SNAPSHOT]``."""
    try:
        parse_checkpoint_id(checkpoint_id)  # type: ignore[arg-type]
    except (ValueError, TypeError):
        return False
    return True


def snapshot_arg(snapshot: str | int) -> str | int:
    """Normalise a snapshot selector: ASCII digits become an int seq, anything else stays as is.

    (``str.isdigit`` would also take '²' or '٩', which ``int`` then refuses or reads as a number.)
    """
    if isinstance(snapshot, str) and ascii_digits(snapshot):
        return int(snapshot)
    return snapshot
