"""Format versioning rules shared by every JSON object tqsnap writes.

``format_version`` is ``"MAJOR.MINOR"``. A reader MUST refuse a major version it does not know
(the layout or meaning changed); it MUST accept a newer minor version and ignore fields it does
not know (additions only).
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import ManifestError, UnsupportedFormatError

FORMAT_MAJOR = 1
#: 1.2: portable typed JSON (state tree version 3, ``$int``, tagged whole-number floats, UTF-8
#: text without lone surrogates); docs/format.md, "Changes", lists every version.
FORMAT_MINOR = 2
FORMAT_VERSION = f"{FORMAT_MAJOR}.{FORMAT_MINOR}"

#: ``MAJOR[.MINOR]`` in ASCII digits only (``str.isdigit`` would take '¹' and then ``int`` fail).
_VERSION_RE = re.compile(r"([0-9]{1,9})(?:\.([0-9]{1,9}))?", re.ASCII)


def check_version(doc: dict[str, Any], key: str) -> None:
    """Raise unless ``doc['format_version']`` has a major version this reader understands."""
    if not isinstance(doc, dict):
        raise ManifestError(f"{key} is not a JSON object")
    version = doc.get("format_version")
    if not isinstance(version, str):
        raise ManifestError(f"{key}: missing or non-string 'format_version'")
    m = _VERSION_RE.fullmatch(version)
    if m is None:
        raise ManifestError(f"{key}: malformed format_version {version[:40]!r}; expected MAJOR.MINOR")
    if int(m.group(1)) != FORMAT_MAJOR:
        raise UnsupportedFormatError(
            f"{key} has format_version {version}, but this tqsnap reads major version "
            f"{FORMAT_MAJOR} only; upgrade tqsnap to read it"
        )
