"""Mapperkit's device twin: desired and reported values per device property,
durable in SQLite, served over MQTT with KubeEdge's ``$hw/events/...`` twin
protocol plus versions, precise rejections, de-duplication and queries.

Run it with ``mapperkit twin serve``; talk to it from applications with
:class:`TwinClient`. See docs/twin.md for the protocol.
"""

from .client import QueryPage, TwinClient, TwinEvent, TwinState, TwinUnavailable, UpdateResult
from .document import DeviceTwin, Options, Twin, TwinError
from .query import Query, QueryError, parse_query
from .service import ServiceConfig, TwinCore, TwinService
from .store import Store, StoreError

__all__ = [
    "DeviceTwin",
    "Options",
    "Query",
    "QueryError",
    "QueryPage",
    "ServiceConfig",
    "Store",
    "StoreError",
    "Twin",
    "TwinClient",
    "TwinCore",
    "TwinError",
    "TwinEvent",
    "TwinService",
    "TwinState",
    "TwinUnavailable",
    "UpdateResult",
    "parse_query",
]
