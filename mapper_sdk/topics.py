"""The twin topic scheme, shared by the mapper runtime, the twin service and clients.

KubeEdge's edge twin topics (``$hw/events/device/{ns}/{name}/...``), plus
Mapperkit's query topic. See docs/twin.md for the payloads.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = [
    "DEVICE_PREFIX",
    "NODE_PREFIX",
    "QUERY",
    "QUERY_RESULT",
    "REPLY_PREFIX",
    "DeviceTopic",
    "device_topic",
    "membership_get",
    "membership_get_result",
    "membership_updated",
    "parse_device_topic",
]

DEVICE_PREFIX = "$hw/events/device/"
NODE_PREFIX = "$hw/events/node/"
QUERY = "mapperkit/v1/twin/query"
QUERY_RESULT = "mapperkit/v1/twin/query/result"
REPLY_PREFIX = "mapperkit/v1/twin/reply/"
"""Where :class:`twin.client.TwinClient` asks for query replies (one topic per client)."""

# Suffixes after $hw/events/device/{ns}/{name}/
TWIN_UPDATE = "twin/update"
TWIN_UPDATE_RESULT = "twin/update/result"
TWIN_UPDATE_DELTA = "twin/update/delta"
TWIN_UPDATE_DOCUMENT = "twin/update/document"
TWIN_GET = "twin/get"
TWIN_GET_RESULT = "twin/get/result"
STATE_UPDATE = "state/update"
STATE_UPDATE_RESULT = "state/update/result"

SUFFIXES = (
    TWIN_UPDATE,
    TWIN_UPDATE_RESULT,
    TWIN_UPDATE_DELTA,
    TWIN_UPDATE_DOCUMENT,
    TWIN_GET,
    TWIN_GET_RESULT,
    STATE_UPDATE,
    STATE_UPDATE_RESULT,
)


class DeviceTopic(NamedTuple):
    namespace: str
    name: str
    suffix: str


def device_topic(namespace: str, name: str, suffix: str) -> str:
    """``$hw/events/device/{namespace}/{name}/{suffix}``."""
    return f"{DEVICE_PREFIX}{namespace}/{name}/{suffix}"


def device_filter(suffix: str) -> str:
    """The subscription filter for ``suffix`` on every device."""
    return f"{DEVICE_PREFIX}+/+/{suffix}"


def parse_device_topic(topic: str) -> DeviceTopic | None:
    """Split a device topic; ``None`` when it is not one of the twin's topics."""
    if not topic.startswith(DEVICE_PREFIX):
        return None
    parts = topic[len(DEVICE_PREFIX) :].split("/", 2)
    if len(parts) != 3 or not parts[0] or not parts[1]:
        return None
    ns, name, suffix = parts
    if suffix not in SUFFIXES:
        return None
    return DeviceTopic(ns, name, suffix)


def membership_get(node: str) -> str:
    return f"{NODE_PREFIX}{node}/membership/get"


def membership_get_result(node: str) -> str:
    return f"{NODE_PREFIX}{node}/membership/get/result"


def membership_updated(node: str) -> str:
    return f"{NODE_PREFIX}{node}/membership/updated"
