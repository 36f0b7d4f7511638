"""Retention: restic's forget semantics per stream, tombstones instead of deletes, typed refusals."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

import tqsnap
from tqsnap.engine import PackOptions, Repository, SnapshotInfo, SnapshotWriter
from tqsnap.engine.retention import RetentionPolicy, apply_policy, format_duration
from tqsnap.errors import PolicyError, SnapshotNotFoundError
from tqsnap.faces.api_retention import forget
from tqsnap.faces.cli import main
from tqsnap.format.keys import SNAPSHOTS_PREFIX, TOMBSTONES_PREFIX
from tqsnap.format.manifest import SnapshotId
from tqsnap.store import MemoryStore

HOUR, DAY = 3600.0, 86400.0
T0 = datetime(2026, 3, 2, 12, 0, tzinfo=timezone.utc).timestamp()  # a Monday, noon UTC


def snap(seq: int, t: float, stream: str = "s") -> SnapshotInfo:
    return SnapshotInfo(stream, seq, "state_dict", None, t, t + 1, f"w{seq}")


def decide(snaps: list[SnapshotInfo], tags: dict[SnapshotId, list[str]] | None = None, **policy: object):
    decisions = apply_policy(snaps, RetentionPolicy(**policy), tags)  # type: ignore[arg-type]
    return {d.seq: d.reasons for d in decisions if d.keep}, {d.seq for d in decisions if not d.keep}


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def repo(clock: Clock) -> Repository:
    return Repository.init(MemoryStore(clock=clock), grace="1h", max_write_duration="10m")


def save(repo: Repository, stream: str, payload: bytes) -> SnapshotInfo:
    w = SnapshotWriter.begin(repo, stream, "raw", options=PackOptions(upload_threads=1))
    packer = w.packer()
    packer.add("data", payload)
    w.add_result(packer.finish())
    return w.commit()


def keys(repo: Repository, prefix: str) -> list[str]:
    return [i.key for i in repo.store.list(prefix)]


# --- policy semantics ---------------------------------------------------------------------------


def test_keep_last_keeps_the_n_newest_with_numbered_reasons() -> None:
    kept, removed = decide([snap(i, T0 + i * HOUR) for i in range(1, 6)], keep_last=3)
    assert kept == {5: ["newest of stream", "last #1"], 4: ["last #2"], 3: ["last #3"]}
    assert removed == {1, 2}


def test_hourly_keeps_the_newest_snapshot_of_each_of_the_last_n_hours() -> None:
    # three snapshots an hour for five hours
    snaps = [snap(h * 3 + k + 1, T0 + h * HOUR + k * 600) for h in range(5) for k in range(3)]
    kept, removed = decide(snaps, keep_hourly=3)
    assert kept == {15: ["newest of stream", "hourly #1"], 12: ["hourly #2"], 9: ["hourly #3"]}
    assert len(removed) == 12


def test_a_bucket_rule_with_counts_left_keeps_the_oldest_snapshot_too() -> None:
    # restic: if a rule has not used up its count, the oldest snapshot is kept as well
    snaps = [snap(1, T0), snap(2, T0 + 60), snap(3, T0 + DAY)]
    kept, removed = decide(snaps, keep_daily=5)
    assert kept == {3: ["newest of stream", "daily #1"], 2: ["daily #2"], 1: ["daily #3 (oldest)"]}
    assert removed == set()


def test_daily_weekly_monthly_yearly_buckets_follow_the_calendar() -> None:
    snaps = [
        snap(1, datetime(2024, 12, 31, 23, tzinfo=timezone.utc).timestamp()),
        snap(2, datetime(2025, 6, 1, tzinfo=timezone.utc).timestamp()),
        snap(3, datetime(2025, 6, 30, tzinfo=timezone.utc).timestamp()),
        snap(4, datetime(2026, 2, 23, 9, tzinfo=timezone.utc).timestamp()),  # Monday of week 9
        snap(5, datetime(2026, 3, 1, 9, tzinfo=timezone.utc).timestamp()),  # Sunday, still week 9
        snap(6, datetime(2026, 3, 2, 9, tzinfo=timezone.utc).timestamp()),  # Monday, week 10
    ]
    kept, _ = decide(snaps, keep_weekly=2)
    assert set(kept) == {6, 5}
    kept, _ = decide(snaps, keep_monthly=3)
    assert kept == {6: ["newest of stream", "monthly #1"], 4: ["monthly #2"], 3: ["monthly #3"]}
    kept, removed = decide(snaps, keep_yearly=2)
    assert kept == {6: ["newest of stream", "yearly #1"], 3: ["yearly #2"]}
    assert removed == {1, 2, 4, 5}


def test_timezone_moves_the_day_boundary() -> None:
    # 23:30 UTC and 00:30 UTC fall on two UTC days but on one New York day (18:30 and 19:30)
    snaps = [snap(1, T0 - 12.5 * HOUR), snap(2, T0 - 11.5 * HOUR), snap(3, T0)]
    utc_kept, utc_removed = decide(snaps, keep_daily=2)
    ny_kept, ny_removed = decide(snaps, keep_daily=2, timezone="America/New_York")
    assert utc_kept == {3: ["newest of stream", "daily #1"], 1: ["daily #2"]} and utc_removed == {2}
    assert ny_kept == {3: ["newest of stream", "daily #1"], 2: ["daily #2"]} and ny_removed == {1}


def test_keep_within_is_measured_from_the_streams_newest_snapshot() -> None:
    snaps = [snap(i, T0 - (10 - i) * DAY) for i in range(1, 11)]  # newest is at T0
    kept, removed = decide(snaps, keep_within="3d")
    assert kept == {10: ["newest of stream", "within 3d"], 9: ["within 3d"], 8: ["within 3d"]}
    assert removed == set(range(1, 8))


def test_keep_tag_keeps_tagged_snapshots_and_accepts_globs() -> None:
    snaps = [snap(i, T0 + i) for i in range(1, 6)]
    tags = {SnapshotId("s", 2): ["release-1"], SnapshotId("s", 3): ["nightly"]}
    kept, removed = decide(snaps, tags, keep_tags=("release-*",), untag=True)
    assert kept == {5: ["newest of stream"], 2: ["tag release-1"]}
    assert removed == {1, 3, 4}


def test_rules_are_ored_and_every_reason_is_listed() -> None:
    snaps = [snap(1, T0 - 2 * DAY), snap(2, T0 - DAY), snap(3, T0)]
    kept, removed = decide(snaps, {SnapshotId("s", 1): ["v1"]}, keep_last=1, keep_daily=2, keep_tags=("v1",))
    assert kept == {3: ["newest of stream", "last #1", "daily #1"], 2: ["daily #2"], 1: ["tag v1"]}
    assert removed == set()


def test_the_newest_snapshot_is_kept_even_by_an_empty_policy() -> None:
    kept, removed = decide([snap(1, T0), snap(2, T0 + 1), snap(3, T0 + 2)])
    assert kept == {3: ["newest of stream"]}
    assert removed == {1, 2}


def test_newest_means_highest_seq_even_when_an_older_save_started_later() -> None:
    # seq 2 started before seq 1 (two writers, or clocks read a second apart): commit order wins
    kept, _ = decide([snap(1, T0 + 10), snap(2, T0)], keep_last=1)
    assert list(kept) == [2]


def test_durations_print_in_their_largest_whole_unit() -> None:
    assert [format_duration(s) for s in (604800, 86400 * 3, 5400, 90, 1.5)] == [
        "1w",
        "3d",
        "90m",
        "90s",
        "1.5s",
    ]


# --- forget on a repository ---------------------------------------------------------------------


def test_forget_writes_tombstones_and_never_deletes_a_manifest(repo: Repository, clock: Clock) -> None:
    for i in range(5):
        clock.t += HOUR
        save(repo, "s", b"x%d" % i)
    manifests = keys(repo, SNAPSHOTS_PREFIX)
    report = tqsnap.faces.api_retention.forget(repo, keep_last=2)
    assert [d.seq for d in report.removed] == [3, 2, 1]
    assert report.tombstones_written == 3
    assert keys(repo, SNAPSHOTS_PREFIX) == manifests
    assert len(keys(repo, TOMBSTONES_PREFIX)) == 3
    assert [s.seq for s in repo.snapshots("s")] == [4, 5]


def test_forget_applies_the_policy_to_each_stream_separately(repo: Repository, clock: Clock) -> None:
    for i in range(3):
        clock.t += HOUR
        save(repo, "a", b"a%d" % i)
        save(repo, "b", b"b%d" % i)
    forget(repo, keep_last=1)
    assert [(s.stream, s.seq) for s in repo.snapshots()] == [("a", 3), ("b", 3)]


def test_forget_can_be_limited_to_chosen_streams(repo: Repository, clock: Clock) -> None:
    for i in range(3):
        clock.t += HOUR
        save(repo, "a", b"a%d" % i)
        save(repo, "b", b"b%d" % i)
    report = forget(repo, streams=["b"], keep_last=1)
    assert report.streams == ["b"]
    assert [(s.stream, s.seq) for s in repo.snapshots()] == [("a", 1), ("a", 2), ("a", 3), ("b", 3)]


def test_dry_run_lists_every_snapshot_with_its_reason_and_writes_nothing(
    repo: Repository, clock: Clock
) -> None:
    for i in range(4):
        clock.t += HOUR
        save(repo, "s", b"x%d" % i)
    repo.tag("release", "s", 1)
    report = forget(repo, keep_last=1, keep_tags=["release"], dry_run=True)
    assert [(d.seq, d.keep, d.reasons) for d in report.decisions] == [
        (4, True, ["newest of stream", "last #1"]),
        (3, False, []),
        (2, False, []),
        (1, True, ["tag release"]),
    ]
    assert keys(repo, TOMBSTONES_PREFIX) == []


def test_writers_skip_a_forgotten_snapshot_as_parent(repo: Repository, clock: Clock) -> None:
    save(repo, "s", b"one")
    save(repo, "s", b"two")
    repo.write_tombstone("s", 2)  # only possible by hand: forget always keeps the newest
    w = SnapshotWriter.begin(repo, "s", "raw")
    assert w.parent == SnapshotId("s", 1)


# --- bad input: typed errors, nothing written ---------------------------------------------------


def test_a_policy_without_keep_rules_is_refused_unless_all_is_given(repo: Repository) -> None:
    for i in range(3):
        save(repo, "s", b"x%d" % i)
    with pytest.raises(PolicyError, match="no keep rule"):
        forget(repo)
    assert keys(repo, TOMBSTONES_PREFIX) == []
    report = forget(repo, allow_empty_policy=True)
    assert [d.seq for d in report.kept] == [3]
    assert [s.seq for s in repo.snapshots("s")] == [3]


@pytest.mark.parametrize(
    "field", ["keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly"]
)
def test_negative_counts_are_refused(repo: Repository, field: str) -> None:
    save(repo, "s", b"x")
    save(repo, "s", b"y")
    with pytest.raises(PolicyError, match="negative"):
        forget(repo, **{field: -1})  # type: ignore[arg-type]
    assert keys(repo, TOMBSTONES_PREFIX) == []


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ({"keep_within": -3 * DAY}, "negative"),
        ({"keep_within": "-3d"}, "cannot parse duration"),
        ({"keep_within": "soon"}, "cannot parse duration"),
        ({"keep_last": 1, "timezone": "Mars/Olympus"}, "unknown timezone"),
        ({"keep_last": 1.5}, "whole number"),
        ({"keep_tags": [""]}, "tag name"),
    ],
)
def test_malformed_policies_are_refused(policy: dict[str, object], message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        RetentionPolicy(**policy)  # type: ignore[arg-type]


def test_an_unknown_stream_is_refused_and_nothing_is_forgotten(repo: Repository) -> None:
    save(repo, "s", b"x")
    save(repo, "s", b"y")
    with pytest.raises(SnapshotNotFoundError, match="stream 'nope'.*known streams: s"):
        forget(repo, streams=["s", "nope"], keep_last=1)
    assert keys(repo, TOMBSTONES_PREFIX) == []


# --- the command --------------------------------------------------------------------------------


def test_cli_forget_dry_run_prints_decisions_as_json(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    url = str(tmp_path / "repo")
    tqsnap.init_repo(url, grace="1h", max_write_duration="10m")
    for i in range(3):
        tqsnap.save(url, {"x": b"v%d" % i}, stream="run")
    code = main(["forget", url, "--keep-last", "2", "--dry-run", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0
    assert doc["dry_run"] is True and doc["removed"] == 1 and doc["tombstones_written"] == 0
    assert [(s["seq"], s["action"]) for s in doc["snapshots"]] == [(3, "keep"), (2, "keep"), (1, "remove")]
    assert doc["snapshots"][1]["reasons"] == ["last #2"]


def test_cli_forget_prints_a_table_and_writes_tombstones(
    tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = str(tmp_path / "repo")
    tqsnap.init_repo(url, grace="1h", max_write_duration="10m")
    for i in range(3):
        tqsnap.save(url, {"x": b"v%d" % i}, stream="run")
    assert main(["forget", url, "--stream", "run", "--keep-last", "1"]) == 0
    out = capsys.readouterr().out
    assert "newest of stream, last #1" in out and "remove" in out and "2 tombstones written" in out
    assert [s.seq for s in tqsnap.snapshots(url)] == [3]


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["--keep-last", "-2"], 2, "negative"),
        ([], 2, "no keep rule"),
        (["--keep-last", "1", "--stream", "ghost"], 3, "stream 'ghost'"),
        (["--keep-within", "forever"], 2, "cannot parse duration"),
        (["--keep-daily", "1", "--timezone", "Nowhere/Town"], 2, "unknown timezone"),
    ],
)
def test_cli_forget_refuses_bad_input_with_documented_exit_codes(
    tmp_path, capsys: pytest.CaptureFixture[str], argv: list[str], code: int, message: str
) -> None:
    url = str(tmp_path / "repo")
    tqsnap.init_repo(url, grace="1h", max_write_duration="10m")
    tqsnap.save(url, {"x": b"1"}, stream="run")
    tqsnap.save(url, {"x": b"2"}, stream="run")
    assert main(["forget", url, *argv]) == code
    assert message in capsys.readouterr().err
    assert [s.seq for s in tqsnap.snapshots(url)] == [1, 2]


def test_cli_forget_all_keeps_only_the_newest_of_each_stream(tmp_path) -> None:
    url = str(tmp_path / "repo")
    tqsnap.init_repo(url, grace="1h", max_write_duration="10m")
    for i in range(3):
        tqsnap.save(url, {"x": b"a%d" % i}, stream="a")
        tqsnap.save(url, {"x": b"b%d" % i}, stream="b")
    assert main(["forget", url, "--all"]) == 0
    assert [(s.stream, s.seq) for s in tqsnap.snapshots(url)] == [("a", 3), ("b", 3)]
