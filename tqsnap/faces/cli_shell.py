"""The shell around the ``tqsnap`` subcommands: global options, profiles, completion, JSON errors.

Library choice: argparse with argcomplete. argparse is the standard library's parser, so the
command needs nothing new to run; every subcommand module keeps its ``register(sub)`` hook
that adds ordinary ``add_parser`` entries, so modules added side by side (``copy``, ``check``,
``tag``, ...) need no change to gain the global options below. argcomplete (a small, well
kept, pure-Python package) adds tab completion for bash, zsh and fish from that same parser,
so completion can never drift from the real options. click would have meant rewriting every
subcommand module at once for the same features.

Global options are accepted before or after the subcommand (``tqsnap --json snapshots URL``
and ``tqsnap snapshots URL --json`` are the same): they are added to every subparser with
``SUPPRESS`` defaults, so a value given after the subcommand wins and one given before is not
overwritten by a default.

Where the repository comes from, first match wins: the URL argument, ``--repo``,
``$TQSNAP_REPO``, then the profile's ``repo``. The profile is ``--repo-profile NAME``, else
``$TQSNAP_REPO_PROFILE``, else the config file's ``default_profile``; the file is
``--config PATH``, ``$TQSNAP_CONFIG`` or ``$XDG_CONFIG_HOME/tqsnap/config.toml``
(``~/.config/tqsnap/config.toml``). A profile holds ``repo``, ``endpoint_url`` and a
``storage_options`` table; flags on the command line win over it. (It is ``--repo-profile``,
not ``--profile``, because ``copy --profile`` already names an AWS profile.)
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from .. import errors
from .cli_common import (
    EXIT_OK,
    EXIT_USAGE,
    open_repository,
    split_snapshot,
    tqsnap_version,
    write_json_line,
)
from .cli_errors import describe, exit_code_for

log = logging.getLogger("tqsnap.cli")

SHELLS = ("bash", "zsh", "fish")

#: ``stream@seq`` / ``stream@latest`` / ``stream@tag:name``: a snapshot, not a repository URL.
_SNAPSHOT_REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}@(?:[0-9]{1,20}|latest|tag:[A-Za-z0-9._-]+)")


class ConfigError(errors.TqsnapError, ValueError):
    """The config file or a profile in it cannot be used."""


#: Set by cli.main before parsing: bad usage cannot wait for the parsed ``--json``.
JSON_REQUESTED = False
#: True during the trial parse of :func:`parse_args`: an error raises instead of printing.
_TRIAL = False
#: Why --repo-profile / the config file could not name a repository (said if the URL is missing).
_FALLBACK_PROBLEM = ""
#: The command line being run (to tell a default ``--stream`` from one given).
_ARGV: list[str] = []


class _TrialFailed(Exception):
    pass


class TqsnapArgumentParser(argparse.ArgumentParser):
    """argparse that, under ``--json``, reports bad usage as a JSON error object on stdout too."""

    def error(self, message: str) -> NoReturn:
        if _TRIAL:
            raise _TrialFailed(message)
        if "required: url" in message:
            message += "; " + (
                _FALLBACK_PROBLEM
                or "give the repository URL, --repo URL, set TQSNAP_REPO, or choose a profile of the "
                "config file with --repo-profile"
            )
        if JSON_REQUESTED:
            command = self.prog.split(" ", 1)[1] if " " in self.prog else "tqsnap"
            _json_error(command, "UsageError", message, EXIT_USAGE)
        super().error(message)


def _json_error(command: str, kind: str, message: str, code: int) -> None:
    try:
        write_json_line(command, {"error": {"type": kind, "message": message, "exit_code": code}})
        sys.stdout.flush()
    except (OSError, ValueError):
        pass


# --- global options -----------------------------------------------------------------------------


def _add_globals(p: argparse.ArgumentParser, *, top: bool) -> None:
    """The options every subcommand accepts; skipped where a subcommand defines the same flag."""

    def add(*flags: str, **kw: Any) -> None:
        if any(f in p._option_string_actions for f in flags):
            return
        if not top:
            kw["default"] = argparse.SUPPRESS
        p.add_argument(*flags, **kw)

    add("-v", "--verbose", action="count", dest="verbose" if top else "verbose_after",
        help="more logging on stderr (-vv: tqsnap's debug, never botocore's)")
    if top:
        p.set_defaults(verbose=0)
    add("-q", "--quiet", action="store_true", help="only errors on stderr")
    add("--json", action="store_true", help="print JSON Lines on stdout (docs/cli-json.md)")
    add("--repo", metavar="URL", help="repository URL (default: $TQSNAP_REPO or the profile's)")
    add("--repo-profile", metavar="NAME", help="profile of the config file (default: $TQSNAP_REPO_PROFILE)")
    add("--config", metavar="PATH", help="config file (default: $TQSNAP_CONFIG or ~/.config/tqsnap/config.toml)")


def add_global_options(parser: argparse.ArgumentParser, sub: argparse._SubParsersAction) -> None:
    """Make the global options valid before and after every registered subcommand."""
    _add_globals(parser, top=True)
    for subparser in dict.fromkeys(sub.choices.values()):
        _add_globals(subparser, top=False)


def verbosity(args: argparse.Namespace) -> int:
    """-1 with ``-q``; else the number of ``-v`` given before and after the subcommand."""
    if getattr(args, "quiet", False):
        return -1
    return int(getattr(args, "verbose", 0) or 0) + int(getattr(args, "verbose_after", 0) or 0)


# --- the config file -----------------------------------------------------------------------------


def config_path(args: argparse.Namespace) -> Path:
    explicit = getattr(args, "config", None) or os.environ.get("TQSNAP_CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "tqsnap" / "config.toml"


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        import tomllib  # Python 3.11+
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise ConfigError(f"reading {path} needs Python 3.11 or the tomli package") from None
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def load_profile(args: argparse.Namespace) -> dict[str, Any]:
    """The chosen profile's table, or ``{}`` when no profile is chosen and no file exists."""
    name = getattr(args, "repo_profile", None) or os.environ.get("TQSNAP_REPO_PROFILE")
    path = config_path(args)
    explicit_file = bool(getattr(args, "config", None) or os.environ.get("TQSNAP_CONFIG"))
    if not path.is_file():
        if name or explicit_file:
            raise ConfigError(
                f"config file {path} does not exist; create it with a [profiles.{name or 'NAME'}] table "
                "holding repo = \"URL\" (README.md, Configuration)"
            )
        return {}
    doc = _read_toml(path)
    profiles = doc.get("profiles", {})
    name = name or doc.get("default_profile")
    if not name:
        return {}
    if not isinstance(profiles, dict) or not isinstance(profiles.get(name), dict):
        known = ", ".join(sorted(profiles)) if isinstance(profiles, dict) else ""
        raise ConfigError(f"profile {name!r} is not in {path} (profiles there: {known or 'none'})")
    profile = profiles[name]
    options = profile.get("storage_options", {})
    if not isinstance(options, dict):
        raise ConfigError(f"profile {name!r} in {path}: storage_options must be a table")
    return profile


