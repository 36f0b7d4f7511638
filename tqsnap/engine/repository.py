"""A repository: the config, the streams, their manifests, tombstones and tags.

Everything here is read-mostly. The only writes are the one-time config create, tag creates and
tombstones, each a put-if-absent of an immutable object.
"""

from __future__ import annotations

import logging
import re
import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ..errors import (
    FormatError,
    KindMismatchError,
    ManifestError,
    ObjectNotFoundError,
    RepositoryNotFoundError,
    SnapshotNotFoundError,
    UnsafeConfigError,
)
from ..format.config import DEFAULT_GRACE, DEFAULT_MAX_WRITE_DURATION, RepoConfig, parse_duration
from ..format.keys import (
    CONFIG_KEY,
    SNAPSHOTS_PREFIX,
    TOMBSTONES_PREFIX,
    parse_seq_key,
    parse_stream_key,
    snapshot_key,
    snapshot_prefix,
    tombstone_key,
    tombstone_prefix,
    validate_name,
)
from ..format.manifest import Manifest, SnapshotId, Tag, Tombstone
from ..format.strict import MAX_MANIFEST_BYTES, MAX_SEQ, MAX_SMALL_DOC_BYTES
from ..store import ObjectStore, open_store
from ..store.probe import check_store_for_init
from .config_versions import current_config
from .create_once import create_once
from .reader import SnapshotReader, VerifyReport
from .tags import list_tags, read_tag, set_tag

log = logging.getLogger(__name__)

#: A seq given as text: ASCII digits only, nothing around them (no sign, space or '.').
_SEQ_TEXT = re.compile(r"[0-9]{1,20}", re.ASCII)


def read_document(store: ObjectStore, key: str, limit: int) -> bytes:
    """Read a JSON object of the repository, at most ``limit + 1`` bytes of it.

    One ranged GET bounds the allocation by the limit whatever the object's real size (a
    longer object comes back cut, one byte over the limit, and the parser refuses it by
    size), so a crafted multi-gigabyte manifest costs nothing to refuse.
    """
    return store.get_range(key, 0, limit + 1)


@dataclass
class SnapshotInfo:
    """A summary of one committed snapshot, as listings and saves report it."""

    stream: str
    seq: int
    kind: str
    parent: SnapshotId | None
    started_at: float
    committed_at: float
    write_id: str
    metadata: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    tombstoned: bool = False

    @property
    def id(self) -> SnapshotId:
        return SnapshotId(self.stream, self.seq)

    @classmethod
    def from_manifest(cls, m: Manifest, tombstoned: bool = False) -> SnapshotInfo:
        return cls(
            m.stream,
            m.seq,
            m.kind,
            m.parent,
            m.started_at,
            m.committed_at,
            m.write_id,
            dict(m.metadata),
            dict(m.stats),
            tombstoned,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "stream": self.stream,
            "seq": self.seq,
            "kind": self.kind,
            "parent": self.parent.to_json() if self.parent else None,
            "started_at": self.started_at,
            "committed_at": self.committed_at,
            "write_id": self.write_id,
            "metadata": self.metadata,
            "stats": self.stats,
            "tombstoned": self.tombstoned,
        }


