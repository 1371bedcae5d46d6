"""The sink interface every data-plane reporter implements."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ...driver import Reading, Resources
from ...model import DeviceSpec, PropertySpec, PushMethod, Value
from ...mqtt import MqttSettings

__all__ = ["REPORTER_GROUP", "Item", "Reporter", "ReporterContext", "ReporterStats", "push_targets"]

REPORTER_GROUP = "mapper_sdk.reporters"

Item = tuple[PropertySpec[Any], Value, Reading]
"""One reported reading: the property, its typed value and the reading it came from."""


@dataclass(slots=True)
class ReporterContext:
    """What the mapper offers every reporter.

    Attributes:
        mqtt: the mapper's own broker, for MQTT sinks that name no address.
        resources: the process's shared pool (``Resources.extras`` for injections).
        environ: the environment credentials come from (tokens, passwords).
    """

    mqtt: MqttSettings | None = None
    resources: Resources = field(default_factory=Resources)
    environ: Mapping[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class ReporterStats:
    """Counters every reporter keeps (exported as metrics)."""

    queued: int = 0
    sent: int = 0
    dropped: int = 0
    errors: int = 0
    depth: int = 0


class Reporter(ABC):
    """A data-plane sink.

    ``offer`` is called on the collect path and must not block or do I/O: put
    the batch on a bounded queue (count what is dropped when it is full) and
    let :meth:`run` send it. ``run`` is a task the mapper owns and cancels;
    :meth:`aclose` releases connections afterwards.

    Class attributes:
        kind: the pushMethod key this reporter serves (``mqtt``, ``http``,
            ``redis`` ... the name under ``dbMethod`` for databases).
    """

    kind: ClassVar[str]

    def __init__(self, config: Mapping[str, Any], context: ReporterContext) -> None:
        self.config = config
        self.context = context
        self.stats = ReporterStats()

    @classmethod
    def pool_key(cls, config: Mapping[str, Any]) -> Hashable:
        """Devices whose configs give equal keys share one instance (default: equal configs)."""
        return json.dumps(config, sort_keys=True, default=str)

    @classmethod  # noqa: B027 - optional hook
    def validate(cls, config: Mapping[str, Any]) -> None:
        """Raise :class:`~mapper_sdk.errors.ConfigError` for a config that cannot work."""

    @abstractmethod
    def offer(self, device: DeviceSpec[Any, Any], items: Sequence[Item]) -> None:
        """Take one batch (one device, one report); never blocks."""

    @abstractmethod
    async def run(self) -> None:
        """Send what was offered, until cancelled."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections; called once after :meth:`run` was cancelled."""


_DB_KINDS = {"tdengine": "tdengine", "influxdb2": "influxdb2", "redis": "redis", "mysql": "mysql"}


def push_targets(push: PushMethod | None) -> Iterator[tuple[str, str, Mapping[str, Any]]]:
    """The sinks a property's ``pushMethod`` names: ``(kind, field path, config)``."""
    if push is None:
        return
    for key in ("mqtt", "http", "otel"):
        config = getattr(push, key)
        if config is not None:
            yield key, f"pushMethod.{key}", config
    if push.dbMethod:
        for name, config in push.dbMethod.items():
            kind = _DB_KINDS.get(name.lower(), name.lower())
            yield kind, f"pushMethod.dbMethod.{name}", config if isinstance(config, Mapping) else {}
