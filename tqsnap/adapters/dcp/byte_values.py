"""DCP's non-tensor values (``BYTE_IO``), decoded by an unpickler that cannot run code.

DCP's ``DefaultSavePlanner`` stores each non-tensor value (``"epoch": 3``, a list of ints, a
dict of tensors) with ``torch.save``, and ``DefaultLoadPlanner.load_bytes`` reads it back with
``torch.load(weights_only=False)``: the full pickle machinery, so bytes in a shared bucket
could run any code in the loading process. ``tqsnap.dcp.Reader`` therefore never hands the
planner stored bytes (unless the caller passed ``allow_pickle=True``). It decodes them itself
with torch's restricted unpickler, ``torch.load(weights_only=True)``, which builds only
tensors, plain containers and the few torch types it allows (plus whatever the process put on
``torch.serialization.add_safe_globals``), and refuses every other global. The decoded value
is then saved again with ``torch.save`` and that fresh stream is what the planner receives:
whatever the planner does with it, it unpickles only objects the restricted unpickler built.

Before ``torch.load`` sees the bytes, they must be a zip archive as ``torch.save`` writes it
(local file header first, entries stored uncompressed, their sizes within the item's size).
That refuses a plain pickle outright (the legacy format would send it through another
loader), and bounds what the archive can expand to.

The restricted unpickler of torch before 2.6 could be made to run code (CVE-2025-32434), so
with an older torch every stored non-tensor value is refused unless ``allow_pickle=True``.
This uses torch's own loader rather than a hand-written one so that every value DCP's planner
writes, tensors inside containers included, keeps loading.
"""

from __future__ import annotations

import io
import pickle
import re
import zipfile

import torch
from torch.torch_version import TorchVersion

from ...errors import FormatError, PickleNotAllowedError

#: The first torch whose ``weights_only`` unpickler is not known to run code.
SAFE_TORCH = (2, 6)
#: A zip's local file header; ``torch.load`` takes the zip path only when the bytes start so.
_ZIP_MAGIC = b"PK\x03\x04"
#: More entries than this is not a ``torch.save`` archive of one value DCP would write.
MAX_ENTRIES = 100_000

_OPT_IN = (
    "Pass tqsnap.dcp.Reader(..., allow_pickle=True) only if you trust everyone who can write this "
    "repository: DCP's planner then unpickles the stored bytes, which can run code"
)


def restricted_value_stream(data: memoryview | bytes, where: str) -> io.BytesIO:
    """A fresh ``torch.save`` stream of the value in ``data``, decoded without running code.

    ``where`` names the item and snapshot in errors. Raises
    :class:`~tqsnap.errors.PickleNotAllowedError` when only a full unpickler could decode
    ``data``, and :class:`~tqsnap.errors.FormatError` when it is no ``torch.save`` archive.
    """
    if not restricted_unpickler_is_safe():
        raise PickleNotAllowedError(
            f"{where} is a non-tensor value stored with torch.save, and the restricted unpickler of torch "
            f"{torch.__version__} is not safe (torch 2.6 fixed it). Upgrade torch, or: {_OPT_IN}"
        )
    raw = bytes(data)
    check_archive(raw, where)
    try:
        value = torch.load(io.BytesIO(raw), map_location=None, weights_only=True, mmap=False)
    except pickle.UnpicklingError as exc:
        raise PickleNotAllowedError(
            f"{where} holds objects that torch's restricted unpickler refuses ({_reason(exc)}). {_OPT_IN}"
        ) from None
    except Exception as exc:  # noqa: BLE001 - any other failure to decode is a damaged value
        raise FormatError(
            f"{where} is not a loadable torch.save archive ({type(exc).__name__}: {_printable(str(exc))})"
        ) from None
    out = io.BytesIO()
    torch.save(value, out)
    out.seek(0)
    return out


def _reason(exc: pickle.UnpicklingError) -> str:
    """The one line of torch's long refusal that says what was refused (a global's name)."""
    match = re.search(r"WeightsUnpickler error: ([^\n]*?)(?:\. Please|\n|$)", str(exc))
    return _printable(match.group(1) if match else str(exc))


def _printable(text: str, limit: int = 200) -> str:
    """``text`` with anything but printable ASCII escaped: names in it come from the snapshot."""
    return text.encode("unicode_escape").decode("ascii")[:limit]


def restricted_unpickler_is_safe() -> bool:
    """Is this torch's ``weights_only`` unpickler one that cannot be made to run code?"""
    return TorchVersion(torch.__version__) >= SAFE_TORCH


def check_archive(raw: bytes, where: str) -> None:
    """``raw`` is a zip archive of stored entries whose sizes fit inside it, or a typed error.

    :mod:`zipfile` reads the central directory; torch's reader would find the same one (both
    search from the end), and an entry that is compressed or declares more bytes than the
    archive holds could otherwise make it allocate far beyond the item's size.
    """
    if not raw.startswith(_ZIP_MAGIC):
        raise PickleNotAllowedError(
            f"{where} is not a torch.save archive (a plain pickle or another format); only a full "
            f"unpickler could read it. {_OPT_IN}"
        )
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError) as exc:
        raise FormatError(f"{where} is not a readable torch.save archive ({exc})") from None
    if len(entries) > MAX_ENTRIES:
        raise FormatError(f"{where} is a zip of {len(entries)} entries, not a torch.save archive")
    total = 0
    for entry in entries:
        if entry.compress_type != zipfile.ZIP_STORED or entry.file_size != entry.compress_size:
            raise FormatError(
                f"{where}: archive entry {entry.filename!r:.100} is compressed; torch.save stores entries "
                "uncompressed, so this archive was crafted"
            )
        total += entry.file_size
    if total > len(raw):
        raise FormatError(f"{where}: archive entries declare {total} bytes in a {len(raw)}-byte item")
