"""``tqsnap tq-snapshot`` / ``tq-restore`` attach to the running TransferQueue and round-trip it."""

from __future__ import annotations

import json

from helpers import assert_same, dump, fill

from tqsnap.faces.cli import main


def test_cli_snapshot_then_restore_brings_the_transferqueue_back(tq_main, wipe, repo_url, capsys):
    fill(tq_main.client)
    before = dump(tq_main.system)

    assert main(["tq-snapshot", repo_url, "--stream", "cli", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["snapshot"] == "cli@1" and report["samples"] == 65

    wipe(tq_main)
    assert main(["tq-restore", repo_url, "--stream", "cli"]) == 0
    assert "restored cli@1 (3 units) into 3 units" in capsys.readouterr().out
    assert_same(before, dump(tq_main.system))


def test_cli_restore_errors_map_to_documented_exit_codes(tq_main, repo_url, capsys):
    fill(tq_main.client)
    assert main(["tq-snapshot", repo_url, "--stream", "cli"]) == 0
    assert main(["tq-restore", repo_url, "--stream", "cli"]) == 2  # target not empty: bad usage
    assert "not empty" in capsys.readouterr().err
    assert main(["tq-restore", repo_url, "--stream", "cli", "--snapshot", "5", "--force"]) == 3  # not found
