"""The exception hierarchy of tqsnap.

Every error a user can hit derives from :class:`TqsnapError`. Messages name the object key (or
URL) involved and say what to do, because these errors usually surface in unattended jobs whose
only output is a log line.
"""

from __future__ import annotations


class TqsnapError(Exception):
    """Base class of every tqsnap error."""


# --- store -----------------------------------------------------------------------------------


class StoreError(TqsnapError):
    """An object-store request failed for a reason other than the ones below."""


class ObjectNotFoundError(StoreError):
    """A key that was expected to exist is absent from the store."""

    def __init__(self, key: str, message: str | None = None) -> None:
        self.key = key
        super().__init__(message or f"object {key!r} does not exist in the store")
        self._init_args = (key, message)

    def __reduce__(self):  # keep the typed fields when the error crosses a process (Ray, DCP)
        return (type(self), self._init_args)


class BucketNotFoundError(StoreError):
    """The bucket (or local root directory) named in the URL does not exist."""


class AccessDeniedError(StoreError):
    """The store refused the credentials or the operation (HTTP 401/403)."""


class IncompleteListingError(StoreError):
    """A listing could not see every key under its prefix (an unreadable directory, a symlink
    in the tree, a LIST that failed or was cut short). Never read as "fewer keys": gc and
    forget abort on it, because a key they did not see is a key they might wrongly delete."""


class UnsafeObjectError(StoreError):
    """A key names something that is not a plain object inside the store: a symlink, a
    directory, a FIFO or device. It is refused, never followed or read."""


class InvalidKeyError(StoreError, ValueError):
    """A key is not a legal store key (NUL, absolute, ``..``, backslash, empty segment)."""


class GcConflictError(StoreError):
    """Live manifests kept vanishing while gc read them: another gc is finalising; retry later."""


class ConditionalWriteUnsupportedError(StoreError):
    """The store cannot do an atomic create, and the user did not opt in to single-writer mode."""


class CommitOutcomeUnknownError(StoreError):
    """A ``put_if_absent`` may or may not have created ``key``: its reply was lost.

    Raised instead of True or False when an attempt could have been applied by the store (a
    reset or timeout after the request was sent, a 5xx) and no later attempt settled it: a
    retry that finds the key existing cannot tell the writer's own object from a rival's.
    The caller resolves it: read ``key`` back (retrying reads until they answer, within the
    write deadline) and compare it with what was written, e.g. by a unique token inside the
    object; until that answers, the outcome must be treated as neither "mine" nor "theirs",
    and nothing may be committed elsewhere (at another seq) on the assumption it failed.
    """

    def __init__(self, key: str, message: str | None = None) -> None:
        self.key = key
        super().__init__(message or f"the outcome of creating {key!r} is unknown; read it back")
        self._init_args = (key, message)

    def __reduce__(self):
        return (type(self), self._init_args)


# --- format ----------------------------------------------------------------------------------


class FormatError(TqsnapError):
    """Bytes on the store do not follow docs/format.md."""


class ManifestError(FormatError):
    """A manifest (or repository config) is malformed: not JSON, missing fields, wrong types."""


class UnsupportedFormatError(FormatError):
    """The object was written by a newer, incompatible format major version."""


class CorruptShardError(FormatError):
    """A shard's bytes do not hash to the name it is stored under."""

    def __init__(self, key: str, expected: str, actual: str) -> None:
        self.key, self.expected, self.actual = key, expected, actual
        self._init_args = (key, expected, actual)
        super().__init__(
            f"shard {key!r} is corrupt: expected xxh3-128 {expected}, got {actual}. "
            "Restore from an older snapshot or re-run the save that produced it."
        )

    def __reduce__(self):
        return (type(self), self._init_args)


class UnsupportedTensorError(FormatError, TypeError):
    """A tensor the format cannot hold (quantized, sparse, a dtype outside its table); nothing
    was written. A ``TypeError`` too, which is what callers caught before this class existed."""


class MissingShardError(FormatError):
    """A shard referenced by a manifest is absent from the store."""

    def __init__(self, key: str, snapshot: str = "") -> None:
        self.key = key
        self._init_args = (key, snapshot)
        where = f" (referenced by {snapshot})" if snapshot else ""
        super().__init__(
            f"shard {key!r} is missing{where}. The snapshot cannot be restored; "
            "run `tqsnap verify` to list every damaged snapshot."
        )

    def __reduce__(self):
        return (type(self), self._init_args)


# --- repository and engine -------------------------------------------------------------------


class InvalidNameError(TqsnapError, ValueError):
    """A stream or tag name would escape its key prefix or is otherwise unusable."""


class RepositoryNotFoundError(TqsnapError):
    """No `tqsnap.json` exists at the URL."""


class SnapshotNotFoundError(TqsnapError):
    """The requested stream, seq or tag does not resolve to a visible snapshot."""


class KindMismatchError(TqsnapError):
    """A snapshot of one kind (say, a DCP checkpoint) was given to a loader of another."""


class CommitConflictError(TqsnapError):
    """The writer lost the commit race more times than it is allowed to retry."""


class WriteDeadlineExceededError(TqsnapError):
    """The writer ran past `started_at + max_write_duration`; its shards are now garbage."""


class UnsafeConfigError(TqsnapError, ValueError):
    """A repository config would let gc delete shards a live writer still needs."""


class PickleNotAllowedError(TqsnapError):
    """Saving or loading an arbitrary Python object requires `allow_pickle=True`."""


class PolicyError(TqsnapError, ValueError):
    """A retention policy is empty or malformed."""


class TargetNotEmptyError(TqsnapError):
    """A restore target already holds data and `force=True` was not given."""


class RestoreError(TqsnapError):
    """A restore could not be carried out; the target was left unchanged."""


class OutOfMemoryError(TqsnapError, MemoryError):
    """The memory an object needs could not be had (an address-space limit, a full machine)."""


class ShapeMismatchError(TqsnapError, ValueError):
    """Stored bytes and the tensor a loader asked for disagree in shape (or size in bytes)."""


class InconsistentSnapshotError(TqsnapError):
    """Ranks of one distributed load resolved their snapshot selector to different snapshots."""


class CopyOrderError(TqsnapError, ValueError):
    """A copy would make the destination stream's latest snapshot older than one it holds."""


class InvalidURLError(TqsnapError, ValueError):
    """A repository URL cannot be used as written (a host in a file:// URL, an unknown scheme)."""


class JobError(TqsnapError, ValueError):
    """A job snapshot was used wrongly: a token that does not parse, a part added twice or staged for another job."""


class JobDeadlineExceededError(WriteDeadlineExceededError):
    """A job snapshot ran past ``first staged shard + max_write_duration``; nothing was committed."""


class JobPartError(JobError):
    """A part of an asynchronous job snapshot failed in the background; nothing was committed."""
