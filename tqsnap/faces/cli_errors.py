"""How the ``tqsnap`` command ends: one clean line and a documented exit code, never a traceback.

A traceback is for the people who fix tqsnap, not for the operator of a cron job: it hides
the one line that says what to do, and it can carry terminal escapes from a crafted
repository. So every exception a subcommand raises is mapped here to an exit code (README.md)
and a one-line message naming the object; the traceback is logged at DEBUG, which ``-vv``
shows (escaped and redacted like every log record).
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
import threading
from collections.abc import Callable

from .. import errors
from .cli_common import (
    EXIT_BROKEN_PIPE,
    EXIT_CONFLICT,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_NOT_FOUND,
    EXIT_PROBLEM,
    EXIT_STORE,
    EXIT_USAGE,
    cli_words,
    terminal_safe,
)

log = logging.getLogger("tqsnap.cli")

#: First match wins: subclasses before their bases.
EXIT_BY_ERROR: list[tuple[type[BaseException], int]] = [
    (errors.RepositoryNotFoundError, EXIT_NOT_FOUND),
    (errors.SnapshotNotFoundError, EXIT_NOT_FOUND),
    (errors.BucketNotFoundError, EXIT_NOT_FOUND),
    (errors.ObjectNotFoundError, EXIT_NOT_FOUND),
    (errors.CommitConflictError, EXIT_CONFLICT),
    (errors.WriteDeadlineExceededError, EXIT_CONFLICT),
    (errors.StoreError, EXIT_STORE),
    (errors.FormatError, EXIT_PROBLEM),
    (errors.TqsnapError, EXIT_USAGE),
    # Untyped errors that reach the command anyway. A deeply nested or numerically absurd
    # value read from a repository is damaged data, like a FormatError.
    (RecursionError, EXIT_PROBLEM),
    (OverflowError, EXIT_PROBLEM),
    (MemoryError, EXIT_PROBLEM),
    (ValueError, EXIT_USAGE),
    (FileExistsError, EXIT_USAGE),
    (FileNotFoundError, EXIT_NOT_FOUND),
    (OSError, EXIT_STORE),
]


def exit_code_for(exc: BaseException) -> int:
    """The documented exit code for ``exc``; :data:`EXIT_INTERNAL` for anything unforeseen."""
    for cls, code in EXIT_BY_ERROR:
        if isinstance(exc, cls):
            return code
    return EXIT_INTERNAL


def describe(exc: BaseException, where: str = "") -> str:
    """One line for stderr: what failed and, where Python's message lacks it, on what.

    tqsnap's own errors name their object. Python's do not always ("embedded null byte"),
    so those are prefixed with ``where``: the subcommand and the repository it ran on.
    """
    if isinstance(exc, errors.TqsnapError):
        text = str(exc)
    elif isinstance(exc, RecursionError):
        text = "data nested too deeply to process: the repository holds a damaged or crafted object"
    elif isinstance(exc, MemoryError):
        text = "out of memory: the repository declares sizes larger than this machine can hold"
    elif isinstance(exc, OSError):
        what = exc.strerror or (os.strerror(exc.errno) if exc.errno else "") or str(exc)
        names = [n for n in (exc.filename, exc.filename2) if n is not None]
        text = f"{what}: {' -> '.join(map(repr, names))}" if names else what
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            text += " (check the permissions of the repository, or whether its filesystem is read-only)"
        elif exc.errno == errno.ENOSPC:
            text += " (the disk is full; a re-run after freeing space is safe)"
    else:
        text = f"{type(exc).__name__}: {exc}"
    if where and not isinstance(exc, errors.TqsnapError):
        text = f"{where}: {text}"
    if exit_code_for(exc) == EXIT_INTERNAL:
        text = f"internal error: {text} (run with -vv for the traceback, and please report it)"
    return terminal_safe(" ".join(cli_words(text).split("\n")))


def _where(args: argparse.Namespace) -> str:
    parts = [getattr(args, "command", None), getattr(args, "url", None)]
    return " ".join(str(p) for p in parts if p)


def _thread_exception(hook_args: threading.ExceptHookArgs) -> None:
    """A worker thread that dies must not print a traceback either: log it, escaped."""
    if hook_args.exc_type is SystemExit or hook_args.exc_value is None:
        return
    name = hook_args.thread.name if hook_args.thread is not None else "a worker thread"
    exc_info = (hook_args.exc_type, hook_args.exc_value, hook_args.exc_traceback)
    log.debug("%s failed", name, exc_info=exc_info)
    log.error("%s failed: %s", name, describe(hook_args.exc_value))


def _silence_stdout() -> None:
    """After a broken pipe, point stdout at /dev/null so the interpreter's final flush is quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout is not a real file (in-process tests)
        pass


def _say(message: str) -> None:
    try:
        print(f"tqsnap: {message}", file=sys.stderr, flush=True)
    except (OSError, ValueError):  # stderr is gone too: the exit code is all that is left
        pass


def run_command(func: Callable[[argparse.Namespace], int | None], args: argparse.Namespace) -> int:
    """Run one subcommand; turn whatever it raises into a message and an exit code."""
    previous_hook, threading.excepthook = threading.excepthook, _thread_exception
    try:
        code = int(func(args) or 0)
        sys.stdout.flush()  # a broken pipe surfaces here rather than at interpreter exit
        return code
    except KeyboardInterrupt:
        _say("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `tqsnap snapshots URL | head`: the reader has all it wanted; say nothing more.
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except Exception as exc:  # noqa: BLE001 - the point of this function
        log.debug("%s failed", getattr(args, "command", "tqsnap"), exc_info=True)
        _say(f"error: {describe(exc, _where(args))}")
        return exit_code_for(exc)
    finally:
        threading.excepthook = previous_hook
