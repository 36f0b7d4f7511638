"""The ``tqsnap`` command facing crafted repositories: a documented exit code, one clean line,
no traceback, nothing from the repository acting on the terminal, no credentials in any log.

Each case runs the installed ``tqsnap`` command in a subprocess, as a user or a cron job
would, against a repository crafted on disk (or on the moto S3 server).
"""

from __future__ import annotations

import argparse
import errno
import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

import tqsnap
from tqsnap.faces import cli_errors, cli_logging
from tqsnap.faces.cli_common import (
    EXIT_BROKEN_PIPE,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_PROBLEM,
    EXIT_STORE,
    EXIT_USAGE,
    terminal_safe,
)

TQSNAP = str(Path(sys.executable).with_name("tqsnap"))
ESC = "\x1b"
#: Codes README.md documents; 70 (internal error) is documented too, but no input may cause it.
DOCUMENTED = {EXIT_OK, EXIT_PROBLEM, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_STORE, 5}
CLEAR_SCREEN = "\x1b[2J"
#: AWS-shaped credentials (AKIA + 16), so the pattern redaction is exercised as well.
ACCESS_KEY_ID = "AKIATQSNAPSAFETY2345"
SECRET_KEY = "tqsnapCliSafetySecretKey0123456789abcdef"


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [TQSNAP, *args],
        capture_output=True,
        text=True,
        errors="surrogateescape",
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )
    return proc


def assert_clean(proc: subprocess.CompletedProcess[str], codes: set[int] | int) -> None:
    """The promises every case shares; ``codes`` is the exit code (or codes) the README allows."""
    allowed = {codes} if isinstance(codes, int) else codes
    output = proc.stdout + proc.stderr
    assert proc.returncode in allowed, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in output, proc.stderr[-2000:]
    assert ESC not in output and "\x07" not in output and "\x9b" not in output
    if proc.returncode != EXIT_OK:
        errors = [line for line in proc.stderr.splitlines() if line.startswith("tqsnap: ")]
        assert len(errors) == 1, proc.stderr


def _manifest_path(repo: Path, stream: str, seq: int) -> Path:
    return repo / "snapshots" / stream / f"{seq:020d}.json"


