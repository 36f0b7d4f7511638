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
#: 2.0: a manifest whose body shard is columnar (``body_format``: ``columnar/1``). Only such a
#: manifest is written as 2.0; every other object keeps 1.2. A major version, because a 1.x
#: reader must refuse it as newer (``UnsupportedFormatError``) rather than fail on its body
#: as if it were a damaged JSON body.
COLUMNAR_FORMAT_VERSION = "2.0"
#: The major versions a manifest may carry; other objects are major 1 only.
MANIFEST_MAJORS = (1, 2)

#: ``MAJOR[.MINOR]`` in ASCII digits only (``str.isdigit`` would take '¹' and then ``int`` fail).
_VERSION_RE = re.compile(r"([0-9]{1,9})(?:\.([0-9]{1,9}))?", re.ASCII)


def check_version(doc: dict[str, Any], key: str, majors: tuple[int, ...] = (FORMAT_MAJOR,)) -> int:
    """The major version of ``doc['format_version']``; raise unless it is one of ``majors``."""
    if not isinstance(doc, dict):
        raise ManifestError(f"{key} is not a JSON object")
    version = doc.get("format_version")
    if not isinstance(version, str):
        raise ManifestError(f"{key}: missing or non-string 'format_version'")
    m = _VERSION_RE.fullmatch(version)
    if m is None:
        raise ManifestError(f"{key}: malformed format_version {version[:40]!r}; expected MAJOR.MINOR")
    major = int(m.group(1))
    if major not in majors:
        raise UnsupportedFormatError(
            f"{key} has format_version {version}, but this tqsnap reads major version "
            f"{' or '.join(map(str, majors))} only for this object; upgrade tqsnap to read it"
        )
    return major
