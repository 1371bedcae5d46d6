"""The mapper runtime: device workers, the process-wide Mapper, the outbox."""

from .backoff import Backoff
from .mapper import Mapper, MapperOptions
from .outbox import Outbox
from .worker import DeviceWorker, WorkerOptions, WorkerStats

__all__ = [
    "Backoff",
    "DeviceWorker",
    "Mapper",
    "MapperOptions",
    "Outbox",
    "WorkerOptions",
    "WorkerStats",
]
