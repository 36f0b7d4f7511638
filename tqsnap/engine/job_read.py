"""Read one part of a job snapshot with the reader of its kind.

:func:`open_reader` is what every adapter's restore calls: for a single-kind snapshot it is
``Repository.reader``; for a ``job`` snapshot it hands back a reader over the chosen part
(:func:`tqsnap.format.job.part_manifest`), whose items, shards and ``extra`` are exactly those
a single-kind snapshot of that kind would have. So a DCP part reshards, and a queue part
restores into any number of units, with the code that restores a single-kind snapshot.
"""

from __future__ import annotations

from ..errors import KindMismatchError, SnapshotNotFoundError
from ..format.job import JOB_KIND, JobHeader, part_manifest
from ..format.manifest import Manifest, SnapshotId
from .reader import SnapshotReader, load_body
from .repository import Repository


def load_job(repo: Repository, stream: str, snapshot: str | int = "latest") -> tuple[Manifest, JobHeader | None]:
    """The visible snapshot's manifest (body loaded) and, for a job, its parsed header."""
    sid = repo.resolve(stream, snapshot)
    manifest = repo.load_manifest(sid.stream, sid.seq)
    if manifest.kind != JOB_KIND:
        return manifest, None
    load_body(repo.store, manifest)
    return manifest, JobHeader.from_manifest(manifest)


def job_parts(repo: Repository, stream: str, snapshot: str | int = "latest") -> dict[str, str]:
    """Part name -> part kind of a job snapshot; a single-kind snapshot raises KindMismatchError."""
    manifest, header = load_job(repo, stream, snapshot)
    if header is None:
        raise KindMismatchError(
            f"snapshot {manifest.id} is a {manifest.kind!r} snapshot, not a job; it has no parts"
        )
    return {name: part.kind for name, part in sorted(header.parts.items())}


def choose_part(manifest: Manifest, header: JobHeader, kind: str | None, part: str | None) -> str:
    """The part to read: the named one, or the only part of ``kind`` when none is named."""
    listing = ", ".join(f"{n} ({p.kind})" for n, p in sorted(header.parts.items()))
    if part is None:
        matching = [n for n, p in header.parts.items() if kind is None or p.kind == kind]
        if len(matching) == 1:
            return matching[0]
        raise KindMismatchError(
            f"snapshot {manifest.id} is a job snapshot with parts {listing}; pass part=<name> to choose one"
        )
    if part not in header.parts:
        raise SnapshotNotFoundError(f"job snapshot {manifest.id} has no part {part!r}; its parts are {listing}")
    if kind is not None and header.parts[part].kind != kind:
        raise KindMismatchError(
            f"part {part!r} of job snapshot {manifest.id} is a {header.parts[part].kind!r} part, not {kind!r}; "
            "load it with the matching API"
        )
    return part


def open_reader(
    repo: Repository,
    stream: str,
    snapshot: str | int = "latest",
    *,
    kind: str | None,
    part: str | None = None,
    threads: int = 16,
) -> SnapshotReader:
    """A reader of a visible snapshot of ``kind``, or of one part of a job snapshot."""
    manifest, header = load_job(repo, stream, snapshot)
    if header is None:
        if part is not None:
            raise KindMismatchError(
                f"snapshot {manifest.id} is a {manifest.kind!r} snapshot, not a job; it has no part "
                f"{part!r} (omit part= to load it)"
            )
        if kind is not None and manifest.kind != kind:
            raise KindMismatchError(
                f"snapshot {manifest.id} is a {manifest.kind!r} snapshot, not {kind!r}; load it with the matching API"
            )
        return SnapshotReader(repo.store, manifest, threads=threads)
    name = choose_part(manifest, header, kind, part)
    reader = SnapshotReader(repo.store, part_manifest(manifest, name, header), threads=threads)
    reader.name = f"{manifest.id}#{name}"
    return reader


class PinnedJobRepository(Repository):
    """The same repository, serving one job manifest already read from memory.

    A job restore reads the job's manifest once; each part's reader then asks for it again
    (:func:`open_reader`). A committed manifest never changes, so handing back the one in
    memory (body loaded) saves a GET of the manifest and of its body, and decoding every
    part's items, per part. Visibility is still checked per part (``resolve`` reads the store).
    """

    def __init__(self, repo: Repository, manifest: Manifest) -> None:
        super().__init__(repo.store, repo.config)
        self.pinned = manifest

    def load_manifest(self, stream: str, seq: int) -> Manifest:
        if (stream, seq) == (self.pinned.stream, self.pinned.seq):
            return self.pinned
        return super().load_manifest(stream, seq)


def resolve_job(repo: Repository, stream: str, snapshot: str | int = "latest") -> SnapshotId:
    """Pin ``latest`` or a tag to one seq, so the parts of one restore all come from one job."""
    return repo.resolve(stream, snapshot)
