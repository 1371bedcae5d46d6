"""Driver discovery through the ``mapper_sdk.drivers`` entry-point group.

A protocol package registers its driver class in its ``pyproject.toml``::

    [project.entry-points."mapper_sdk.drivers"]
    myproto = "my_package:MyDriver"

Each entry is loaded and checked when its protocol is first needed (the class
is a :class:`~mapper_sdk.driver.Driver` subclass whose ``protocol`` matches the
entry name and whose config classes are pydantic models); a broken plugin is
reported once, with its distribution, and treated as not installed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from pydantic import BaseModel

from .driver import Driver
from .errors import DriverNotFound

__all__ = ["DRIVER_GROUP", "DriverInfo", "Registry"]

DRIVER_GROUP = "mapper_sdk.drivers"
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DriverInfo:
    """One entry of the ``mapper_sdk.drivers`` group."""

    protocol: str
    target: str
    distribution: str | None
    version: str | None
    driver: type[Driver[Any, Any]] | None
    error: str | None = None
    missing: str | None = None
    """The module the driver needs and that is not installed (a dependency, not a bug)."""

    @property
    def ok(self) -> bool:
        return self.driver is not None

    @staticmethod
    def _broken(
        ep: EntryPoint, dist: str | None, version: str | None, exc: Exception
    ) -> DriverInfo:
        reason = f"{type(exc).__name__}: {exc}"
        log.warning("driver %s from %s cannot be loaded: %s", ep.name, dist, reason)
        return DriverInfo(ep.name, ep.value, dist, version, None, reason)


def _check(name: str, obj: Any) -> type[Driver[Any, Any]]:
    if not (isinstance(obj, type) and issubclass(obj, Driver)):
        raise TypeError(f"{obj!r} is not a mapper_sdk.driver.Driver subclass")
    protocol = getattr(obj, "protocol", None)
    if protocol != name:
        raise TypeError(
            f"{obj.__qualname__}.protocol is {protocol!r}, the entry point says {name!r}"
        )
    for attr in ("protocol_config", "visitor_config"):
        cls = getattr(obj, attr, None)
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)):
            raise TypeError(f"{obj.__qualname__}.{attr} must be a pydantic model class")
    if getattr(obj, "__abstractmethods__", None):
        missing = ", ".join(sorted(obj.__abstractmethods__))
        raise TypeError(f"{obj.__qualname__} does not implement {missing}")
    return obj


class Registry(Mapping[str, type[Driver[Any, Any]]]):
    """The installed drivers, by protocol name. A mapping of the loadable ones.

    Entry points are read at once, but a driver's module is imported only when
    its protocol is first looked up, so a mapper serving Modbus devices does not
    import the OPC-UA or BLE libraries. :meth:`infos` loads (and checks) them all.

    Args:
        drivers: explicit driver classes; when given, entry points are not read
            (tests and embedded use inject drivers this way).
    """

    def __init__(self, drivers: Mapping[str, type[Driver[Any, Any]]] | None = None) -> None:
        self._infos: dict[str, DriverInfo] = {}
        self._entry_points: dict[str, EntryPoint] = {}
        if drivers is not None:
            for name, cls in drivers.items():
                checked = _check(name, cls)
                self._infos[name] = DriverInfo(
                    name, f"{cls.__module__}:{cls.__qualname__}", None, None, checked
                )
        else:
            for ep in entry_points(group=DRIVER_GROUP):
                self._entry_points[ep.name] = ep

    @staticmethod
    def _load(ep: EntryPoint) -> DriverInfo:
        dist = ep.dist.name if ep.dist is not None else None
        version = ep.dist.version if ep.dist is not None else None
        try:
            cls = _check(ep.name, ep.load())
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.split(".")[0] != ep.module.split(".")[0]:
                # A dependency of the driver is not installed: an install without
                # that protocol's extra, not a broken plugin.
                hint = f"pip install '{dist}[{ep.name}]'" if dist == "mapperkit" else None
                reason = f"needs {exc.name}, which is not installed" + (
                    f" ({hint})" if hint else ""
                )
                log.info("driver %s from %s is not available: %s", ep.name, dist, reason)
                return DriverInfo(ep.name, ep.value, dist, version, None, reason, exc.name)
            return DriverInfo._broken(ep, dist, version, exc)
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not stop the others
            return DriverInfo._broken(ep, dist, version, exc)
        return DriverInfo(ep.name, ep.value, dist, version, cls)

    def _info(self, protocol: str) -> DriverInfo | None:
        info = self._infos.get(protocol)
        if info is None:
            ep = self._entry_points.get(protocol)
            if ep is None:
                return None
            info = self._infos[protocol] = self._load(ep)
        return info

    def infos(self) -> list[DriverInfo]:
        """Every entry, loadable or not, sorted by protocol (loads every driver)."""
        for name in self._entry_points:
            self._info(name)
        return [self._infos[k] for k in sorted(self._infos)]

    def get_driver(self, protocol: str) -> type[Driver[Any, Any]]:
        """The driver for ``protocol``, or :class:`DriverNotFound` naming what is installed."""
        info = self._info(protocol)
        if info is None or info.driver is None:
            raise DriverNotFound(protocol, list(self))
        return info.driver

    def __getitem__(self, protocol: str) -> type[Driver[Any, Any]]:
        info = self._info(protocol)
        if info is None or info.driver is None:
            raise KeyError(protocol)
        return info.driver

    def __contains__(self, protocol: object) -> bool:
        if not isinstance(protocol, str):
            return False
        info = self._info(protocol)
        return info is not None and info.driver is not None

    def __iter__(self) -> Iterator[str]:
        """Protocol names installed (a broken plugin is named until it fails to load)."""
        names = set(self._entry_points) | set(self._infos)
        return iter(
            sorted(n for n in names if n not in self._infos or self._infos[n].driver is not None)
        )

    def __len__(self) -> int:
        return sum(1 for _ in self)
