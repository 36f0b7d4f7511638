"""Find a running TransferQueue (controller + storage units) and run code inside its actors.

A :class:`TransferQueueSystem` is the controller's Ray handle plus the storage units' handles
in *routing order*: the order of ``backend.SimpleStorage.zmq_info`` in the controller's config,
which is the order clients use for ``gi % n``. Code runs inside an actor with
``handle.__ray_call__.remote(fn, ...)``, so bulk data never leaves the actor that holds it.

Exceptions raised inside an actor travel back as a small envelope rather than through Ray's
exception pickling, because tqsnap errors with custom constructors (``CorruptShardError``)
do not survive a plain pickle round trip.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ... import errors

log = logging.getLogger(__name__)

CONTROLLER_NAME = "TransferQueueController"
CONTROLLER_NAMESPACE = "transfer_queue"


@dataclass
class RemoteError:
    """A tqsnap error raised inside an actor, in a form that always pickles."""

    cls_name: str
    message: str
    attrs: dict[str, Any] = field(default_factory=dict)

    def rebuild(self) -> BaseException:
        cls = getattr(errors, self.cls_name, None)
        if not (isinstance(cls, type) and issubclass(cls, errors.TqsnapError)):
            return errors.RestoreError(self.message)
        exc = cls.__new__(cls)
        Exception.__init__(exc, self.message)
        for k, v in self.attrs.items():
            setattr(exc, k, v)
        return exc


def in_actor(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a function meant for ``__ray_call__`` so tqsnap errors come back as envelopes."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except errors.TqsnapError as exc:
            attrs = {
                k: v for k, v in vars(exc).items() if isinstance(v, str | int | float | bool | type(None))
            }
            return RemoteError(type(exc).__name__, str(exc), attrs)

    return run


def unwrap(result: Any) -> Any:
    """Raise the error an actor reported, or return its result."""
    if isinstance(result, RemoteError):
        raise result.rebuild()
    return result


def _ray() -> Any:
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - the tq extra installs it
        raise errors.TqsnapError("TransferQueue snapshots need ray: pip install 'tqsnap[tq]'") from exc
    if not ray.is_initialized():
        raise errors.TqsnapError(
            "Ray is not initialised in this process; call ray.init(...) and tq.init() (or attach to the "
            "cluster that runs TransferQueue) before taking or restoring a snapshot"
        )
    return ray


@dataclass
class TransferQueueSystem:
    """One running TransferQueue: its controller and its storage units in routing order."""

    controller: Any
    units: list[Any]
    unit_names: list[str]
    unit_ids: list[str]

    @property
    def n_units(self) -> int:
        return len(self.units)

    @classmethod
    def attached(cls) -> TransferQueueSystem:
        """The TransferQueue this process reaches (after ``tq.init()`` here or elsewhere)."""
        ray = _ray()
        handles: Mapping[str, Any] | None = None
        controller = None
        try:
            from transfer_queue import interface

            controller = interface._TQ_CONTROLLER
            storage = interface._TQ_STORAGE or {}
            handles = storage.get("SimpleStorage")
        except (ImportError, AttributeError):  # pragma: no cover - other transferqueue versions
            pass
        if controller is None:
            try:
                controller = ray.get_actor(CONTROLLER_NAME, namespace=CONTROLLER_NAMESPACE)
            except ValueError:
                raise errors.TqsnapError(
                    "no TransferQueue controller is running in this Ray cluster; call tq.init() first"
                ) from None
        return cls.from_controller(controller, handles)

    @classmethod
    def from_controller(
        cls, controller: Any, unit_handles: Mapping[str, Any] | None = None
    ) -> TransferQueueSystem:
        """Resolve the storage units of ``controller`` from its stored config.

        ``unit_handles`` (name -> handle) skips the lookup by name; every handle is checked
        against the unit id the config records, so a stale handle is never used.
        """
        ray = _ray()
        conf = ray.get(controller.get_config.remote())
        if conf is None:
            raise errors.TqsnapError(
                "the TransferQueue controller has no config yet; wait for tq.init() to finish"
            )
        backend = conf.backend.storage_backend
        if backend != "SimpleStorage":
            raise errors.TqsnapError(
                f"TransferQueue uses the {backend!r} storage backend; tqsnap snapshots SimpleStorage only"
            )
        infos = conf.backend.SimpleStorage.zmq_info
        names = [str(k) for k in infos.keys()]
        ids = [str(infos[k].id) for k in infos.keys()]
        units: list[Any] = []
        for name, uid in zip(names, ids, strict=True):
            handle = (unit_handles or {}).get(name)
            if handle is None or _unit_id(ray, handle) != uid:
                handle = _find_unit(ray, name, uid)
            units.append(handle)
        return cls(controller, units, names, ids)

    def call_controller(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(controller, *args)`` inside the controller actor and return its result."""
        return self.collect([self.start_controller(fn, *args)])[0]

    def call_units(self, fn: Callable[..., Any], args: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Run ``fn(unit_k, *args[k])`` in every unit at once; raise the first error after all end."""
        return self.collect(self.start_units(fn, args))

    def start_controller(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Start ``fn(controller, *args)`` inside the controller; :meth:`collect` its result."""
        _ray()
        return self.controller.__ray_call__.remote(fn, *args)

    def start_units(self, fn: Callable[..., Any], args: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Start ``fn(unit_k, *args[k])`` in every unit; :meth:`collect` their results."""
        _ray()
        return [u.__ray_call__.remote(fn, *a) for u, a in zip(self.units, args, strict=True)]

    @staticmethod
    def collect(refs: Sequence[Any]) -> list[Any]:
        """The results of started calls, in order; the first error is raised after every call ended.

        Waiting for all before raising means no actor is still working on a failed step when
        the caller cleans up after it.
        """
        ray = _ray()
        results: list[Any] = []
        failure: BaseException | None = None
        for ref in refs:
            try:
                results.append(unwrap(ray.get(ref)))
            except Exception as exc:  # noqa: BLE001 - re-raised below, after all calls ended
                failure = failure or exc
                results.append(None)
        if failure is not None:
            raise failure
        return results


def _get_unit_id(unit: Any) -> str:
    return str(unit.storage_unit_id)


def _unit_id(ray: Any, handle: Any) -> str | None:
    try:
        return str(ray.get(handle.__ray_call__.remote(_get_unit_id), timeout=60))
    except Exception:  # noqa: BLE001 - a dead or foreign actor is simply not the unit we want
        return None


def _find_unit(ray: Any, name: str, uid: str) -> Any:
    """Look a unit up by name in every namespace; its id tells same-named units apart."""
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry.get("name") != name:
            continue
        try:
            handle = ray.get_actor(name, namespace=entry.get("namespace"))
        except ValueError:
            continue
        if _unit_id(ray, handle) == uid:
            return handle
    raise errors.TqsnapError(
        f"storage unit {name} (id {uid}) named in the TransferQueue config is not running; "
        "the TransferQueue may be shutting down"
    )
