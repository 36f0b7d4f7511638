"""Changing grace and write duration: a new config version, picked up by gc, refused when unsafe."""

from __future__ import annotations

import pytest
import torch
from cli_subprocess import Target, json_out, target_fixture  # noqa: F401 - the fixture
from cli_subprocess import tqsnap as run

import tqsnap
from tqsnap.engine import Repository
from tqsnap.engine.gc import GarbageCollector
from tqsnap.errors import GcConflictError
from tqsnap.store import open_store


def _config_versions(t: Target) -> list[str]:
    return [i.key for i in open_store(t.url, **t.storage_options()).list("config/")]


def test_init_with_other_settings_says_so(target: Target) -> None:
    assert run(target, "init", "--grace", "24h", "--max-write-duration", "6h").returncode == 0
    assert run(target, "init", "--grace", "24h", "--max-write-duration", "6h").returncode == 0, "same: fine"
    other = run(target, "init", "--grace", "48h", "--max-write-duration", "6h")
    assert other.returncode == 2 and "tqsnap config" in other.stderr and "86400" in other.stderr


def test_a_config_change_is_a_new_version_that_gc_uses(target: Target) -> None:
    assert run(target, "init", "--grace", "24h", "--max-write-duration", "6h").returncode == 0
    changed = json_out(run(target, "config", "--grace", "48h", "--json"))
    assert changed["current"]["version"] == 2 and changed["current"]["grace_seconds"] == 48 * 3600
    assert _config_versions(target) == ["config/00000000000000000002.json"]
    gc = json_out(run(target, "gc", "--dry-run", "--json"))
    assert gc["grace_seconds" if "grace_seconds" in gc else "grace"] == 48 * 3600, "gc reads the newest version"
    shown = json_out(run(target, "config", "--json"))
    assert [h["version"] for h in shown["history"]] == [1, 2]
    assert run(target, "config", "--max-write-duration", "20h").returncode == 0, "under 48h / 2 now"
    writer_view = Repository.open(target.url, storage_options=target.storage_options()).config
    assert (writer_view.version, writer_view.max_write_duration) == (3, 20 * 3600), "writers open the newest"


def test_an_unsafe_change_is_refused_and_writes_nothing(target: Target) -> None:
    assert run(target, "init", "--grace", "24h", "--max-write-duration", "6h").returncode == 0
    plain = run(target, "config", "--grace", "10h")
    assert plain.returncode == 2 and "grace" in plain.stderr
    # Raising the write duration past what the grace of gc runs already in flight allows.
    longer = run(target, "config", "--grace", "48h", "--max-write-duration", "13h")
    assert longer.returncode == 2 and "raise grace first" in longer.stderr
    assert _config_versions(target) == []
    assert run(target, "config", "--grace", "48h").returncode == 0
    assert run(target, "config", "--max-write-duration", "13h").returncode == 0, "grace first, then duration"


def test_saves_begun_under_the_old_config_keep_the_grace_they_need(target: Target) -> None:
    assert run(target, "init", "--grace", "24h", "--max-write-duration", "6h").returncode == 0
    assert run(target, "config", "--max-write-duration", "1h").returncode == 0
    # 3h > 2 * 1h, but a save begun a moment ago under the 6h limit may run 6 more hours.
    early = run(target, "config", "--grace", "3h")
    assert early.returncode == 2 and "earlier config" in early.stderr
    assert _config_versions(target) == ["config/00000000000000000002.json"]
    assert run(target, "config", "--grace", "13h").returncode == 0, "over 2 * 6h is safe at once"


def test_a_gc_run_that_read_an_older_config_deletes_nothing(tmp_path) -> None:
    url = str(tmp_path / "repo")
    tqsnap.init_repo(url, grace="3s", max_write_duration="1s")
    tqsnap.save(url, {"w": torch.ones(64)}, stream="s")
    tqsnap.save(url, {"w": torch.zeros(64)}, stream="s")
    tqsnap.forget(url, keep_last=1)
    before = sorted(i.key for i in open_store(url).list("shards/"))
    gc = GarbageCollector(Repository.open(url))  # holds grace 3s
    assert run(Target(url), "config", "--grace", "10s").returncode == 0
    assert run(Target(url), "config", "--max-write-duration", "4s").returncode == 0
    with pytest.raises(GcConflictError, match="run gc again"):
        gc.run()
    assert sorted(i.key for i in open_store(url).list("shards/")) == before
