"""hyper_parallel's checkpoint types: its own when the package is importable, stand-ins otherwise.

``tqsnap.hyper_parallel`` must import (and its classes must work) on machines without
hyper_parallel, which is not on PyPI and needs numpy < 2. When hyper_parallel is importable
every name here IS hyper_parallel's (so its ``save``/``load`` accept tqsnap's writer and reader
as subclasses of its ABCs, and the ``Metadata`` a load returns is its own class). Otherwise the
same names are small dataclasses with the same fields, equality and call signatures, written
from the interface hyper_parallel documents (``hyper_parallel/core/distributed_checkpoint``:
``storage.py``, ``planner.py``, ``metadata.py``). The adapter only reads these objects by
attribute, so a planner built on either set works with it.
"""

from __future__ import annotations

import abc
import enum
from dataclasses import dataclass, field
from typing import Any

try:  # pragma: no cover - hyper_parallel cannot be installed in tqsnap's test environment
    from hyper_parallel.core.distributed_checkpoint.metadata import (
        BytesStorageMetadata,
        ChunkStorageMetadata,
        Metadata,
        MetadataIndex,
        TensorProperties,
        TensorStorageMetadata,
    )
    from hyper_parallel.core.distributed_checkpoint.planner import (
        LoadItemType,
        LoadPlan,
        LoadPlanner,
        ReadItem,
        SavePlan,
        SavePlanner,
        WriteItem,
        WriteItemType,
    )
    from hyper_parallel.core.distributed_checkpoint.storage import (
        StorageInfo,
        StorageReader,
        StorageWriter,
        WriteResult,
    )

    HYPER_PARALLEL_AVAILABLE = True
    IMPORT_ERROR: str | None = None
