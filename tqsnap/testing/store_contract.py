"""The contract every :class:`~tqsnap.store.ObjectStore` keeps, as a reusable pytest suite.

zarr's ``zarr.testing.store.StoreTests`` and restic's backend test suite are the models: a
backend is done when it passes the same tests as every other. To run the suite against a
store, subclass :class:`StoreContract` in a test module under a ``Test`` name and give the
class a ``store`` fixture that yields a fresh, empty store::

    class TestMyStore(StoreContract):
        @pytest.fixture
        def store(self, tmp_path):
            s = MyStore(tmp_path)
            yield s
            s.close()

Class attributes tune what a backend can promise or afford:

- ``race_safe``: ``put_if_absent`` is atomic under concurrency (False for servers whose
  conditional PUT is check-then-write, such as moto);
- ``racers`` and ``race_rounds``: threads per race and how many races;
- ``pagination_keys``: how many keys the listing test writes; with a store whose ``list``
  takes ``page_size``, pages of ``page_size`` keys are asked for so several pages are read.
"""

from __future__ import annotations

import array
import inspect
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from ..errors import ObjectNotFoundError
from ..store.base import ObjectStore


def pattern(n: int, seed: int = 0) -> bytes:
    """Bytes that do not repeat within 64 KiB, so a misplaced range or part is caught."""
    block = bytes((i * 31 + seed * 17 + (i >> 8)) & 0xFF for i in range(65536))
    return (block * (n // len(block) + 1))[:n]


class StoreContract:
    """Tests of every store verb; subclasses supply the ``store`` fixture."""

    race_safe = True
    racers = 8
    race_rounds = 3
    pagination_keys = 25
    page_size = 7

    # --- put and get -------------------------------------------------------------------

    def test_put_then_get_returns_the_bytes(self, store: ObjectStore) -> None:
        store.put("a/b/obj", b"hello")
        assert store.get("a/b/obj") == b"hello"
        store.put("a/b/obj", bytearray(b"overwritten"))  # put overwrites: its keys are the writer's own
        assert store.get("a/b/obj") == b"overwritten"
        store.put("empty", b"")
        assert store.get("empty") == b""
        assert store.exists("empty")

    def test_put_takes_any_contiguous_buffer(self, store: ObjectStore) -> None:
        data = pattern(200_000, seed=3)
        store.put("mv", memoryview(data)[1000:101000])
        assert store.get("mv") == data[1000:101000]
        floats = array.array("d", [1.5, -2.25, 3.0])
        store.put("floats", memoryview(floats))
        assert store.get("floats") == floats.tobytes()
        assert store.put_if_absent("mv-cond", memoryview(bytearray(data))[:5000])
        assert store.get("mv-cond") == data[:5000]

    def test_keys_may_hold_unusual_characters(self, store: ObjectStore) -> None:
        key = "dir/with space+plus=eq,comma@at~tilde"
        store.put(key, b"odd")
        assert store.get(key) == b"odd"
        assert [o.key for o in store.list("dir/")] == [key]

    def test_a_missing_key_is_object_not_found(self, store: ObjectStore) -> None:
        with pytest.raises(ObjectNotFoundError) as err:
            store.get("no/such/key")
        assert "no/such/key" in str(err.value)
        with pytest.raises(ObjectNotFoundError):
            store.get_range("no/such/key", 0, 10)
        with pytest.raises(ObjectNotFoundError):
            store.get_into("no/such/key", memoryview(bytearray(10)))
        assert store.head("no/such/key") is None
        assert not store.exists("no/such/key")

    # --- ranges --------------------------------------------------------------------------

    def test_get_range_is_cut_at_the_end(self, store: ObjectStore) -> None:
        data = pattern(10_000)
        store.put("r", data)
        assert store.get_range("r", 0, 10) == data[:10]
        assert store.get_range("r", 1234, 4321) == data[1234:5555]
        assert store.get_range("r", 9_990, 100) == data[9_990:]
        assert store.get_range("r", 20_000, 10) == b""
        assert store.get_range("r", 5, 0) == b""

    def test_get_into_fills_the_buffer(self, store: ObjectStore) -> None:
        data = pattern(300_000, seed=1)
        store.put("into", data)
        buf = bytearray(len(data))
        assert store.get_into("into", memoryview(buf)) == len(data)
        assert buf == data
        part = bytearray(1000)
        assert store.get_into("into", memoryview(part), start=150_000) == 1000
        assert part == data[150_000:151_000]
        tail = bytearray(100)
        assert store.get_into("into", memoryview(tail), start=len(data) - 40) == 40
        assert tail[:40] == data[-40:]
        assert store.get_into("into", memoryview(bytearray(10)), start=len(data) + 5) == 0

    # --- conditional create --------------------------------------------------------------

    def test_put_if_absent_creates_once(self, store: ObjectStore) -> None:
        assert store.put_if_absent("cfg.json", b"first") is True
        assert store.put_if_absent("cfg.json", b"second") is False
        assert store.get("cfg.json") == b"first"
        store.put("plain", b"p")
        assert store.put_if_absent("plain", b"q") is False
        assert store.get("plain") == b"p"

    def test_racing_put_if_absent_has_exactly_one_winner(self, store: ObjectStore) -> None:
        if not (self.race_safe and store.atomic_create):
            pytest.skip(f"{type(store).__name__} does not promise an atomic create under races")
        for round_ in range(self.race_rounds):
            barrier = threading.Barrier(self.racers)
            key = f"snapshots/s/{round_:020d}.json"

            def race(i: int, key: str = key, barrier: threading.Barrier = barrier) -> bool:
                barrier.wait(timeout=30)
                return store.put_if_absent(key, f"writer-{i}".encode() * 100)

            with ThreadPoolExecutor(self.racers) as pool:
                results = list(pool.map(race, range(self.racers)))
            assert results.count(True) == 1, results
            assert store.get(key) == f"writer-{results.index(True)}".encode() * 100

    # --- head, list, delete, clock -------------------------------------------------------

    def test_head_reports_size_and_store_time(self, store: ObjectStore) -> None:
        store.put("h", b"12345")
        info = store.head("h")
        assert info is not None and (info.key, info.size) == ("h", 5)
        now = store.now()
        assert abs(now - time.time()) < 5
        assert abs(info.last_modified - now) < 5
        (listed,) = store.list("h")
        assert listed.size == 5 and abs(listed.last_modified - info.last_modified) < 2

    def test_list_is_in_key_order_under_a_prefix(self, store: ObjectStore) -> None:
        keys = ["snapshots/s1/002.json", "snapshots/s1/001.json", "snapshots/s10/001.json", "shards/ab/x", "top"]
        for i, key in enumerate(keys):
            store.put(key, b"x" * (i + 1))
        assert [o.key for o in store.list()] == sorted(keys)
        assert [o.key for o in store.list("snapshots/s1/")] == ["snapshots/s1/001.json", "snapshots/s1/002.json"]
        assert [o.key for o in store.list("snapshots/s1")] == sorted(keys)[1:4]
        assert {o.key: o.size for o in store.list("shards/")} == {"shards/ab/x": 4}
        assert list(store.list("nothing/")) == []

    def test_list_reads_every_page(self, store: ObjectStore) -> None:
        keys = [f"many/{i % 3}/{i:05d}" for i in range(self.pagination_keys)]
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda k: store.put(k, k.encode()), keys))
        store.put("other", b"o")
        if "page_size" in inspect.signature(store.list).parameters:
            listed = list(store.list("many/", page_size=self.page_size))  # type: ignore[call-arg]
        else:
            listed = list(store.list("many/"))
        assert [o.key for o in listed] == sorted(keys)
        assert all(o.size == len(o.key) for o in listed)

    def test_delete_many_ignores_absent_keys(self, store: ObjectStore) -> None:
        for key in ("d/1", "d/2", "d/3", "keep"):
            store.put(key, b"x")
        requests = store.delete_many(iter(["d/1", "d/3", "d/absent"]))
        assert requests >= 1
        assert [o.key for o in store.list()] == ["d/2", "keep"]
        assert store.delete_many([]) == 0
        with pytest.raises(ObjectNotFoundError):
            store.get("d/1")

    def test_the_clock_moves_forward(self, store: ObjectStore) -> None:
        first = store.now()
        time.sleep(0.05)
        assert store.now() >= first - 1.0  # one-second resolution on servers that send Date

    def test_no_incomplete_uploads_after_complete_puts(self, store: ObjectStore) -> None:
        store.put("u", pattern(1000))
        assert list(store.list_uploads()) == []
