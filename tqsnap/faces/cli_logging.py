"""Logging for the ``tqsnap`` command: tqsnap's own debug at ``-v``/``-vv``, never a secret.

``-v`` shows tqsnap's INFO records and ``-vv`` its DEBUG records. Other libraries stay at
WARNING, and botocore, boto3, s3transfer and urllib3 are pinned there: their DEBUG output
includes request signing (the canonical request, the ``Authorization`` header with the
access key id) and sometimes credentials. As a second line of defence every record that
reaches the command's handler passes :class:`RedactSecrets`, which blanks AWS access key ids,
secret keys, session tokens, ``Authorization`` values and presigned-URL signatures, and the
values of the AWS credential variables in this process's environment. Messages are then
escaped for the terminal, since they often echo names read from the repository.
"""

from __future__ import annotations

import logging
import os
import re
import sys

from .cli_common import terminal_safe

#: Loggers whose DEBUG output signs requests or prints credentials.
QUIET_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3", "aiobotocore", "s3fs", "fsspec")

#: Environment variables whose values are credentials.
SECRET_ENV_VARS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "OBS_ACCESS_KEY_ID",
    "OBS_SECRET_ACCESS_KEY",
)

REDACTED = "<redacted>"

_PATTERNS = [
    # AWS access key ids: AKIA (long-term), ASIA (temporary) and the other documented prefixes.
    re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA|ABIA|ACCA|A3T[A-Z0-9])[A-Z0-9]{16}\b"),
    # Header or field values: "Authorization: AWS4-HMAC-SHA256 Credential=...", {'Authorization': b'...'}
    re.compile(
        r"(?i)((?:authorization|x-amz-security-token|x-amz-credential|x-amz-signature|signature"
        r"|credential|aws_secret_access_key|secret_access_key|aws_session_token|session_token"
        r"|secretaccesskey|sessiontoken|secret_key|secret)['\"]?\s*[:=]\s*b?['\"]?)([^'\"&,;}\s]+(?: [^'\"&,;}\s]+)*)"
    ),
]


def redact(text: str) -> str:
    """``text`` with every credential-looking value replaced by ``<redacted>``."""
    for value in _secret_values():
        text = text.replace(value, REDACTED)
    text = _PATTERNS[0].sub(REDACTED, text)
    return _PATTERNS[1].sub(lambda m: m.group(1) + REDACTED, text)


def _secret_values() -> list[str]:
    # Short values would blank ordinary words; real keys are 16+ characters.
    values = {os.environ.get(name, "") for name in SECRET_ENV_VARS}
    return sorted((v for v in values if len(v) >= 4), key=len, reverse=True)


class RedactSecrets(logging.Filter):
    """Rewrites a record's message (and any traceback text) with :func:`redact` applied."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record must not break logging
            message = str(record.msg)
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


class TerminalFormatter(logging.Formatter):
    """Formats as usual, then redacts and escapes control characters (newlines kept)."""

    def format(self, record: logging.LogRecord) -> str:
        return terminal_safe(redact(super().format(record)), keep_newlines=True)


def configure_logging(verbosity: int) -> logging.Handler:
    """Send log records to stderr: WARNING and up, tqsnap's INFO at -v and DEBUG at -vv.

    Safe to call again (tests run the command in-process): the previous handler it installed
    is replaced, not duplicated.
    """
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_tqsnap_cli", False)]:
        root.removeHandler(old)
    handler = logging.StreamHandler(sys.stderr)
    handler._tqsnap_cli = True  # type: ignore[attr-defined]
    handler.setFormatter(TerminalFormatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactSecrets())
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.WARNING:
        root.setLevel(logging.WARNING)
    logging.getLogger("tqsnap").setLevel(logging.WARNING - 10 * max(0, min(verbosity, 2)))
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    return handler