def _edit_manifest(repo: Path, stream: str, seq: int, edit) -> None:
    path = _manifest_path(repo, stream, seq)
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository with two honest snapshots of stream ``s``."""
    root = tmp_path / "repo"
    tqsnap.save(str(root), {"w": torch.arange(8), "b": torch.zeros(3)}, stream="s")
    tqsnap.save(str(root), {"w": torch.arange(8), "b": torch.ones(3)}, stream="s")
    return root


# --- untrusted strings never reach the terminal raw -----------------------------------------


def test_a_crafted_kind_is_printed_escaped_by_snapshots_and_show(repo: Path) -> None:
    _edit_manifest(repo, "s", 2, lambda d: d.update(kind="state_dict" + CLEAR_SCREEN))
    for args in (["snapshots", str(repo)], ["show", str(repo), "--stream", "s"]):
        proc = run(*args)
        assert_clean(proc, {EXIT_OK, EXIT_PROBLEM})
        if proc.returncode == EXIT_OK:
            assert "\\x1b[2J" in proc.stdout  # shown, as text
        else:
            assert "00000000000000000002" in proc.stderr  # refused, naming the manifest


def test_json_output_escapes_a_crafted_kind(repo: Path) -> None:
    _edit_manifest(repo, "s", 2, lambda d: d.update(kind="x" + CLEAR_SCREEN))
    proc = run("snapshots", str(repo), "--json")
    assert_clean(proc, {EXIT_OK, EXIT_PROBLEM})
    if proc.returncode == EXIT_OK:
        assert any(s["kind"] == "x" + CLEAR_SCREEN for s in map(json.loads, proc.stdout.splitlines()))


def test_metadata_with_terminal_escapes_is_shown_escaped(tmp_path: Path) -> None:
    url = str(tmp_path / "repo")
    tqsnap.save(url, {"x": 1}, stream="s", metadata={"note": "\x1b]0;owned\x07" + CLEAR_SCREEN, "ok": "é"})
    proc = run("show", url, "--stream", "s")
    assert_clean(proc, EXIT_OK)
    assert "\\x1b]0;owned\\x07" in proc.stdout and "é" in proc.stdout


def test_a_crafted_item_path_is_escaped_by_diff(repo: Path) -> None:
    def rename(doc: dict) -> None:
        for item in doc["items"]:
            if item["path"] == "b":
                item["path"] = "b" + CLEAR_SCREEN + "\r\x9b"

    _edit_manifest(repo, "s", 2, rename)
    proc = run("diff", str(repo), "--stream", "s", "1", "2")
    assert_clean(proc, {EXIT_OK, EXIT_PROBLEM})
    if proc.returncode == EXIT_OK:
        assert "b\\x1b[2J\\x0d\\x9b" in proc.stdout


def test_a_stream_directory_named_with_escapes_is_harmless_to_snapshots_and_stats(repo: Path) -> None:
    evil = repo / "snapshots" / ("ev" + CLEAR_SCREEN + "il")
    evil.mkdir()
    (evil / f"{1:020d}.json").write_bytes(_manifest_path(repo, "s", 1).read_bytes())
    for args in (["snapshots", str(repo)], ["stats", str(repo)], ["forget", str(repo), "--keep-last", "1", "--dry-run"]):
        assert_clean(run(*args), {EXIT_OK, EXIT_PROBLEM, EXIT_USAGE})


def test_an_error_echoing_a_crafted_name_is_escaped(repo: Path) -> None:
    proc = run("show", str(repo), "--stream", "\x1b]0;owned\x07" + CLEAR_SCREEN)
    assert_clean(proc, EXIT_USAGE)  # an invalid stream name is bad input
    assert "\\x1b" in proc.stderr


def test_a_crafted_shard_key_in_an_error_is_escaped(repo: Path) -> None:
    def evil_key(doc: dict) -> None:
        doc["shards"][0]["key"] = "shards/00/" + CLEAR_SCREEN + "x"

    _edit_manifest(repo, "s", 2, evil_key)
    proc = run("verify", str(repo), "--stream", "s")
    assert_clean(proc, {EXIT_PROBLEM, EXIT_STORE, EXIT_NOT_FOUND})


# --- damaged data: one line and a documented code, never a traceback --------------------------


def test_deep_nesting_in_a_manifest_is_a_clean_error(repo: Path) -> None:
    depth = 200_000
    path = _manifest_path(repo, "s", 2)
    text = path.read_text()
    path.write_text(text.replace('"metadata":{}', '"metadata":{"n":' + "[" * depth + "]" * depth + "}", 1))
    assert '"metadata":{"n":[[[' in path.read_text()
    for args in (["snapshots", str(repo)], ["show", str(repo), "--stream", "s"]):
        assert_clean(run(*args), EXIT_PROBLEM)


def test_a_commit_time_of_1e300_does_not_break_the_listing(repo: Path) -> None:
    _edit_manifest(repo, "s", 2, lambda d: d.update(committed_at=1e300))
    proc = run("snapshots", str(repo))
    assert_clean(proc, {EXIT_OK, EXIT_PROBLEM})
    if proc.returncode == EXIT_OK:
        assert "1e+300" in proc.stdout
    assert_clean(run("snapshots", str(repo), "--json"), {EXIT_OK, EXIT_PROBLEM})


@pytest.mark.parametrize("field", ["item_bytes", "stored_bytes"])
def test_junk_statistics_do_not_break_snapshots_or_stats(repo: Path, field: str) -> None:
    _edit_manifest(repo, "s", 2, lambda d: d["stats"].update({field: "lots" + CLEAR_SCREEN}))
    for args in (["snapshots", str(repo)], ["stats", str(repo)]):
        assert_clean(run(*args), {EXIT_OK, EXIT_PROBLEM})


def test_a_shard_key_naming_a_directory_is_a_clean_error_naming_it(repo: Path) -> None:
    key = json.loads(_manifest_path(repo, "s", 2).read_text())["shards"][0]["key"]
    shard = repo / key
    shard.unlink()
    shard.mkdir()
    proc = run("verify", str(repo), "--stream", "s")
    assert_clean(proc, {EXIT_PROBLEM, EXIT_STORE})
    assert shard.name.split(".")[0] in proc.stderr + proc.stdout


def test_a_config_that_is_a_directory_is_a_clean_error(repo: Path) -> None:
    (repo / "tqsnap.json").unlink()
    (repo / "tqsnap.json").mkdir()
    proc = run("snapshots", str(repo))
    assert_clean(proc, {EXIT_PROBLEM, EXIT_NOT_FOUND, EXIT_STORE})
    assert "tqsnap.json" in proc.stderr


def test_a_repository_path_that_is_a_file_is_a_clean_error(tmp_path: Path) -> None:
    path = tmp_path / "not-a-dir"
    path.write_text("x")
    for args in (["snapshots", str(path)], ["init", str(path / "repo")]):
        assert_clean(run(*args), {EXIT_NOT_FOUND, EXIT_STORE, EXIT_USAGE})


def _unwritable_dir(tmp_path: Path) -> Path:
    """A directory this process cannot create entries in (root ignores mode bits: use /sys)."""
    ro = tmp_path / "read-only"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        (ro / "probe").mkdir()
    except PermissionError:
        return ro
    try:
        os.mkdir("/sys/tqsnap-probe")
    except OSError as exc:
        if exc.errno in (errno.EPERM, errno.EACCES, errno.EROFS):
            return Path("/sys")
    pytest.skip("no unwritable directory available to this user")


def test_init_on_read_only_media_is_a_store_error(tmp_path: Path) -> None:
    where = _unwritable_dir(tmp_path)
    proc = run("init", str(where / "tqsnap-repo"))
    assert_clean(proc, EXIT_STORE)
    assert "tqsnap-repo" in proc.stderr


# --- the process side: pipes, interrupts, unexpected errors -----------------------------------


def test_a_reader_that_closes_the_pipe_early_gets_a_quiet_exit(repo: Path) -> None:
    """``tqsnap snapshots URL | head -0``: the reader is gone before the first write."""
    proc = subprocess.Popen([TQSNAP, "snapshots", str(repo)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # before the command has even finished importing
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_BROKEN_PIPE
    assert b"Traceback" not in err and b"Exception ignored" not in err and b"BrokenPipe" not in err


def test_ctrl_c_exits_130_without_a_traceback() -> None:
    """Ctrl-C while the command waits on a store that never answers: exit 130, one line.

    The store is a socket that accepts the connection and stays silent, so the signal always
    lands while the command is blocked on the network, never before its handlers are in place
    (the connection comes after the imports) and never after it has already given up.
    """
    with socket.create_server(("127.0.0.1", 0)) as silent:
        silent.settimeout(120)
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        proc = subprocess.Popen(
            [TQSNAP, "snapshots", "s3://tqsnap-silent/repo", "--endpoint-url", endpoint],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            conn, _ = silent.accept()  # the command now waits for a reply that never comes
        except TimeoutError:
            proc.kill()
            raise
        with conn:
            assert proc.poll() is None, proc.communicate()
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_INTERRUPTED, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (KeyboardInterrupt(), EXIT_INTERRUPTED),
        (RecursionError("maximum recursion depth exceeded"), EXIT_PROBLEM),
        (OverflowError("timestamp out of range"), EXIT_PROBLEM),
        (PermissionError(errno.EACCES, "Permission denied", "/repo/tqsnap.json"), EXIT_STORE),
        (OSError(errno.EROFS, "Read-only file system", "/repo/.tmp"), EXIT_STORE),
        (IsADirectoryError(errno.EISDIR, "Is a directory", "/repo/shards/ab/x"), EXIT_STORE),
        (ValueError("embedded null byte"), EXIT_USAGE),
        (tqsnap.errors.ManifestError("snapshots/s/1.json: bad " + CLEAR_SCREEN), EXIT_PROBLEM),
        (KeyError("surprise"), EXIT_INTERNAL),
    ],
)
def test_every_exception_becomes_one_line_and_its_exit_code(exc: BaseException, code: int, capsys) -> None:
    def command(_args: object) -> int:
        raise exc

    args = argparse.Namespace(command="show", url="/the/repo")
    assert cli_errors.run_command(command, args) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tqsnap: ") and ESC not in err
    if isinstance(exc, OSError):
        assert exc.filename in err
    if not isinstance(exc, tqsnap.errors.TqsnapError | KeyboardInterrupt):
        assert "show /the/repo" in err  # Python's own messages name no object: say where
    if code == EXIT_INTERNAL:
        assert "-vv" in err


def test_a_worker_thread_that_dies_prints_no_traceback(capsys) -> None:
    def command(_args: object) -> int:
        def work() -> None:
            raise RuntimeError("worker broke on " + CLEAR_SCREEN)

        t = threading.Thread(target=work, name="shard-fetch")
        t.start()
        t.join(30)
        return EXIT_OK

    cli_logging.configure_logging(0)
    try:
        assert cli_errors.run_command(command, argparse.Namespace(command="verify")) == EXIT_OK
    finally:
        root = logging.getLogger()
        for h in [h for h in root.handlers if getattr(h, "_tqsnap_cli", False)]:
            root.removeHandler(h)
    err = capsys.readouterr().err
    assert "Traceback" not in err and ESC not in err and "shard-fetch failed" in err


def test_the_traceback_is_logged_only_at_vv(repo: Path) -> None:
    quiet = run("show", str(repo), "--stream", "nope")
    loud = run("-vv", "show", str(repo), "--stream", "nope")
    assert quiet.returncode == loud.returncode == EXIT_NOT_FOUND
    assert "Traceback" not in quiet.stderr
    assert "Traceback" in loud.stderr and ESC not in loud.stderr


def test_terminal_safe_escapes_controls_and_keeps_text() -> None:
    assert terminal_safe("a\x1b[2Jb\x07\x9b\u202e\u200b\nc") == "a\\x1b[2Jb\\x07\\x9b\\u202e\\u200b\\x0ac"
    assert terminal_safe("line\nnext", keep_newlines=True) == "line\nnext"
    assert terminal_safe("naïve 中文 🙂 tab") == "naïve 中文 🙂 tab"
    twice = terminal_safe(terminal_safe("\x1b"))
    assert twice == "\\x1b"


# --- secrets stay out of the logs -------------------------------------------------------------


@pytest.mark.s3
def test_vv_against_s3_shows_tqsnap_debug_but_never_the_credentials(moto_endpoint, tmp_path: Path) -> None:
    bucket = f"tqsnap-cli-{os.getpid()}"
    moto_endpoint.client().create_bucket(Bucket=bucket)
    src = str(tmp_path / "src")
    tqsnap.save(src, {"w": torch.arange(1000)}, stream="s")
    url = f"s3://{bucket}/repo"
    env = {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": moto_endpoint.endpoint_url,
    }
    outputs = []
    for args, code in (
        (["-vv", "copy", src, url, "--stream", "s"], EXIT_OK),
        (["-vv", "snapshots", url], EXIT_OK),
        (["-vv", "verify", url, "--stream", "s"], EXIT_OK),
        (["-vv", "stats", url], EXIT_OK),
        (["-vv", "show", url, "--stream", "missing"], EXIT_NOT_FOUND),
    ):
        proc = run(*args, env=env)
        assert proc.returncode == code, proc.stderr[-2000:]
        outputs.append(proc.stdout + proc.stderr)
    everything = "\n".join(outputs)
    assert "DEBUG tqsnap" in everything  # -vv shows tqsnap's own debug
    assert ACCESS_KEY_ID not in everything and SECRET_KEY not in everything
    assert "X-Amz-Signature" not in everything and "AWS4-HMAC-SHA256 Credential" not in everything
    assert "botocore" not in everything.replace("botocore.exceptions", "")


def test_botocore_debug_is_pinned_to_warning_even_if_something_lowered_it() -> None:
    logging.getLogger("botocore").setLevel(logging.DEBUG)
    logging.getLogger("urllib3").setLevel(logging.DEBUG)
    try:
        cli_logging.configure_logging(2)
        assert logging.getLogger("botocore").getEffectiveLevel() == logging.WARNING
        assert logging.getLogger("urllib3").getEffectiveLevel() == logging.WARNING
        assert logging.getLogger("tqsnap").getEffectiveLevel() == logging.DEBUG
    finally:
        root = logging.getLogger()
        for h in [h for h in root.handlers if getattr(h, "_tqsnap_cli", False)]:
            root.removeHandler(h)


def test_the_handler_redacts_keys_signatures_and_authorization(monkeypatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    stream = io.StringIO()
    handler = cli_logging.configure_logging(0)
    handler.setStream(stream)
    try:
        log = logging.getLogger("botocore.endpoint")
        log.warning(
            "Sending http request: headers={'Authorization': b'AWS4-HMAC-SHA256 Credential=%s/20260101/"
            "us-east-1/s3/aws4_request, SignedHeaders=host, Signature=%s', 'X-Amz-Security-Token': 'tok123'}",
            ACCESS_KEY_ID,
            "ab" * 32,
        )
        logging.getLogger("tqsnap.test").warning(
            "url https://b.s3/k?X-Amz-Credential=%s&X-Amz-Signature=%s secret %s",
            ACCESS_KEY_ID,
            "cd" * 32,
            SECRET_KEY,
        )
    finally:
        logging.getLogger().removeHandler(handler)
    text = stream.getvalue()
    assert "Sending http request" in text and "url https://b.s3/k" in text
    for secret in (ACCESS_KEY_ID, SECRET_KEY, "ab" * 32, "cd" * 32, "tok123", "AWS4-HMAC-SHA256"):
        assert secret not in text, secret
    assert text.count(cli_logging.REDACTED) >= 5
