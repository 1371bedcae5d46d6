"""``TwinClient``: an async client of the twin service for applications.

::

    async with TwinClient(MqttSettings.from_url("mqtt://127.0.0.1:1883")) as twin:
        state = await twin.get("default/boiler-1")
        print(state.version, state.reported("temperature"))
        await twin.set_desired("default/boiler-1", {"setpoint": 21.5}, version=state.version)
        async with twin.watch("default/boiler-1") as events:
            async for event in events:
                print(event.kind, event.version, event.body.get("delta"))
        page = await twin.query("reported.temperature > 30", order_by="id", limit=50)

A rejection raises :class:`~mapper_sdk.errors.TwinRejected` carrying the code
(400, 404, 409, 413, 500), the reason and the document's current version;
no answer in time raises :class:`TwinUnavailable`; a lost broker connection
raises :class:`~mapper_sdk.mqtt.LinkDown`.

The client holds one MQTT connection and subscribes to a device's result
topics the first time it talks to that device. It does not reconnect by
itself: an application that lives long catches ``LinkDown`` and opens a new
client (requests are safe to retry with the same ``event_id``; the twin
de-duplicates them).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import uuid
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Self

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from mapper_sdk import topics
from mapper_sdk.codec import parse_text
from mapper_sdk.errors import MapperError, TwinRejected
from mapper_sdk.model import PropertyType, Value
from mapper_sdk.mqtt import LinkDown, MqttSettings, describe_mqtt_error

from .document import now_ms

__all__ = [
    "QueryPage",
    "TwinClient",
    "TwinEvent",
    "TwinState",
    "TwinUnavailable",
    "UpdateResult",
    "Watch",
    "split_device",
]

log = logging.getLogger(__name__)

REPLY_PREFIX = topics.REPLY_PREFIX


class TwinUnavailable(MapperError):
    """The twin service did not answer in time."""


def split_device(device: str) -> tuple[str, str]:
    """``"ns/name"`` → ``("ns", "name")``; a bare name is in namespace ``default``."""
    ns, sep, name = device.partition("/")
    if not sep:
        ns, name = "default", device
    if not ns or not name or "/" in name or any(c in device for c in "+#"):
        raise ValueError(f"device must be 'namespace/name' or 'name', got {device!r}")
    return ns, name


def to_text(value: Value) -> str:
    """A Python value as twin wire text (bytes as base64)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _typed(twin: Mapping[str, Any] | None, side: str) -> Value | None:
    if not twin or not isinstance(twin.get(side), dict):
        return None
    text = twin[side].get("value")
    if not isinstance(text, str):
        return None
    try:
        ptype = PropertyType.parse(str((twin.get("metadata") or {}).get("type", "string")))
        return parse_text(text, ptype)
    except ValueError:
        return text


@dataclass(frozen=True, slots=True)
class TwinState:
    """A device's whole twin, as ``twin/get`` returns it.

    Attributes:
        device: ``namespace/name``.
        version: the document version.
        state: the device state (``online``, ``offline``, ...).
        twins: property name → the twin in wire form (``expected``, ``actual``,
            ``metadata``, ``expected_version``, ``actual_version``, ``ack``, ...).
    """

    device: str
    version: int
    state: str
    twins: dict[str, dict[str, Any]]

    def reported(self, prop: str) -> Value | None:
        """The reported value of ``prop``, typed by its model type (``None`` when none)."""
        return _typed(self.twins.get(prop), "actual")

    def desired(self, prop: str) -> Value | None:
        """The desired value of ``prop``, typed by its model type (``None`` when none)."""
        return _typed(self.twins.get(prop), "expected")


@dataclass(frozen=True, slots=True)
class UpdateResult:
    """An accepted update: the new document version and the twins it changed."""

    device: str
    event_id: str
    version: int
    twins: dict[str, Any]

    @property
    def changed(self) -> bool:
        return bool(self.twins)


@dataclass(frozen=True, slots=True)
class TwinEvent:
    """A ``delta`` or ``document`` message of a device."""

    kind: Literal["delta", "document"]
    device: str
    version: int
    body: dict[str, Any]

    @property
    def delta(self) -> dict[str, str]:
        """For a delta: property → desired value that is not reported yet."""
        raw = self.body.get("delta")
        return dict(raw) if isinstance(raw, dict) else {}