def _fallback_repo(argv: list[str]) -> str | None:
    """The repository named other than by the URL argument: --repo, $TQSNAP_REPO, the profile."""
    global _FALLBACK_PROBLEM
    pre = argparse.ArgumentParser(add_help=False)
    for flag in ("--repo", "--repo-profile", "--config"):
        pre.add_argument(flag)
    try:
        known, _ = pre.parse_known_args(argv)
        return known.repo or os.environ.get("TQSNAP_REPO") or load_profile(known).get("repo")
    except (errors.TqsnapError, OSError) as exc:
        _FALLBACK_PROBLEM = str(exc)
        return None
    except SystemExit:  # `--repo` without a value: the real parse says so
        return None


def _insert_repo(parser: argparse.ArgumentParser, argv: list[str], url: str) -> list[str]:
    """``argv`` with ``url`` placed right after the subcommand's name."""
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    takes_value = {"--repo", "--repo-profile", "--config"}
    i = 0
    while i < len(argv):
        if argv[i] in takes_value:
            i += 2
            continue
        if argv[i] in commands:
            return [*argv[: i + 1], url, *argv[i + 1 :]]
        i += 1
    return argv


def parse_args(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse ``argv``; when it lacks the URL argument, use --repo, $TQSNAP_REPO or the profile's.

    The URL stays a plain required positional (an optional one before other positionals makes
    argparse misassign them when options come in between); instead, when another source names
    the repository and ``argv`` does not parse as given, it is parsed again with that URL
    inserted after the subcommand.
    """
    global _TRIAL, _ARGV
    _ARGV = list(argv)
    fallback = _fallback_repo(argv)
    if fallback:
        _TRIAL = True
        try:
            return parser.parse_args(argv)
        except _TrialFailed:
            argv = _insert_repo(parser, argv, str(fallback))
        finally:
            _TRIAL = False
    return parser.parse_args(argv)


def resolve_repository(args: argparse.Namespace) -> None:
    """Apply the profile's store options; check the URL argument against ``--repo``."""
    if not hasattr(args, "url"):
        return
    profile = load_profile(args)
    options = dict(profile.get("storage_options", {}))
    if profile.get("endpoint_url"):
        options.setdefault("endpoint_url", profile["endpoint_url"])
    args.profile_storage_options = options
    fallback = getattr(args, "repo", None) or os.environ.get("TQSNAP_REPO") or profile.get("repo")
    if fallback and getattr(args, "target", "absent") is None and _SNAPSHOT_REF.fullmatch(args.url):
        # `tqsnap forget s@3 --repo URL` parses with s@3 as the URL: it is the snapshot.
        args.url, args.target = str(fallback), args.url
    elif fallback and getattr(args, "snapshot_ref", "absent") is None and _SNAPSHOT_REF.fullmatch(args.url):
        # The same for `tqsnap show s@3 --repo URL`.
        args.url, args.snapshot_ref = str(fallback), args.url
    elif getattr(args, "repo", None) and args.repo != args.url:
        raise ConfigError(f"two repositories given: {args.url!r} and --repo {args.repo!r}; give one")


def resolve_snapshot_refs(args: argparse.Namespace) -> None:
    """Accept ``stream@seq`` (``@latest``, ``@tag:x``) in ``--snapshot`` and a positional SNAPSHOT."""
    positional = getattr(args, "snapshot_ref", None)
    if positional is not None:
        if any(a == "--snapshot" or a.startswith("--snapshot=") for a in _ARGV):
            raise ConfigError(f"two snapshots given: {positional!r} and --snapshot {args.snapshot!r}; give one")
        args.snapshot = positional
    snapshot = getattr(args, "snapshot", None)
    if isinstance(snapshot, str) and "@" in snapshot:
        stream, args.snapshot = split_snapshot(snapshot, getattr(args, "stream", None))
        args.stream = stream
    elif (
        isinstance(snapshot, str)
        and snapshot.startswith("tag:")
        and hasattr(args, "url")
        and not any(a == "--stream" or a.startswith("--stream=") for a in _ARGV)
    ):
        # Tags name a whole snapshot, stream included: `--snapshot tag:best` needs no --stream.
        target = open_repository(args).read_tag(snapshot[4:]).target
        if target is not None:
            args.stream = target.stream


# --- completion ----------------------------------------------------------------------------------


def autocomplete(parser: argparse.ArgumentParser) -> None:
    """Answer a shell's completion request (argcomplete sets ``_ARGCOMPLETE``) and exit; else nothing."""
    if "_ARGCOMPLETE" not in os.environ:
        return
    try:
        import argcomplete
    except ModuleNotFoundError:  # pragma: no cover - argcomplete is a dependency
        return
    argcomplete.autocomplete(parser)


def cmd_completion(args: argparse.Namespace) -> int:
    import argcomplete

    sys.stdout.write(argcomplete.shellcode(["tqsnap"], shell=args.shell))
    return EXIT_OK


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "completion",
        help="print the shell completion script: eval \"$(tqsnap completion bash)\"",
        description="bash/zsh: eval \"$(tqsnap completion bash)\" in ~/.bashrc or ~/.zshrc; "
        "fish: tqsnap completion fish > ~/.config/fish/completions/tqsnap.fish",
    )
    p.add_argument("shell", choices=SHELLS)
    p.set_defaults(func=cmd_completion)


