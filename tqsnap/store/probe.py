"""Check a store's promises against the real endpoint before trusting them.

tqsnap's safety rests on a few promises of the store (docs/protocol.md): a conditional create
that exactly one racer wins, ranged reads, a clock that stamps LastModified, deletes that
delete. Some servers and proxies break them silently: a proxy that drops ``If-None-Match``
turns every commit into an overwrite; moto's conditional PUT is check-then-write, and it
spools bodies above 1 MiB to disk between the check and the write. So :func:`probe_store`
exercises each promise with objects under a probe prefix (:data:`PROBE_PREFIX`) that it
removes afterwards, and reports what it found; ``tqsnap init`` refuses a store whose
conditional create fails for shared use, and ``tqsnap doctor`` prints the findings.

A probe can prove a store broken, never prove it sound: a race that one run of racers does not
lose may be lost on another day. It runs a small and a large (> 1 MiB) object, both alone and
with concurrent racers.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import (
    AccessDeniedError,
    BucketNotFoundError,
    CommitOutcomeUnknownError,
    ConditionalWriteUnsupportedError,
    StoreError,
)
from .base import ObjectStore

log = logging.getLogger(__name__)

#: Probe objects live under this prefix of the repository root, never among its data.
PROBE_PREFIX = "tqsnap-probe/"
SMALL = 4 * 1024
#: Above 1 MiB: moto (and any server that spools large bodies) is checked where it races.
LARGE = 1536 * 1024
RACERS = 8
#: A store clock this far from the client's is reported (gc and writers use the store's).
SKEW_WARN_S = 60.0
#: LastModified this far from the store's own clock means two clocks disagree on the server.
STAMP_WARN_S = 30.0

OK, FAIL, WARN, SKIP = "ok", "FAIL", "warn", "n/a"


@dataclass
class Finding:
    """One promise checked: ``status`` is ok, FAIL, warn or n/a; ``detail`` says what was seen."""

    check: str
    status: str
    detail: str
    required: bool = True  # a FAIL of a required check makes the store unsafe for shared use


@dataclass
class ProbeResult:
    """Every finding of one probe, with the measured clock skew."""

    url: str
    findings: list[Finding] = field(default_factory=list)
    clock_skew_s: float | None = None
    seconds: float = 0.0

    @property
    def atomic_create(self) -> bool:
        """True when no put-if-absent check failed (they may still be inconclusive)."""
        return not any(f.check.startswith("put-if-absent") and f.status == FAIL for f in self.findings)

    @property
    def ok(self) -> bool:
        return not any(f.status == FAIL and f.required for f in self.findings)

    def failed(self) -> list[Finding]:
        return [f for f in self.findings if f.status == FAIL]

    def to_json(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "ok": self.ok,
            "atomic_create": self.atomic_create,
            "clock_skew_s": self.clock_skew_s,
            "seconds": round(self.seconds, 3),
            "findings": [asdict(f) for f in self.findings],
        }


class _Probe:
    def __init__(self, store: ObjectStore, racers: int, full: bool) -> None:
        self.store = store
        self.racers = racers
        self.full = full
        self.prefix = f"{PROBE_PREFIX}{secrets.token_hex(8)}/"
        self.result = ProbeResult(store.url)

    def add(self, check: str, status: str, detail: str, *, required: bool = True) -> None:
        self.result.findings.append(Finding(check, status, detail, required))

    def run(self) -> ProbeResult:
        started = time.monotonic()
        try:
            for label, size in (("small", SMALL), ("large", LARGE)):
                self.create_twice(label, size)
                if self.full and self.racers > 1:
                    self.race(label, size)
            if self.full:
                self.ranged_get()
                self.clock()
                self.multipart()
        finally:
            self.cleanup()
        self.result.seconds = time.monotonic() - started
        return self.result

    def _guard(self, check: str, fn: Any, *, required: bool = True) -> None:
        try:
            fn()
        except CommitOutcomeUnknownError as exc:
            self.add(check, WARN, f"inconclusive: a reply was lost ({exc})", required=required)
        except (AccessDeniedError, BucketNotFoundError) as exc:
            if not self.full:
                raise  # init: the real problem, reported as such rather than as a failed probe
            self.add(check, FAIL, f"{type(exc).__name__}: {exc}", required=required)
        except StoreError as exc:
            self.add(check, FAIL, f"{type(exc).__name__}: {exc}", required=required)

    # --- put-if-absent ---------------------------------------------------------------------

    def create_twice(self, label: str, size: int) -> None:
        check = f"put-if-absent ({label}, {size // 1024} KiB)"

        def run() -> None:
            if not self.store.atomic_create:
                self.add(
                    check,
                    FAIL,
                    "the store has no atomic create (S3 conditional_mode none, or a filesystem without a native precondition)",
                )
                return
            key = f"{self.prefix}create-{label}"
            first, second = _pattern(size, 1), _pattern(size, 2)
            if not self.store.put_if_absent(key, first):
                self.add(check, FAIL, f"a create of a fresh key {key!r} answered 'exists'")
                return
            again = self.store.put_if_absent(key, second)
            kept = self.store.get(key) == first
            if again or not kept:
                self.add(
                    check,
                    FAIL,
                    "a second create of the same key was accepted"
                    + ("" if kept else " and replaced the first object")
                    + ": the server or a proxy ignores If-None-Match",
                )
                return
            self.add(check, OK, "a second create of the same key was refused; the first object kept")

        self._guard(check, run)

    def race(self, label: str, size: int) -> None:
        check = f"put-if-absent race ({label}, {self.racers} racers)"
        if not self.store.atomic_create:
            return

        def run() -> None:
            key = f"{self.prefix}race-{label}"
            barrier = threading.Barrier(self.racers)

            def racer(i: int) -> bool | None:
                try:
                    barrier.wait(timeout=30)
                except threading.BrokenBarrierError:
                    return None
                try:
                    return self.store.put_if_absent(key, _pattern(size, 10 + i))
                except CommitOutcomeUnknownError:
                    return None

            with ThreadPoolExecutor(self.racers, thread_name_prefix="tqsnap-probe") as pool:
                answers = list(pool.map(racer, range(self.racers)))
            winners = [i for i, a in enumerate(answers) if a is True]
            unknown = answers.count(None)
            stored = self.store.get(key)
            holder = [i for i in range(self.racers) if stored == _pattern(size, 10 + i)]
            if len(winners) > 1 or (len(winners) == 1 and holder != winners):
                self.add(check, FAIL, f"{len(winners)} racers were told they created the key; it holds racer {holder}")
            elif not winners and not unknown:
                self.add(check, FAIL, "no racer created the key")
            elif unknown:
                self.add(check, WARN, f"{len(winners)} winner(s), {unknown} racer(s) got no answer", required=False)
            else:
                self.add(check, OK, f"exactly one of {self.racers} concurrent creates won")

        self._guard(check, run)

    # --- reads, clock, parts, deletes ------------------------------------------------------

    def ranged_get(self) -> None:
        check = "ranged GET"

        def run() -> None:
            key = f"{self.prefix}range"
            data = _pattern(SMALL, 3)
            self.store.put(key, data)
            got = self.store.get_range(key, 100, 1000)
            tail = self.store.get_range(key, SMALL - 10, 100)
            if got != data[100:1100] or tail != data[-10:]:
                self.add(check, FAIL, f"asked for 1000 bytes at 100 and the 10 last, got {len(got)} and {len(tail)} bytes")
                return
            self.add(check, OK, "a range and a range past the end returned exactly the bytes asked for")

        self._guard(check, run)

    def clock(self) -> None:
        check = "clock"

        def run() -> None:
            key = f"{self.prefix}clock"
            before = time.time()
            self.store.put(key, b"t")
            after = time.time()
            info = self.store.head(key)
            store_now = self.store.now()
            local_now = time.time()
            skew = store_now - local_now
            self.result.clock_skew_s = round(skew, 3)
            if info is None:
                self.add(check, FAIL, f"an object just written ({key!r}) is not found by HEAD")
                return
            stamp_gap = info.last_modified - (before + after) / 2 - skew
            detail = f"store clock {skew:+.1f}s from this machine's; LastModified {stamp_gap:+.1f}s from the store clock"
            if abs(stamp_gap) > STAMP_WARN_S:
                self.add(check, WARN, detail + ": the store stamps objects with another clock", required=False)
            elif abs(skew) > SKEW_WARN_S:
                self.add(check, WARN, detail + " (tqsnap uses the store's clock; a large skew is worth fixing)", required=False)
            else:
                self.add(check, OK, detail)

        self._guard(check, run, required=False)
        for finding in self.result.findings:
            if finding.check == check:
                finding.required = False

    def multipart(self) -> None:
        check = "multipart upload"
        upload = _multipart_uploader(self.store)
        if upload is None:
            self.add(check, SKIP, "the store does not upload in parts", required=False)
            return

        def run() -> None:
            key = f"{self.prefix}multipart"
            size = upload(key)
            info = self.store.head(key)
            if info is None or info.size != size:
                self.add(check, FAIL, f"a completed {size}-byte multipart upload reads back as {info}")
                return
            self.add(check, OK, f"a {size // 2**20} MiB upload in two parts completed and reads back whole")

        self._guard(check, run)

    def cleanup(self) -> None:
        check = "delete"
        if not self.full:
            # init runs with a writer's credentials, which may not delete anything (the
            # terraform module's writer role cannot): its few probe objects are left for gc,
            # which removes objects under the probe prefix once they are older than grace.
            self.add(check, OK, f"probe objects left under {self.prefix!r} for gc", required=False)
            return
        try:
            keys = [info.key for info in self.store.list(self.prefix)]
            self.store.delete_many(keys)
            left = [info.key for info in self.store.list(self.prefix)]
        except StoreError as exc:
            self.add(check, FAIL, f"{type(exc).__name__}: {exc}; remove {self.prefix!r} by hand")
            return
        if left:
            self.add(check, FAIL, f"{len(left)} of {len(keys)} probe objects remain after delete: {left[:3]}")
        else:
            self.add(check, OK, f"{len(keys)} probe objects listed and deleted")


def probe_store(store: ObjectStore, *, racers: int = RACERS, full: bool = True) -> ProbeResult:
    """Exercise the store's promises under a fresh probe prefix, and remove what was written.

    ``full=False`` checks only what ``init`` needs (a second create of a small and of a large
    object is refused): a handful of requests, and no deletes: gc removes what it leaves.
    """
    result = _Probe(store, racers, full).run()
    for f in result.findings:
        log.debug("probe %s: %s %s: %s", store.url, f.check, f.status, f.detail)
    return result


def served_remotely(store: ObjectStore) -> bool:
    """True for a store whose conditional create is decided by a server (S3 and compatibles)
    or by an fsspec filesystem (``probe_on_init``), under any wrappers; the local and memory
    stores implement it themselves."""
    while getattr(store, "inner", None) is not None:
        store = store.inner  # type: ignore[attr-defined]
    return getattr(store, "_s3", None) is not None or getattr(store, "probe_on_init", False)


def check_store_for_init(
    store: ObjectStore, *, single_writer: bool, unless_exists: str | None = None
) -> ProbeResult | None:
    """The probe ``init`` runs on a server-backed store before it creates ``tqsnap.json``.

    Raises :class:`~tqsnap.errors.ConditionalWriteUnsupportedError` when a conditional create
    was accepted twice and the repository is not being created for a single writer: several
    writers on such a store would overwrite each other's commits. Nothing is probed when the
    key ``unless_exists`` (the repository config) is already there.
    """
    if not served_remotely(store) or (unless_exists is not None and store.exists(unless_exists)):
        return None  # nothing to decide: a local store, or a repository that exists already
    result = probe_store(store, full=False)
    if not result.atomic_create and not single_writer:
        why = "; ".join(f"{f.check}: {f.detail}" for f in result.failed() if f.check.startswith("put-if-absent"))
        raise ConditionalWriteUnsupportedError(
            f"{store.url} failed the put-if-absent probe ({why}), so concurrent writers could "
            "overwrite each other's snapshots and it is refused for shared use. Use a store (and "
            "proxy) that honours If-None-Match, or create the repository for one writer at a time "
            "with `tqsnap init --single-writer` (init_repo(..., single_writer=True)); "
            "`tqsnap doctor URL` prints every finding"
        )
    return result


def _multipart_uploader(store: ObjectStore) -> Any:
    """For a store that uploads in parts (S3, under any wrappers): a function that uploads a
    two-part object to a key and returns its size; None for other stores."""
    while getattr(store, "inner", None) is not None:
        store = store.inner  # type: ignore[attr-defined]
    requests = getattr(store, "_s3", None)
    if requests is None:
        return None
    from .s3_multipart import MIN_PART, upload_in_parts

    def upload(key: str) -> int:
        size = MIN_PART + 4096
        upload_in_parts(requests, key, _pattern(size, 4), size, MIN_PART, conditional=False)
        return size

    return upload


def _pattern(size: int, seed: int) -> bytes:
    """``size`` bytes that differ for every seed (so a replaced object is recognised)."""
    block = bytes((seed * 31 + i * 7) % 251 for i in range(251))
    return (block * (size // 251 + 1))[:size]