except Exception as exc:  # noqa: BLE001 - any failure to import means "use the stand-ins"
    HYPER_PARALLEL_AVAILABLE = False
    IMPORT_ERROR = f"{type(exc).__name__}: {exc}"

    @dataclass(frozen=True)
    class MetadataIndex:  # type: ignore[no-redef]
        """A chunk or value in a checkpoint: ``fqn`` plus the chunk's offset; ``index`` is a hint only."""

        fqn: str
        offset: tuple = field(default_factory=tuple)
        index: int | None = field(default=None, compare=False, hash=False)

    @dataclass(frozen=True)
    class ChunkStorageMetadata:  # type: ignore[no-redef]
        offsets: tuple
        sizes: tuple

    @dataclass(frozen=True)
    class TensorProperties:  # type: ignore[no-redef]
        """``dtype`` is a framework's dtype string (``"torch.float32"``, ``"Float32"``)."""

        dtype: str
        requires_grad: bool = False
        memory_format: str | None = None

    @dataclass
    class BytesStorageMetadata:  # type: ignore[no-redef]
        """A non-tensor value, stored as bytes."""

    @dataclass(frozen=True)
    class TensorStorageMetadata:  # type: ignore[no-redef]
        properties: TensorProperties
        size: tuple
        chunks: list[ChunkStorageMetadata] = field(default_factory=list)

    @dataclass
    class Metadata:  # type: ignore[no-redef]
        state_dict_metadata: dict[str, TensorStorageMetadata | BytesStorageMetadata]
        planner_data: Any = None
        storage_data: dict[MetadataIndex, Any] | None = None
        version: str = "1.0"

    class WriteItemType(enum.Enum):  # type: ignore[no-redef]
        TENSOR = "tensor"
        BYTE_IO = "byte_io"

    class LoadItemType(enum.Enum):  # type: ignore[no-redef]
        TENSOR = "tensor"
        BYTE_IO = "byte_io"

    @dataclass(frozen=True)
    class WriteItem:  # type: ignore[no-redef]
        """``tensor_data`` holds ``chunk``, ``properties`` and ``size``; the data stays with the planner."""

        index: MetadataIndex
        type: WriteItemType
        tensor_data: dict[str, Any] | None = None
        bytes_io_data: Any = None

    @dataclass(frozen=True)
    class ReadItem:  # type: ignore[no-redef]
        type: LoadItemType
        dest_index: MetadataIndex
        dest_offsets: tuple
        storage_index: MetadataIndex
        storage_offsets: tuple
        lengths: tuple

    @dataclass(frozen=True)
    class SavePlan:  # type: ignore[no-redef]
        items: list[WriteItem] = field(default_factory=list)
        storage_data: Any = None
        planner_data: Any = None

    @dataclass
    class LoadPlan:  # type: ignore[no-redef]
        items: list[ReadItem] = field(default_factory=list)
        storage_data: Any = None
        planner_data: Any = None

    class SavePlanner(abc.ABC):  # type: ignore[no-redef]
        """Decides what each rank writes; the storage writer asks it for each item's data."""

        @abc.abstractmethod
        def configure_planner(self, state_dict: dict[str, Any], **kwargs: Any) -> None: ...

        @abc.abstractmethod
        def build_local_plan(self) -> SavePlan: ...

        @abc.abstractmethod
        def build_global_plan(self, all_plans: list[SavePlan]) -> tuple[Any, Metadata]: ...

        @abc.abstractmethod
        def finalize_plan(self, plan: SavePlan) -> SavePlan: ...

    class LoadPlanner(abc.ABC):  # type: ignore[no-redef]
        """Decides what each rank reads; the storage reader hands it each chunk and value."""

        @abc.abstractmethod
        def configure_planner(self, state_dict: dict[str, Any], metadata: Metadata, **kwargs: Any) -> None: ...

        @abc.abstractmethod
        def build_local_plan(self) -> LoadPlan: ...

        @abc.abstractmethod
        def build_global_plan(self, all_plans: list[LoadPlan]) -> Any: ...

        @abc.abstractmethod
        def finalize_plan(self, plan: LoadPlan) -> LoadPlan: ...

        @abc.abstractmethod
        def acquire_tensor(self, read_item: ReadItem) -> Any: ...

        @abc.abstractmethod
        def apply_tensor(self, read_item: ReadItem, tensor: Any) -> None: ...

        @abc.abstractmethod
        def apply_bytes(self, read_item: ReadItem, value: bytes) -> None: ...

    @dataclass
    class StorageInfo:  # type: ignore[no-redef]
        """Where one item's bytes live, relative to the checkpoint."""

        relative_path: str
        offset: int
        length: int

    @dataclass
    class WriteResult:  # type: ignore[no-redef]
        index: MetadataIndex
        storage_data: StorageInfo

    class StorageWriter(abc.ABC):  # type: ignore[no-redef]
        """hyper_parallel's storage writer interface (see :mod:`tqsnap.adapters.hyper_parallel.writer`)."""

        @abc.abstractmethod
        def initialize_writer(self, checkpoint_id: Any = None) -> None: ...

        @abc.abstractmethod
        def configure_writer(self, is_coordinator: bool, **kwargs: Any) -> None: ...

        @abc.abstractmethod
        def optimize_local_plan(self, plan: SavePlan) -> SavePlan: ...

        @abc.abstractmethod
        def optimize_global_plan(self, plans: list[SavePlan]) -> list[SavePlan]: ...

        @abc.abstractmethod
        def execute_write(self, plan: SavePlan, planner: SavePlanner) -> list[WriteResult]: ...

        @abc.abstractmethod
        def finalize_checkpoint(self, metadata: Metadata, results: list[list[WriteResult]]) -> None: ...

    class StorageReader(abc.ABC):  # type: ignore[no-redef]
        """hyper_parallel's storage reader interface (see :mod:`tqsnap.adapters.hyper_parallel.reader`)."""

        @abc.abstractmethod
        def initialize_reader(self, checkpoint_id: Any = None) -> None: ...

        @abc.abstractmethod
        def load_metadata(self, **kwargs: Any) -> Metadata: ...

        @abc.abstractmethod
        def configure_reader(self, metadata: Metadata, is_coordinator: bool, **kwargs: Any) -> None: ...

        @abc.abstractmethod
        def optimize_local_plan(self, plan: LoadPlan) -> LoadPlan: ...

        @abc.abstractmethod
        def optimize_global_plan(self, plans: list[LoadPlan]) -> list[LoadPlan]: ...

        @abc.abstractmethod
        def execute_read(self, plan: LoadPlan, planner: LoadPlanner) -> None: ...


def is_byte_io(item_type: Any) -> bool:
    """True for ``WriteItemType.BYTE_IO`` / ``LoadItemType.BYTE_IO`` of either set of types."""
    return getattr(item_type, "name", None) == "BYTE_IO"


__all__ = [
    "HYPER_PARALLEL_AVAILABLE",
    "IMPORT_ERROR",
    "BytesStorageMetadata",
    "ChunkStorageMetadata",
    "LoadItemType",
    "LoadPlan",
    "LoadPlanner",
    "Metadata",
    "MetadataIndex",
    "ReadItem",
    "SavePlan",
    "SavePlanner",
    "StorageInfo",
    "StorageReader",
    "StorageWriter",
    "TensorProperties",
    "TensorStorageMetadata",
    "WriteItem",
    "WriteItemType",
    "WriteResult",
    "is_byte_io",
]
