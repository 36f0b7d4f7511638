"""Format versioning rules shared by every JSON object tqsnap writes.

``format_version`` is ``"MAJOR.MINOR"``. A reader MUST refuse a major version it does not know
(the layout or meaning changed); it MUST accept a newer minor version and ignore fields it does
not know (additions only).
"""

from __future__ import annotations

from typing import Any

from ..errors import ManifestError, UnsupportedFormatError

FORMAT_MAJOR = 1
FORMAT_MINOR = 0
FORMAT_VERSION = f"{FORMAT_MAJOR}.{FORMAT_MINOR}"


def check_version(doc: dict[str, Any], key: str) -> None:
    """Raise unless ``doc['format_version']`` has a major version this reader understands."""
    version = doc.get("format_version")
    if not isinstance(version, str):
        raise ManifestError(f"{key}: missing or non-string 'format_version'")
    major_text, _, minor_text = version.partition(".")
    if not major_text.isdigit() or (minor_text and not minor_text.isdigit()):
        raise ManifestError(f"{key}: malformed format_version {version!r}")
    if int(major_text) != FORMAT_MAJOR:
        raise UnsupportedFormatError(
            f"{key} has format_version {version}, but this tqsnap reads major version "
            f"{FORMAT_MAJOR} only; upgrade tqsnap to read it"
        )