@dataclass(frozen=True, slots=True)
class QueryPage:
    """One page of a query: ``items``, their ``count``, and the ``cursor`` of the next page."""

    items: list[dict[str, Any]]
    count: int
    cursor: str | None


class Watch:
    """Deltas and documents of one device (or all): an async context manager and iterator.

    Enter it before causing the changes you want to see, so that its
    subscription is in place::

        async with client.watch("default/boiler-1") as events:
            await client.set_desired("default/boiler-1", {"setpoint": 22})
            event = await anext(events)
    """

    def __init__(
        self, client: TwinClient, device: str | None, kinds: tuple[str, ...] = ("delta", "document")
    ) -> None:
        self._client = client
        if device is None:
            self._ns, self._name = "+", "+"
        else:
            self._ns, self._name = split_device(device)
        self._filters = [
            topics.device_topic(
                self._ns,
                self._name,
                topics.TWIN_UPDATE_DELTA if kind == "delta" else topics.TWIN_UPDATE_DOCUMENT,
            )
            for kind in kinds
        ]
        self._kinds = kinds
        self._queue: asyncio.Queue[TwinEvent | BaseException] = asyncio.Queue()
        self._active = False

    def matches(self, kind: str, ns: str, name: str) -> bool:
        return kind in self._kinds and self._ns in ("+", ns) and self._name in ("+", name)

    def push(self, item: TwinEvent | BaseException) -> None:
        self._queue.put_nowait(item)

    async def __aenter__(self) -> Self:
        await self._start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _start(self) -> None:
        if not self._active:
            self._active = True
            self._client._watches.append(self)
            await self._client._subscribe(self._filters)

    async def aclose(self) -> None:
        """Stop watching."""
        if self._active:
            self._active = False
            with contextlib.suppress(ValueError):
                self._client._watches.remove(self)
            with contextlib.suppress(LinkDown, aiomqtt.MqttError):
                await self._client._unsubscribe(self._filters)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> TwinEvent:
        await self._start()
        item = await self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item