class Repository:
    """Opened with :meth:`open` (or :meth:`init`); hands out readers and writers."""

    def __init__(self, store: ObjectStore, config: RepoConfig):
        self.store = store
        self.config = config

    @property
    def url(self) -> str:
        return self.store.url

    # --- opening -----------------------------------------------------------------------------

    @classmethod
    def init(
        cls,
        url: str | ObjectStore,
        *,
        grace: float | str = DEFAULT_GRACE,
        max_write_duration: float | str = DEFAULT_MAX_WRITE_DURATION,
        exist_ok: bool = True,
        storage_options: dict[str, Any] | None = None,
        single_writer: bool = False,
    ) -> Repository:
        """Create ``tqsnap.json`` with put-if-absent. If one exists, open it (or raise).

        A new repository on an S3 server is created only if the server refuses a second
        put-if-absent of the same key (:func:`~tqsnap.store.probe.check_store_for_init`), unless
        ``single_writer``, which is then recorded in ``tqsnap.json``.
        """
        store = open_store(url, **(storage_options or {}))
        config = RepoConfig(
            repo_id=secrets.token_hex(8),
            created_at=store.now(),
            grace=parse_duration(grace),
            max_write_duration=parse_duration(max_write_duration),
            single_writer=single_writer,
        )
        config.check_safe()
        check_store_for_init(store, single_writer=single_writer, unless_exists=CONFIG_KEY)
        if store.put_if_absent(CONFIG_KEY, config.encode()):
            log.info(
                "created repository %s (grace %gs, max_write_duration %gs)",
                store.url,
                config.grace,
                config.max_write_duration,
            )
            return cls(store, config)
        if not exist_ok:
            raise FileExistsError(f"a repository already exists at {store.url}")
        repo = cls.open(store, storage_options=storage_options)
        have = (repo.config.grace, repo.config.max_write_duration)
        if have != (config.grace, config.max_write_duration):
            raise UnsafeConfigError(
                f"a repository already exists at {store.url} with grace {have[0]:g}s and "
                f"max_write_duration {have[1]:g}s, not {config.grace:g}s and {config.max_write_duration:g}s; "
                f"change them with `tqsnap config {store.url} --grace ... --max-write-duration ...`"
            )
        return repo

    @classmethod
    def open(
        cls, url: str | ObjectStore, *, create: bool = False, storage_options: dict[str, Any] | None = None
    ) -> Repository:
        """Open an existing repository; with ``create=True`` a missing one is made with defaults."""
        store = open_store(url, **(storage_options or {}))
        try:
            raw = read_document(store, CONFIG_KEY, MAX_SMALL_DOC_BYTES)
        except ObjectNotFoundError:
            if create:
                return cls.init(store, storage_options=storage_options)
            raise RepositoryNotFoundError(
                f"no repository at {store.url} ({CONFIG_KEY} is missing); run `tqsnap init {store.url}`"
            ) from None
        config = current_config(store, RepoConfig.decode(raw, CONFIG_KEY))
        config.check_safe()
        if config.single_writer:
            store.declare_single_writer()
        return cls(store, config)

    # --- listing -----------------------------------------------------------------------------

    def streams(self) -> list[str]:
        """Every stream with at least one manifest (tombstoned or not)."""
        names = set()
        for info in self.store.list(SNAPSHOTS_PREFIX):
            parsed = parse_stream_key(info.key, SNAPSHOTS_PREFIX)
            if parsed:
                names.add(parsed[0])
        return sorted(names)

    def manifest_seqs(self, stream: str) -> list[int]:
        """Seqs of every manifest of the stream, tombstoned ones included, ascending."""
        prefix = snapshot_prefix(stream)
        seqs = [parse_seq_key(i.key, prefix) for i in self.store.list(prefix)]
        return sorted(s for s in seqs if s is not None)

    def tombstoned_seqs(self, stream: str) -> set[int]:
        prefix = tombstone_prefix(stream)
        seqs = {parse_seq_key(i.key, prefix) for i in self.store.list(prefix)}
        seqs.discard(None)
        return seqs  # type: ignore[return-value]

    def visible_seqs(self, stream: str) -> list[int]:
        """Seqs readers may use: manifests without a tombstone."""
        dead = self.tombstoned_seqs(stream)
        return [s for s in self.manifest_seqs(stream) if s not in dead]

    def load_manifest(self, stream: str, seq: int) -> Manifest:
        key = snapshot_key(stream, seq)
        try:
            raw = read_document(self.store, key, MAX_MANIFEST_BYTES)
        except ObjectNotFoundError:
            raise SnapshotNotFoundError(
                f"snapshot {stream}@{seq} does not exist ({key} is missing)"
            ) from None
        manifest = Manifest.decode(raw, key)
        if manifest.stream != stream or manifest.seq != seq:
            raise ManifestError(f"manifest {key!r} claims to be {manifest.stream}@{manifest.seq}")
        return manifest

    def snapshots(
        self,
        stream: str | None = None,
        *,
        include_tombstoned: bool = False,
        damaged: list[tuple[SnapshotId, Exception]] | None = None,
    ) -> list[SnapshotInfo]:
        """Summaries of the snapshots of one stream (or all), oldest first; manifests read in parallel.

        A manifest that cannot be read as one (malformed, nested too deep) fails the listing,
        unless ``damaged`` is a list: then it is left out and appended there with its error, so
        one damaged manifest does not hide every other snapshot of the repository.
        """
        wanted: list[tuple[str, int, bool]] = []
        for name in [validate_name(stream)] if stream else self.streams():
            dead = self.tombstoned_seqs(name)
            wanted += [
                (name, seq, seq in dead)
                for seq in self.manifest_seqs(name)
                if include_tombstoned or seq not in dead
            ]
        if not wanted:
            return []

        def load(w: tuple[str, int, bool]) -> Manifest | None:
            try:
                return self.load_manifest(w[0], w[1])
            except SnapshotNotFoundError:
                if w[2]:  # a forgotten snapshot that a concurrent gc just finalised
                    return None
                raise
            except (FormatError, RecursionError) as exc:
                if damaged is None:
                    raise
                damaged.append((SnapshotId(w[0], w[1]), exc))
                return None

        with ThreadPoolExecutor(min(16, len(wanted))) as pool:
            manifests = list(pool.map(load, wanted))
        return [
            SnapshotInfo.from_manifest(m, w[2])
            for m, w in zip(manifests, wanted, strict=True)
            if m is not None
        ]

    def tombstones(self) -> list[tuple[Tombstone, float]]:
        """Every tombstone with its LastModified (server time), for gc."""
        out = []
        for info in self.store.list(TOMBSTONES_PREFIX):
            if parse_stream_key(info.key, TOMBSTONES_PREFIX) is None:
                continue
            try:
                raw = read_document(self.store, info.key, MAX_SMALL_DOC_BYTES)
                out.append((Tombstone.decode(raw, info.key), info.last_modified))
            except ObjectNotFoundError:
                continue  # finalised by a concurrent gc
        return out

    # --- resolving ---------------------------------------------------------------------------

    def resolve(self, stream: str, snapshot: str | int = "latest") -> SnapshotId:
        """Turn ``latest``, a seq (int or digits) or ``tag:<name>`` into a visible snapshot id.

        Strict: a seq is an ``int`` (not a bool or float) or a string of ASCII digits; ``1.9``,
        ``True``, ``" 1 "``, ``"٩"`` and ``inf`` are refused, never rounded or coerced.
        """
        validate_name(stream)
        if isinstance(snapshot, str) and snapshot.startswith("tag:"):
            target = self.read_tag(snapshot[4:]).target
            if target.stream != stream:
                raise SnapshotNotFoundError(
                    f"tag {snapshot[4:]!r} names stream {target.stream!r}, not {stream!r}"
                )
            snapshot = target.seq
        visible = self.visible_seqs(stream)
        if snapshot == "latest":
            if not visible:
                raise SnapshotNotFoundError(f"stream {stream!r} has no snapshots in {self.url}")
            return SnapshotId(stream, visible[-1])
        if isinstance(snapshot, int) and not isinstance(snapshot, bool) and 0 <= snapshot <= MAX_SEQ:
            seq = snapshot
        elif isinstance(snapshot, str) and _SEQ_TEXT.fullmatch(snapshot):
            seq = int(snapshot)
        else:
            raise SnapshotNotFoundError(
                f"cannot resolve snapshot {snapshot!r:.60} of stream {stream!r}: use 'latest', "
                "a seq number (ASCII digits) or 'tag:<name>'"
            )
        if seq not in visible:
            raise SnapshotNotFoundError(
                f"snapshot {stream}@{seq} does not exist or was forgotten in {self.url}"
            )
        return SnapshotId(stream, seq)

    def reader(
        self, stream: str, snapshot: str | int = "latest", *, kind: str | None = None, threads: int = 16
    ) -> SnapshotReader:
        """A reader of a visible snapshot; ``kind`` guards against loading the wrong sort of data."""
        sid = self.resolve(stream, snapshot)
        manifest = self.load_manifest(sid.stream, sid.seq)
        if kind is not None and manifest.kind != kind:
            raise KindMismatchError(
                f"snapshot {sid} is a {manifest.kind!r} snapshot, not {kind!r}; load it with the matching API"
            )
        return SnapshotReader(self.store, manifest, threads=threads)

    def verify(self, stream: str, snapshot: str | int = "latest") -> VerifyReport:
        return self.reader(stream, snapshot).verify()

    # --- tags and tombstones -----------------------------------------------------------------

    def tag(self, name: str, stream: str, snapshot: str | int = "latest", *, move: bool = False) -> Tag:
        """Name a visible snapshot; a tag naming another snapshot moves only with ``move=True``.

        Idempotent: tagging the snapshot a tag already names returns the existing tag, so a
        command re-run after a lost reply succeeds (engine/tags.py reads every create back).
        """
        sid = self.resolve(stream, snapshot)
        return set_tag(self.store, validate_name(name, "tag"), sid, move=move)

    def untag(self, name: str) -> Tag:
        """Delete tag ``name`` by writing a version with no target; returns that version."""
        return set_tag(self.store, name, None)

    def read_tag(self, name: str) -> Tag:
        """The live tag ``name`` (its highest version); SnapshotNotFoundError if absent or deleted."""
        return read_tag(self.store, name)

    def tags(self) -> list[Tag]:
        """Every live tag, by name."""
        return list_tags(self.store)

    def write_tombstone(self, stream: str, seq: int, reason: str = "") -> bool:
        """Mark a snapshot forgotten. True if this call wrote the tombstone, False if one existed.

        A tombstone whose reply was lost is read back, so the answer says what was written.
        """
        stone = Tombstone(stream, seq, self.store.now(), reason)
        return create_once(self.store, tombstone_key(stream, seq), stone.encode())

    def close(self) -> None:
        self.store.close()