# --- running ---------------------------------------------------------------------------------------


def with_json_errors(func: Callable[[argparse.Namespace], int | None]) -> Callable[[argparse.Namespace], int | None]:
    """Under ``--json`` a failure also prints ``{"command", "error": {type, message, exit_code}}``.

    The exception is re-raised, so cli_errors.py still maps it, says it on stderr and returns
    the exit code; a closed pipe prints nothing more.
    """

    def run(args: argparse.Namespace) -> int | None:
        try:
            return func(args)
        except BrokenPipeError:
            raise
        except Exception as exc:  # noqa: BLE001 - reported, then re-raised
            if getattr(args, "json", False):
                _json_error(str(args.command), type(exc).__name__, describe(exc), exit_code_for(exc))
            raise
        except KeyboardInterrupt:
            if getattr(args, "json", False):
                _json_error(str(args.command), "Interrupted", "interrupted", 130)
            raise

    return run


def prepare(args: argparse.Namespace) -> None:
    """Everything between parsing and running: repository, profile, snapshot references."""
    resolve_repository(args)
    resolve_snapshot_refs(args)
    log.debug("tqsnap %s: %s on %s", tqsnap_version(), args.command, getattr(args, "url", "-"))


def version_line() -> str:
    return f"tqsnap {tqsnap_version()}"
