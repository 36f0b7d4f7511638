"""``tqsnap stats --stream S``: one stream's figures, named as engine/usage.py defines them."""

from __future__ import annotations

import argparse

from ..engine.usage import stream_usage
from .cli_common import EXIT_OK, emit, fmt_bytes, open_repository, terminal_safe


def cmd_stream_stats(args: argparse.Namespace) -> int:
    repo = open_repository(args)
    usage = stream_usage(repo, args.stream)
    doc = {"url": repo.url} | usage.to_json()
    emit(
        args,
        doc,
        lambda: "\n".join(
            f"{k}: {fmt_bytes(v) if k.endswith('bytes') else terminal_safe(v)}" for k, v in doc.items()
        ),
    )
    return EXIT_OK
