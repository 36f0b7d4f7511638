"""The store probe, ``tqsnap doctor`` and the probe ``init`` runs, against real stores.

A local directory, SeaweedFS and moto are probed as they are. A store that drops
preconditions is made the way it happens in the field: a real HTTP proxy in front of SeaweedFS
that forwards every request with its ``If-None-Match`` header removed (SeaweedFS here checks no
signatures, so the stripped request is served as a plain PUT).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from faultproxy import FaultProxy, _Handler

import tqsnap
from tqsnap.errors import ConditionalWriteUnsupportedError, ManifestError
from tqsnap.faces.cli import main
from tqsnap.format.config import RepoConfig
from tqsnap.format.keys import CONFIG_KEY
from tqsnap.store import open_store
from tqsnap.store.probe import FAIL, OK, PROBE_PREFIX, probe_store

CREATE_CHECKS = {"put-if-absent (small, 4 KiB)", "put-if-absent (large, 1536 KiB)"}


class _DropPreconditions(_Handler):
    """Forwards every request without its conditional headers, like a careless proxy."""

    def _forward(self, headers: list[tuple[str, str]], body: bytes) -> Any:
        kept = [(k, v) for k, v in headers if k.lower() not in ("if-none-match", "if-match")]
        return super()._forward(kept, body)


@pytest.fixture
def careless_proxy(seaweedfs_endpoint: Any) -> Iterator[tuple[str, dict[str, str]]]:
    """``(url, options)`` of a fresh SeaweedFS bucket reached through a proxy that drops If-None-Match."""
    url, options = seaweedfs_endpoint.make_bucket("repo")
    proxy = FaultProxy(seaweedfs_endpoint.endpoint_url)
    proxy._server.RequestHandlerClass = type("Handler", (_DropPreconditions,), {"proxy": proxy})
    try:
        yield url, {**options, "endpoint_url": proxy.endpoint_url}
    finally:
        proxy.close()


def _by_check(result: Any) -> dict[str, Any]:
    return {f.check: f for f in result.findings}


def _leftovers(store: Any) -> list[str]:
    return [i.key for i in store.list(PROBE_PREFIX)]


def test_a_local_directory_keeps_every_promise(tmp_path: Path) -> None:
    store = open_store(str(tmp_path))
    result = probe_store(store)
    found = _by_check(result)
    assert result.ok and result.atomic_create
    for check in CREATE_CHECKS | {"put-if-absent race (small, 8 racers)", "ranged GET", "delete"}:
        assert found[check].status == OK, found[check]
    assert found["multipart upload"].status == "n/a"
    assert abs(result.clock_skew_s) < 1
    assert _leftovers(store) == []


@pytest.mark.s3
def test_seaweedfs_keeps_every_promise_and_doctor_prints_them(
    seaweedfs_endpoint: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    url, options = seaweedfs_endpoint.make_bucket("repo")
    code = main(["doctor", url, "--endpoint-url", options["endpoint_url"], "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0, doc
    statuses = {f["check"]: f["status"] for f in doc["findings"]}
    assert doc["ok"] and doc["atomic_create"]
    assert statuses["multipart upload"] == OK
    assert statuses["ranged GET"] == OK and statuses["delete"] == OK
    assert all(statuses[c] == OK for c in CREATE_CHECKS)
    assert abs(doc["clock_skew_s"]) < 5
    assert _leftovers(open_store(url, **options)) == []

    assert main(["doctor", url, "--endpoint-url", options["endpoint_url"]]) == 0
    table = capsys.readouterr().out
    assert "put-if-absent (large, 1536 KiB)" in table and "keeps every promise" in table


@pytest.mark.s3
def test_moto_is_probed_above_one_mib_alone_and_under_racers(moto_endpoint: Any) -> None:
    """moto's conditional PUT is check-then-write; whether a race is lost varies by run, so
    the report must hold the large-object checks and be consistent with its own verdict."""
    url, options = moto_endpoint.make_bucket("repo")
    store = open_store(url, **options)
    result = probe_store(store, racers=12)
    found = _by_check(result)
    for check in (*CREATE_CHECKS, "put-if-absent race (large, 12 racers)"):
        assert check in found and found[check].status in (OK, FAIL, "warn"), found
    assert result.atomic_create == all(found[c].status != FAIL for c in found if c.startswith("put-if-absent"))
    assert found["multipart upload"].status == OK
    assert _leftovers(store) == []


@pytest.mark.s3
def test_a_proxy_that_drops_if_none_match_fails_the_probe(
    careless_proxy: tuple[str, dict[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    url, options = careless_proxy
    result = probe_store(open_store(url, **options))
    found = _by_check(result)
    assert not result.ok and not result.atomic_create
    for check in CREATE_CHECKS:
        assert found[check].status == FAIL and "If-None-Match" in found[check].detail
    assert main(["doctor", url, "--endpoint-url", options["endpoint_url"]]) == 1
    assert "UNSAFE for several writers" in capsys.readouterr().out


@pytest.mark.s3
def test_init_refuses_such_a_store_for_shared_use_and_writes_nothing(
    careless_proxy: tuple[str, dict[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    url, options = careless_proxy
    with pytest.raises(ConditionalWriteUnsupportedError, match="single-writer"):
        tqsnap.init_repo(url, storage_options=options)
    store = open_store(url, **options)
    left = [i.key for i in store.list("")]
    assert all(k.startswith(PROBE_PREFIX) for k in left), "a refused init writes nothing but its probe objects"
    code = main(["init", url, "--endpoint-url", options["endpoint_url"]])
    err = capsys.readouterr().err
    assert code == 4 and "refused for shared use" in err and "Traceback" not in err
    assert not store.exists(CONFIG_KEY)


@pytest.mark.s3
def test_single_writer_init_is_allowed_and_recorded(
    careless_proxy: tuple[str, dict[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    url, options = careless_proxy
    code = main(["init", url, "--endpoint-url", options["endpoint_url"], "--single-writer", "--json"])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["single_writer"] is True
    config = json.loads(open_store(url, **options).get(CONFIG_KEY))
    assert config["single_writer"] is True
    repo = tqsnap.open_repo(url, storage_options=options)
    assert repo.config.single_writer is True
    info = tqsnap.save(repo, {"x": b"one writer"}, stream="s")
    assert tqsnap.load(repo, stream="s", snapshot=info.seq) == {"x": b"one writer"}


@pytest.mark.s3
def test_init_on_a_sound_server_probes_and_leaves_its_objects_for_gc(seaweedfs_endpoint: Any) -> None:
    """init may run with a writer's credentials, which cannot delete: gc removes its probe objects."""
    url, options = seaweedfs_endpoint.make_bucket("repo")
    repo = tqsnap.init_repo(url, grace=2.0, max_write_duration=0.5, storage_options=options)
    assert repo.config.single_writer is False
    assert "single_writer" not in json.loads(repo.store.get(CONFIG_KEY)), "shared configs stay as before"
    left = _leftovers(repo.store)
    assert left, "the probe objects stay until gc"
    time.sleep(3.0)  # older than grace, in the server's clock
    report = tqsnap.gc(url, storage_options=options)
    assert report.probe_objects_deleted == len(left) and _leftovers(repo.store) == []


def test_configs_without_the_field_read_as_shared_and_a_bad_value_is_refused() -> None:
    old = RepoConfig("ab" * 8, 1.0).encode()
    assert b"single_writer" not in old and RepoConfig.decode(old, CONFIG_KEY).single_writer is False
    doc = json.loads(old) | {"single_writer": "yes"}
    with pytest.raises(ManifestError, match="single_writer"):
        RepoConfig.decode(json.dumps(doc).encode(), CONFIG_KEY)
    assert RepoConfig.decode(RepoConfig("ab" * 8, 1.0, single_writer=True).encode(), CONFIG_KEY).single_writer


def test_single_writer_on_a_local_directory_is_recorded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = str(tmp_path / "repo")
    assert main(["init", url, "--single-writer", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["single_writer"] is True
    assert tqsnap.open_repo(url).config.single_writer is True
    assert main(["doctor", str(tmp_path / "other"), "--single-writer"]) == 0
