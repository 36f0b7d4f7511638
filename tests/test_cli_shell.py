"""The ``tqsnap`` shell as an operator meets it: a real child process, real argv, real pipes.

Global options before or after the subcommand, ``TQSNAP_REPO`` and config-file profiles,
``--version`` and ``python -m tqsnap``, completion scripts, ``stream@seq`` names, and the
``--json`` contract (JSON Lines: every line one document with ``command``, ``tqsnap_version``
and ``schema``; a JSON error object and the documented exit code on failure).
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import torch
from cli_subprocess import run_tqsnap as run

import tqsnap

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE, EXIT_NOT_FOUND = 0, 1, 2, 3




def json_lines(proc: subprocess.CompletedProcess[str], command: str) -> list[dict[str, Any]]:
    """Every stdout line parsed; each must be one JSON object carrying the envelope."""
    docs = []
    for line in proc.stdout.splitlines():
        doc = json.loads(line)
        assert isinstance(doc, dict), line
        assert doc["command"] == command and doc["tqsnap_version"] == tqsnap.__version__
        assert doc["schema"] == 1
        docs.append(doc)
    return docs


@pytest.fixture
def repo(tmp_path: Path) -> str:
    url = str(tmp_path / "repo")
    tqsnap.save(url, {"w": torch.arange(10.0), "step": 1}, stream="run")
    tqsnap.save(url, {"w": torch.arange(10.0) * 2, "step": 2}, stream="run")
    tqsnap.save(url, {"x": b"other"}, stream="eval")
    return url


def test_version_and_python_dash_m() -> None:
    proc = run("--version")
    assert proc.returncode == EXIT_OK and proc.stdout.strip() == f"tqsnap {tqsnap.__version__}"


@pytest.mark.parametrize(
    "argv",
    [
        ["--json", "snapshots", "{url}"],
        ["snapshots", "{url}", "--json"],
        ["snapshots", "--json", "{url}"],
        ["-v", "--json", "snapshots", "{url}", "-q"],
    ],
)
def test_global_options_before_or_after_the_subcommand(repo: str, argv: list[str]) -> None:
    proc = run(*(a.format(url=repo) for a in argv))
    assert proc.returncode == EXIT_OK, proc.stderr
    docs = json_lines(proc, "snapshots")
    assert [(d["stream"], d["seq"]) for d in docs] == [("eval", 1), ("run", 1), ("run", 2)]


def test_repo_from_flag_env_and_profile(repo: str, tmp_path: Path) -> None:
    for argv, env in (
        (["--repo", repo, "snapshots", "--json"], {}),
        (["snapshots", "--json", "--repo", repo], {}),
        (["snapshots", "--json"], {"TQSNAP_REPO": repo}),
    ):
        proc = run(*argv, env=env)
        assert proc.returncode == EXIT_OK, (argv, proc.stderr)
        assert len(json_lines(proc, "snapshots")) == 3
    config = tmp_path / "config.toml"
    config.write_text(f'[profiles.prod]\nrepo = "{repo}"\n[profiles.empty]\nrepo = "{tmp_path / "nothing"}"\n')
    proc = run("--config", str(config), "--repo-profile", "prod", "show", "--snapshot", "run@1", "--json")
    assert proc.returncode == EXIT_OK, proc.stderr
    assert json_lines(proc, "show")[0]["seq"] == 1
    proc = run("show", "--snapshot", "run@1", env={"TQSNAP_CONFIG": str(config), "TQSNAP_REPO_PROFILE": "empty"})
    assert proc.returncode == EXIT_NOT_FOUND and "no repository" in proc.stderr
    # The URL argument wins over the environment.
    proc = run("snapshots", repo, "--json", env={"TQSNAP_REPO": str(tmp_path / "nothing")})
    assert proc.returncode == EXIT_OK and len(json_lines(proc, "snapshots")) == 3


def test_a_missing_repository_or_profile_is_a_usage_error_naming_what_to_do(tmp_path: Path) -> None:
    proc = run("snapshots")
    assert proc.returncode == EXIT_USAGE and "TQSNAP_REPO" in proc.stderr
    proc = run("--repo-profile", "nope", "snapshots", env={"TQSNAP_CONFIG": str(tmp_path / "none.toml")})
    assert proc.returncode == EXIT_USAGE and "none.toml" in proc.stderr
    config = tmp_path / "c.toml"
    config.write_text('[profiles.a]\nrepo = "/x"\n')
    proc = run("--config", str(config), "--repo-profile", "b", "snapshots", "--json")
    assert proc.returncode == EXIT_USAGE
    (doc,) = json_lines(proc, "snapshots")
    assert doc["error"]["exit_code"] == EXIT_USAGE and "'b'" in doc["error"]["message"]


def test_stream_at_seq_is_accepted_wherever_a_snapshot_is_named(repo: str) -> None:
    tqsnap.tag(repo, "best", stream="run", snapshot=1)
    for ref, seq in (("run@1", 1), ("run@latest", 2), ("run@tag:best", 1)):
        proc = run("show", repo, "--snapshot", ref, "--json")
        assert proc.returncode == EXIT_OK, proc.stderr
        assert (json_lines(proc, "show")[0]["stream"], json_lines(proc, "show")[0]["seq"]) == ("run", seq)
    proc = run("verify", repo, "--snapshot", "eval@1", "--json")
    assert proc.returncode == EXIT_OK and json_lines(proc, "verify")[0]["snapshot"] == "eval@1"
    proc = run("diff", repo, "run@1", "run@2", "--json")
    assert proc.returncode == EXIT_OK and json_lines(proc, "diff")[0]["changed"] == ["w"]
    proc = run("show", repo, "--snapshot", "run@7", "--json")
    assert proc.returncode == EXIT_NOT_FOUND
    (doc,) = json_lines(proc, "show")
    assert doc["error"] == {
        "type": "SnapshotNotFoundError",
        "message": doc["error"]["message"],
        "exit_code": EXIT_NOT_FOUND,
    }
    assert "run@7" in doc["error"]["message"]


def test_show_and_verify_take_the_snapshot_as_a_positional_argument(repo: str) -> None:
    proc = run("show", repo, "run@1", "--json")
    assert proc.returncode == EXIT_OK, proc.stderr
    assert json_lines(proc, "show")[0]["seq"] == 1
    proc = run("verify", repo, "eval@latest", "--json")
    assert proc.returncode == EXIT_OK and json_lines(proc, "verify")[0]["snapshot"] == "eval@1"
    proc = run("show", "run@2", "--repo", repo, "--json")  # the URL from --repo, the snapshot positional
    assert proc.returncode == EXIT_OK and json_lines(proc, "show")[0]["seq"] == 2
    proc = run("show", repo, "run@1", "--snapshot", "2")
    assert proc.returncode == EXIT_USAGE and "two snapshots given" in proc.stderr


def test_tag_arguments_given_the_wrong_way_round_are_named(repo: str) -> None:
    proc = run("tag", repo, "run@1", "best", "--json")
    assert proc.returncode == EXIT_USAGE
    (doc,) = json_lines(proc, "tag")
    assert "the tag name comes first" in doc["error"]["message"]
    assert run("tags", repo, "--json").stdout == ""  # nothing was tagged


def test_json_lines_carry_iso_times_beside_epoch_seconds(repo: str) -> None:
    proc = run("snapshots", repo, "--json")
    for doc in json_lines(proc, "snapshots"):
        iso = doc["committed_at_iso"]
        assert iso.endswith("Z")
        assert abs(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() - doc["committed_at"]) < 1e-3


def test_every_json_command_prints_only_parsable_lines(repo: str) -> None:
    for argv, command in (
        (["stats", repo], "stats"),
        (["show", repo, "--snapshot", "run@2"], "show"),
        (["forget", repo, "--keep-last", "1", "--dry-run"], "forget"),
        (["gc", repo, "--dry-run"], "gc"),
        (["ls", repo, "run@2"], "ls"),
    ):
        proc = run(*argv, "--json")
        assert proc.returncode == EXIT_OK, (argv, proc.stderr)
        assert json_lines(proc, command), argv


def test_usage_errors_under_json_print_a_json_error_and_exit_2(repo: str) -> None:
    proc = run("forget", repo, "--keep-last", "many", "--json")
    assert proc.returncode == EXIT_USAGE
    (doc,) = json_lines(proc, "forget")
    assert doc["error"]["type"] == "UsageError" and doc["error"]["exit_code"] == EXIT_USAGE
    proc = run("forget", repo, "--json")  # no keep rule: refused by the policy
    assert proc.returncode == EXIT_USAGE
    (doc,) = json_lines(proc, "forget")
    assert doc["error"]["type"] == "PolicyError"
    assert "allow_empty_policy" not in doc["error"]["message"] and "--all" in doc["error"]["message"]


def test_messages_name_flags_not_python_keywords(tmp_path: Path) -> None:
    url = str(tmp_path / "repo")
    tqsnap.save(url, {"o": object()}, stream="p", allow_pickle=True)
    proc = run("restore", url, "p@1", "--to", str(tmp_path / "x.pt"))
    assert proc.returncode == EXIT_USAGE
    assert "=True" not in proc.stderr and "--include" in proc.stderr


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts_and_completion_answers(shell: str) -> None:
    proc = run("completion", shell)
    assert proc.returncode == EXIT_OK and "tqsnap" in proc.stdout
    if shell == "bash":
        assert "complete" in proc.stdout


def test_tab_completion_lists_subcommands(tmp_path: Path) -> None:
    """What bash asks argcomplete when a user types `tqsnap sn<TAB>`."""
    line = "tqsnap sn"
    out = tmp_path / "answer"
    env = {
        "_ARGCOMPLETE": "1",
        "_ARGCOMPLETE_SHELL": "bash",
        "COMP_LINE": line,
        "COMP_POINT": str(len(line)),
        "_ARGCOMPLETE_STDOUT_FILENAME": str(out),
        "_ARGCOMPLETE_IFS": "\n",
    }
    run(env=env)
    assert "snapshots" in out.read_text().split()


def test_a_damaged_manifest_is_listed_as_damaged_beside_the_others(repo: str) -> None:
    manifest = Path(repo) / "snapshots" / "run" / f"{1:020d}.json"
    manifest.write_text("{not json")
    proc = run("snapshots", repo, "--json")
    assert proc.returncode == EXIT_PROBLEM
    docs = json_lines(proc, "snapshots")
    assert {(d["stream"], d["seq"], d["damaged"]) for d in docs} == {
        ("eval", 1, False),
        ("run", 2, False),
        ("run", 1, True),
    }
    assert [line for line in proc.stderr.splitlines() if line.startswith("tqsnap: ")] == [
        next(line for line in proc.stderr.splitlines() if "run@1" in line)
    ]
    proc = run("snapshots", repo)
    assert proc.returncode == EXIT_PROBLEM and "DAMAGED" in proc.stdout and "eval" in proc.stdout
    proc = run("stats", repo, "--json")
    assert proc.returncode == EXIT_PROBLEM
    (doc,) = json_lines(proc, "stats")
    assert doc["snapshots"] == 2 and [d["snapshot"] for d in doc["damaged"]] == ["run@1"]
    # forget with a policy decides for the readable ones and leaves the damaged one alone
    proc = run("forget", repo, "--keep-last", "1", "--json")
    assert proc.returncode == EXIT_OK, proc.stderr
    (doc,) = json_lines(proc, "forget")
    assert doc["damaged"] == ["run@1"] and doc["removed"] == 0
    # gc still refuses to delete anything while it cannot read a live manifest
    proc = run("gc", repo)
    assert proc.returncode == EXIT_PROBLEM and "forget" in proc.stderr
    # and the damaged snapshot can be forgotten by name, which needs no parse of it
    proc = run("forget", repo, "run@1", "--json")
    assert proc.returncode == EXIT_OK, proc.stderr
    assert json_lines(proc, "forget")[0]["tombstone_written"] is True
    proc = run("snapshots", repo, "--json")
    assert proc.returncode == EXIT_OK
    assert {(d["stream"], d["seq"]) for d in json_lines(proc, "snapshots")} == {("eval", 1), ("run", 2)}


def test_forget_one_snapshot_by_name_keeps_the_newest_unless_forced(repo: str) -> None:
    proc = run("forget", repo, "run@2")
    assert proc.returncode == EXIT_USAGE and "newest" in proc.stderr and "--force" in proc.stderr
    proc = run("forget", "--repo", repo, "run@1", "--dry-run", "--json")
    assert proc.returncode == EXIT_OK, proc.stderr
    (doc,) = json_lines(proc, "forget")
    assert doc["dry_run"] is True and doc["snapshot"] == "run@1" and doc["tombstone_written"] is False
    assert [s.seq for s in tqsnap.snapshots(repo, "run")] == [1, 2], "a dry run forgets nothing"
    proc = run("forget", "run@1", env={"TQSNAP_REPO": repo})
    assert proc.returncode == EXIT_OK and "forgot run@1" in proc.stdout
    assert [s.seq for s in tqsnap.snapshots(repo, "run")] == [2]
    proc = run("forget", repo, "run@2", "--keep-last", "3")
    assert proc.returncode == EXIT_USAGE, "a name and a policy together are refused"
    proc = run("forget", repo, "run@2", "--force")
    assert proc.returncode == EXIT_OK
    assert tqsnap.snapshots(repo, "run") == []


def test_broken_pipe_under_json_is_quiet(repo: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tqsnap", "snapshots", repo, "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) in (EXIT_OK, 141) and "Traceback" not in err


@pytest.mark.s3
def test_the_shell_against_a_real_s3_server(s3_repo_url: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    url, options = s3_repo_url
    tqsnap.save(url, {"w": torch.ones(100)}, stream="run", storage_options=options)
    tqsnap.save(url, {"w": torch.ones(100) * 3}, stream="run", storage_options=options)
    endpoint = options["endpoint_url"]
    config = tmp_path / "config.toml"
    config.write_text(f'default_profile = "s3"\n[profiles.s3]\nrepo = "{url}"\nendpoint_url = "{endpoint}"\n')
    env = {"TQSNAP_CONFIG": str(config)}
    proc = run("snapshots", "--json", env=env, options=options)
    assert proc.returncode == EXIT_OK, proc.stderr
    assert [d["seq"] for d in json_lines(proc, "snapshots")] == [1, 2]
    proc = run("--json", "show", "--snapshot", "run@1", "--endpoint-url", endpoint, env={"TQSNAP_REPO": url}, options=options)
    assert proc.returncode == EXIT_OK, proc.stderr
    assert json_lines(proc, "show")[0]["seq"] == 1
    proc = run("ls", "run@latest", "--json", env=env, options=options)
    assert proc.returncode == EXIT_OK and [d["path"] for d in json_lines(proc, "ls")] == ["w"]
    proc = run("show", "--snapshot", "run@9", "--json", env=env, options=options)
    assert proc.returncode == EXIT_NOT_FOUND
    assert json_lines(proc, "show")[0]["error"]["exit_code"] == EXIT_NOT_FOUND
    proc = run("forget", "run@1", "--json", env=env, options=options)
    assert proc.returncode == EXIT_OK, proc.stderr
    assert [s.seq for s in tqsnap.snapshots(url, "run", storage_options=options)] == [2]


def test_forget_by_name_keeps_a_tagged_snapshot_unless_untag(repo: str) -> None:
    tqsnap.tag(repo, "keep-me", stream="run", snapshot=1)
    proc = run("forget", repo, "run@1")
    assert proc.returncode == EXIT_USAGE and "keep-me" in proc.stderr and "--untag" in proc.stderr
    assert [s.seq for s in tqsnap.snapshots(repo, "run")] == [1, 2]
    proc = run("forget", repo, "run@tag:keep-me", "--untag", "--json")
    assert proc.returncode == EXIT_OK, proc.stderr
    (doc,) = json_lines(proc, "forget")
    assert doc["snapshot"] == "run@1" and doc["tags_removed"] == ["keep-me"]
    assert [s.seq for s in tqsnap.snapshots(repo, "run")] == [2]


def test_two_different_repositories_are_refused(repo: str, tmp_path: Path) -> None:
    proc = run("snapshots", repo, "--repo", str(tmp_path / "other"))
    assert proc.returncode == EXIT_USAGE and "two repositories" in proc.stderr


@pytest.mark.s3
def test_a_missing_bucket_is_named_with_no_python_keyword(s3_repo_url: tuple[str, dict[str, str]]) -> None:
    _, options = s3_repo_url
    proc = run(
        "snapshots", "s3://no-such-bucket-tqsnap/x", "--endpoint-url", options["endpoint_url"], "--json",
        options=options,
    )
    assert proc.returncode == EXIT_NOT_FOUND, proc.stderr
    (doc,) = json_lines(proc, "snapshots")
    assert "no-such-bucket-tqsnap" in doc["error"]["message"] and "=True" not in doc["error"]["message"]
    assert "=True" not in proc.stderr


def test_verbosity_counts_v_before_and_after_the_subcommand(repo: str) -> None:
    debug = "DEBUG tqsnap.cli: tqsnap"
    assert debug in run("snapshots", repo, "-vv").stderr
    assert debug in run("-v", "snapshots", repo, "-v").stderr
    assert debug not in run("-v", "snapshots", repo).stderr
    assert run("-q", "snapshots", repo, "-vv").stderr == ""


def test_a_tag_names_its_stream_so_no_stream_flag_is_needed(repo: str) -> None:
    tqsnap.tag(repo, "best", stream="run", snapshot=1)
    for argv in (["show", repo, "--snapshot", "tag:best"], ["ls", repo, "tag:best"]):
        proc = run(*argv, "--json")
        assert proc.returncode == EXIT_OK, proc.stderr
        assert json_lines(proc, argv[0])[0]["seq" if argv[0] == "show" else "snapshot"] in (1, "run@1")
    proc = run("show", repo, "--stream", "eval", "--snapshot", "tag:best")
    assert proc.returncode == EXIT_NOT_FOUND and "'run'" in proc.stderr, "an explicit --stream is checked"