class TwinClient:
    """An async client of the twin service (see the module docstring).

    Args:
        settings: the broker.
        timeout: seconds to wait for each answer.
    """

    def __init__(self, settings: MqttSettings, *, timeout: float = 5.0) -> None:
        self.settings = settings
        self.timeout = timeout
        self._client: aiomqtt.Client | None = None
        self._reader: asyncio.Task[None] | None = None
        self._waiters: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._subs: dict[str, int] = {}
        self._sticky: set[str] = set()
        self._watches: list[Watch] = []
        self._recent: deque[Any] = deque(maxlen=256)
        # Under the user's name, so a broker ACL can give each app its own replies only.
        owner = settings.username or "anonymous"
        self._reply_topic = f"{REPLY_PREFIX}{owner}/{uuid.uuid4().hex}"
        self._entered = False

    # ---- lifecycle -------------------------------------------------------------
    async def __aenter__(self) -> Self:
        if self._entered:
            raise RuntimeError("TwinClient is not reentrant")
        self._entered = True
        client = self.settings.client()
        try:
            await client.__aenter__()
        except aiomqtt.MqttError as exc:
            self._entered = False
            raise LinkDown(
                f"cannot connect to {self.settings.url}: {describe_mqtt_error(exc)}"
            ) from None
        self._client = client
        self._reader = asyncio.create_task(self._read(client), name="twin-client.reader")
        try:
            await self._subscribe([self._reply_topic], sticky=True)
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(aiomqtt.MqttError):
                await client.__aexit__(None, None, None)
        self._fail(LinkDown("the twin client is closed"))
        self._subs.clear()
        self._sticky.clear()
        self._entered = False

    def _fail(self, exc: BaseException) -> None:
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_exception(exc)
        self._waiters.clear()
        for watch in list(self._watches):
            watch.push(exc)

    async def _read(self, client: aiomqtt.Client) -> None:
        try:
            async for message in client.messages:
                try:
                    self._dispatch(message)
                except Exception:  # one odd message must not stop the reader
                    log.warning(
                        "event=message-ignored topic=%s", message.topic.value, exc_info=True
                    )
        except aiomqtt.MqttError as exc:
            self._fail(LinkDown(f"lost the broker {self.settings.url}: {describe_mqtt_error(exc)}"))

    def _dispatch(self, message: aiomqtt.Message) -> None:
        payload = message.payload
        if not isinstance(payload, bytes | bytearray):
            return
        try:
            body = json.loads(payload)
        except ValueError:
            return
        if not isinstance(body, dict):
            return
        topic = message.topic.value
        parsed = topics.parse_device_topic(topic)
        if parsed is not None and parsed.suffix in (
            topics.TWIN_UPDATE_DELTA,
            topics.TWIN_UPDATE_DOCUMENT,
        ):
            kind: Literal["delta", "document"] = (
                "delta" if parsed.suffix == topics.TWIN_UPDATE_DELTA else "document"
            )
            # Overlapping subscriptions (a device and every device) make the
            # broker deliver one message once per subscription.
            eid = body.get("event_id")
            if isinstance(eid, str):
                if eid in self._recent:
                    return
                self._recent.append(eid)
            version = body.get("version", 0)
            event = TwinEvent(
                kind,
                f"{parsed.namespace}/{parsed.name}",
                version if isinstance(version, int) else 0,
                body,
            )
            for watch in self._watches:
                if watch.matches(kind, parsed.namespace, parsed.name):
                    watch.push(event)
            return
        eid = body.get("event_id")
        if isinstance(eid, str):
            fut = self._waiters.pop(eid, None)
            if fut is not None and not fut.done():
                fut.set_result(body)

    @property
    def _mqtt(self) -> aiomqtt.Client:
        if self._client is None:
            raise LinkDown("the twin client is not connected (use `async with TwinClient(...)`)")
        return self._client

    async def _subscribe(self, filters: list[str], *, sticky: bool = False) -> None:
        new = [f for f in filters if self._subs.get(f, 0) == 0 and f not in self._sticky]
        for f in filters:
            if sticky:
                self._sticky.add(f)
            else:
                self._subs[f] = self._subs.get(f, 0) + 1
        if new:
            try:
                await self._mqtt.subscribe([(f, 1) for f in new])
            except aiomqtt.MqttError as exc:
                raise LinkDown(f"subscribe failed: {describe_mqtt_error(exc)}") from None

    async def _unsubscribe(self, filters: list[str]) -> None:
        gone = []
        for f in filters:
            count = self._subs.get(f, 0) - 1
            if count <= 0:
                self._subs.pop(f, None)
                if f not in self._sticky:
                    gone.append(f)
            else:
                self._subs[f] = count
        if gone and self._client is not None:
            await self._client.unsubscribe(gone)

    async def _request(
        self,
        topic: str,
        body: dict[str, Any],
        what: str,
        properties: Properties | None = None,
    ) -> dict[str, Any]:
        eid = body["event_id"]
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters[eid] = fut
        try:
            try:
                await self._mqtt.publish(
                    topic, json.dumps(body).encode("utf-8"), qos=1, properties=properties
                )
            except aiomqtt.MqttError as exc:
                raise LinkDown(f"publish failed: {describe_mqtt_error(exc)}") from None
            try:
                async with asyncio.timeout(self.timeout):
                    answer = await fut
            except TimeoutError:
                raise TwinUnavailable(
                    f"no answer to {what} within {self.timeout:g} s from the twin service "
                    f"(is `mapperkit twin serve` running on {self.settings.url}?)"
                ) from None
        finally:
            self._waiters.pop(eid, None)
        if "code" in answer:
            version = answer.get("version")
            reason = str(answer.get("reason", ""))
            if isinstance(answer.get("position"), int):
                reason = f"{reason} (at position {answer['position']})"
            raise TwinRejected(
                int(answer["code"]),
                reason,
                version=version if isinstance(version, int) else None,
            )
        return answer

    async def _device_request(
        self, device: str, suffix: str, result_suffix: str, body: dict[str, Any], what: str
    ) -> dict[str, Any]:
        ns, name = split_device(device)
        await self._subscribe([topics.device_topic(ns, name, result_suffix)], sticky=True)
        return await self._request(topics.device_topic(ns, name, suffix), body, what)

    # ---- API -----------------------------------------------------------------------
    async def get(self, device: str) -> TwinState:
        """The whole twin of ``device`` (``"ns/name"`` or ``"name"``).

        Raises:
            TwinRejected: 404 for an unknown device.
            TwinUnavailable: no answer in time.
            LinkDown: the broker connection is lost.
        """
        body = {"event_id": str(uuid.uuid4())}
        answer = await self._device_request(
            device, topics.TWIN_GET, topics.TWIN_GET_RESULT, body, f"get {device}"
        )
        ns, name = split_device(device)
        return TwinState(
            f"{ns}/{name}",
            int(answer.get("version", 0)),
            str(answer.get("state", "unknown")),
            dict(answer.get("twin") or {}),
        )

    async def set_desired(
        self,
        device: str,
        values: Mapping[str, Value | None],
        *,
        version: int | None = None,
        event_id: str | None = None,
    ) -> UpdateResult:
        """Set desired values; ``None`` clears a property's desired value.

        Args:
            device: ``"ns/name"`` or ``"name"``.
            values: property → value (typed Python values or wire text).
            version: apply only if the document is at this version (else 409).
            event_id: a request id for safe retries (default: a new UUID).

        Raises:
            TwinRejected: 400 (a value the model refuses, an unknown property),
                404 (unknown device), 409 (``version`` is stale; ``.version`` is
                the current one), 413, 500.
            TwinUnavailable: no answer in time.
        """
        twin: dict[str, Any] = {
            prop: {"expected": None if value is None else {"value": to_text(value)}}
            for prop, value in values.items()
        }
        return await self.update(device, twin, version=version, event_id=event_id)

    async def update(
        self,
        device: str,
        twin: Mapping[str, Any],
        *,
        version: int | None = None,
        event_id: str | None = None,
    ) -> UpdateResult:
        """Send a raw update request (the ``twin`` object of the protocol)."""
        eid = event_id or str(uuid.uuid4())
        body: dict[str, Any] = {"event_id": eid, "timestamp": now_ms(), "twin": dict(twin)}
        if version is not None:
            body["version"] = version
        answer = await self._device_request(
            device, topics.TWIN_UPDATE, topics.TWIN_UPDATE_RESULT, body, f"update {device}"
        )
        ns, name = split_device(device)
        return UpdateResult(
            f"{ns}/{name}", eid, int(answer.get("version", 0)), dict(answer.get("twin") or {})
        )

    def watch(
        self, device: str | None = None, *, kinds: tuple[str, ...] = ("delta", "document")
    ) -> Watch:
        """Deltas and documents of ``device`` (all devices when ``None``).

        Use ``async with client.watch(...) as events`` so the subscription is in
        place before you cause changes; iterating alone subscribes on first use.
        """
        for kind in kinds:
            if kind not in ("delta", "document"):
                raise ValueError(f"kinds must be 'delta' and/or 'document', got {kind!r}")
        return Watch(self, device, kinds)

    async def query(
        self,
        where: str = "",
        *,
        select: list[str] | None = None,
        order_by: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        group_by: str | None = None,
    ) -> QueryPage:
        """One page of a query (see docs/twin.md for the language).

        Raises:
            TwinRejected: 400 with the reason (the position is in the reason).
        """
        eid = str(uuid.uuid4())
        body: dict[str, Any] = {"event_id": eid, "reply_to": self._reply_topic, "where": where}
        options = {
            "select": select,
            "order_by": order_by,
            "limit": limit,
            "cursor": cursor,
            "group_by": group_by,
        }
        body.update({k: v for k, v in options.items() if v is not None})
        props = None
        if self.settings.protocol == "5":
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.ResponseTopic = self._reply_topic
            props.CorrelationData = eid.encode("utf-8")
        answer = await self._request(topics.QUERY, body, "a query", props)
        items = answer.get("items") or []
        cursor_out = answer.get("cursor")
        return QueryPage(
            list(items), int(answer.get("count", len(items))), cursor_out if cursor_out else None
        )

    async def query_all(
        self,
        where: str = "",
        *,
        select: list[str] | None = None,
        order_by: str | None = None,
        page_size: int = 1000,
    ) -> AsyncIterator[dict[str, Any]]:
        """Every item of a query, page by page."""
        cursor: str | None = None
        while True:
            page = await self.query(
                where, select=select, order_by=order_by, limit=page_size, cursor=cursor
            )
            for item in page.items:
                yield item
            if page.cursor is None:
                return
            cursor = page.cursor

    async def membership(self, node: str) -> list[dict[str, Any]]:
        """The devices of ``node`` (KubeEdge's ``membership/get``)."""
        await self._subscribe([topics.membership_get_result(node)], sticky=True)
        answer = await self._request(
            topics.membership_get(node), {"event_id": str(uuid.uuid4())}, f"membership of {node}"
        )
        return list(answer.get("devices") or [])
