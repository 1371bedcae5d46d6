"""The ``mqtt`` sink: each reading as one MQTT message, over one pooled connection per broker.

A property's ``pushMethod.mqtt`` names the broker (``address``, KubeEdge's key;
without it the mapper's own broker is used), the ``topic``, ``qos`` and
``retained``. The payload is one JSON object per reading::

    {"device": "boiler-1", "namespace": "default", "property": "temperature",
     "value": 21.5, "type": "float", "timestamp": 1700000000000, "quality": "good"}

``value`` is typed JSON (a number, ``true``/``false``, a string; bytes as
base64 text); ``timestamp`` is the time the value was sampled, in ms since the
epoch. ``format: kubeedge-legacy`` sends KubeEdge's plain-text line instead
(``time is 2024-01-02 15:04:05  <topic>: <value>``).

Mapperkit extensions (beside KubeEdge's keys): ``format``; ``topic`` may use
``{namespace}``, ``{device}`` and ``{property}``; ``protocol`` (``3.1.1``/``5``);
``usernameEnv``, ``passwordEnv``, ``passwordFile``, ``caFile``, ``certFile``,
``keyFile`` for a broker of its own; ``queueSize`` (readings kept while the
broker is away; the oldest are dropped beyond it and counted).

This module also holds the pieces every built-in sink shares: the bounded
queue (:class:`BatchQueue`), the reading JSON (:func:`reading_json`), config
parsing with precise errors, templates and credential look-up.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import string
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any, ClassVar, Literal, TypeVar

from paho.mqtt import client as mqtt_client
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ...codec import format_text
from ...driver import Quality, Reading
from ...errors import ConfigError
from ...model import DeviceSpec, PropertySpec, Value
from ...mqtt import LinkDown, MqttLink, MqttSettings
from .base import Item, Reporter, ReporterContext, ReporterStats, push_targets

__all__ = [
    "DEFAULT_QUEUE",
    "SINKS_EXTRA",
    "Batch",
    "BatchQueue",
    "MqttReporter",
    "PushConfig",
    "check_template",
    "fill_template",
    "json_value",
    "parse_config",
    "property_config",
    "read_secret",
    "reading_json",
    "reading_prefix",
    "reading_suffix",
]

log = logging.getLogger("mapper_sdk.reporters")

DEFAULT_QUEUE = 10_000
"""Readings a sink keeps waiting by default before it drops the oldest."""

SINKS_EXTRA = "pip install mapperkit[sinks]"

Batch = tuple[DeviceSpec[Any, Any], Sequence[Item]]
"""One device's readings of one report."""

Format = Literal["json", "kubeedge-legacy"]

_SECRET_KEYS = frozenset({"password", "passWord", "token", "username", "userName", "user"})
_TEMPLATE_FIELDS = frozenset({"namespace", "device", "property"})


# --------------------------------------------------------------------------- config
class PushConfig(BaseModel):
    """Base of the sinks' config models: unknown keys and inline secrets are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    _allowed_secrets: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="before")
    @classmethod
    def _no_inline_secrets(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            for key in data:
                if key in _SECRET_KEYS and key not in cls._allowed_secrets:
                    raise ValueError(
                        f"{key}: credentials never go in the device YAML; name where they are "
                        f"with {_secret_hint(key)}"
                    )
        return data


def _secret_hint(key: str) -> str:
    if key in ("token",):
        return "tokenEnv (an environment variable) or tokenFile (a file)"
    if key in ("username", "userName", "user"):
        return "usernameEnv (an environment variable)"
    return "passwordEnv (an environment variable) or passwordFile (a file)"


M = TypeVar("M", bound=BaseModel)


def parse_config(model: type[M], config: Mapping[str, Any]) -> M:
    """Validate a sink's config with ``model``; :class:`ConfigError` names each bad field."""
    try:
        return model.model_validate(dict(config))
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            loc = ".".join(str(p) for p in err["loc"])
            msg = str(err["msg"]).removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown field"
            elif err["type"] == "missing":
                msg = "required field is missing"
            problems.append(f"{loc}: {msg}" if loc else msg)
        raise ConfigError("; ".join(problems)) from None


def property_config(prop: PropertySpec[Any], kind: str) -> Mapping[str, Any] | None:
    """The config of sink ``kind`` in ``prop``'s ``pushMethod`` (``None`` if it has none)."""
    for found, _, config in push_targets(prop.push_method):
        if found == kind:
            return config
    return None


def check_template(text: str, what: str) -> None:
    """Reject a template using fields other than ``{namespace}``, ``{device}``, ``{property}``."""
    try:
        parts = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise ConfigError(f"{what}: {exc} in {text!r}") from None
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        if name not in _TEMPLATE_FIELDS or spec or conversion:
            raise ConfigError(
                f"{what}: {{{name}}} is not a known field in {text!r} "
                "(use {namespace}, {device} or {property})"
            )


def fill_template(text: str, device: DeviceSpec[Any, Any], prop: PropertySpec[Any]) -> str:
    """``text`` with ``{namespace}``, ``{device}`` and ``{property}`` filled in."""
    if "{" not in text:
        return text
    return text.format(namespace=device.namespace, device=device.name, property=prop.name)


def read_secret(
    environ: Mapping[str, str],
    *,
    env: str | None,
    file: str | None,
    what: str,
) -> str | None:
    """A credential from a file (first) or an environment variable; ``None`` if neither is set."""
    if file:
        try:
            with open(file, encoding="utf-8") as fh:
                return fh.read().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the {what} file {file}: {exc.strerror}") from None
    if env:
        return environ.get(env) or None
    return None


# --------------------------------------------------------------------------- payloads
def json_value(value: Value) -> str:
    """``value`` as JSON text: numbers, ``true``/``false``, strings; bytes as base64 text.

    Non-finite floats have no JSON form and become ``null``.
    """
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return '"' + base64.b64encode(value).decode("ascii") + '"'


def reading_prefix(device: DeviceSpec[Any, Any], prop: PropertySpec[Any]) -> str:
    """The fixed head of a property's reading JSON, up to ``"value":``."""
    return (
        f'{{"device":{json.dumps(device.name)},"namespace":{json.dumps(device.namespace)},'
        f'"property":{json.dumps(prop.name)},"value":'
    )


def reading_suffix(prop: PropertySpec[Any]) -> str:
    """The fixed part after the value, up to ``"timestamp":``."""
    return f',"type":{json.dumps(prop.type.value)},"timestamp":'


_QUALITY_TAIL = {q: f',"quality":"{q.value}"}}' for q in Quality}


def reading_json(prefix: str, suffix: str, value: Value, reading: Reading) -> str:
    """One reading's JSON from the prepared ``prefix``/``suffix`` of its property."""
    ts = reading.source_timestamp or reading.timestamp
    return f"{prefix}{json_value(value)}{suffix}{ts}{_QUALITY_TAIL[reading.quality]}"


def legacy_time(ts_ms: int) -> str:
    """KubeEdge's time text: local time, ``2006-01-02 15:04:05``."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts_ms // 1000))


# --------------------------------------------------------------------------- queue
class BatchQueue:
    """A bounded FIFO of batches, counted in readings, that drops the oldest when full.

    ``put`` never blocks (it runs on the collect path); ``take`` waits for work.
    Every reading that enters is counted in ``stats.queued``; every one pushed
    out by the bound in ``stats.dropped``; ``stats.depth`` is what waits now.
    """

    __slots__ = ("_batches", "_stats", "_wake", "max_items")

    def __init__(self, stats: ReporterStats, max_items: int = DEFAULT_QUEUE) -> None:
        self._batches: deque[Batch] = deque()
        self._stats = stats
        self._wake = asyncio.Event()
        self.max_items = max_items

    def put(self, device: DeviceSpec[Any, Any], items: Sequence[Item]) -> None:
        n = len(items)
        if not n:
            return
        stats = self._stats
        stats.queued += n
        if n > self.max_items:
            stats.dropped += n
            return
        batches = self._batches
        while stats.depth + n > self.max_items and batches:
            old = batches.popleft()
            stats.depth -= len(old[1])
            stats.dropped += len(old[1])
        batches.append((device, items))
        stats.depth += n
        if not self._wake.is_set():
            self._wake.set()

    def __len__(self) -> int:
        return self._stats.depth

    async def take(self, max_items: int) -> list[Batch]:
        """Wait for at least one batch; return whole batches up to ``max_items`` readings."""
        batches = self._batches
        while not batches:
            self._wake.clear()
            await self._wake.wait()
        out: list[Batch] = []
        count = 0
        stats = self._stats
        while batches and (not out or count + len(batches[0][1]) <= max_items):
            batch = batches.popleft()
            out.append(batch)
            count += len(batch[1])
        stats.depth -= count
        return out

    def discard(self) -> int:
        """Drop everything still waiting (at shutdown); counted as dropped."""
        n = self._stats.depth
        self._batches.clear()
        self._stats.depth = 0
        self._stats.dropped += n
        return n


def backoff_delays(initial: float = 0.2, maximum: float = 10.0) -> Iterator[float]:
    """Doubling delays from ``initial`` up to ``maximum``."""
    delay = initial
    while True:
        yield delay
        delay = min(delay * 2, maximum)


W = TypeVar("W")


class PropCache(dict[PropertySpec[Any], W]):
    """Prepared per-property data; cleared when it grows past a bound (devices redefined)."""

    LIMIT = 200_000

    def prepare(self, prop: PropertySpec[Any], factory: Callable[[], W]) -> W:
        if len(self) >= self.LIMIT:
            self.clear()
        value = self[prop] = factory()
        return value


# --------------------------------------------------------------------------- the sink
class MqttPushConfig(PushConfig):
    """``pushMethod.mqtt``."""

    address: str | None = None
    topic: str = "mapperkit/{namespace}/{device}/{property}"
    qos: int = Field(default=0, ge=0, le=2)
    retained: bool = False
    format: Format = "json"
    protocol: Literal["3.1.1", "5"] = "3.1.1"
    usernameEnv: str | None = None
    passwordEnv: str | None = None
    passwordFile: str | None = None
    caFile: str | None = None
    certFile: str | None = None
    keyFile: str | None = None
    queueSize: int = Field(default=DEFAULT_QUEUE, ge=1)

    def connection_key(self) -> Hashable:
        return (
            self.address,
            self.protocol,
            self.usernameEnv,
            self.passwordEnv,
            self.passwordFile,
            self.caFile,
            self.certFile,
            self.keyFile,
        )


def _check_mqtt(cfg: MqttPushConfig) -> None:
    if not cfg.topic or "+" in cfg.topic or "#" in cfg.topic:
        raise ConfigError(f"topic: {cfg.topic!r} must be non-empty and hold no wildcard (+ or #)")
    check_template(cfg.topic, "topic")
    if cfg.address is not None:
        settings = MqttSettings.from_url(cfg.address)
        if settings.password or settings.username:
            raise ConfigError(
                "address: credentials never go in the device YAML; use usernameEnv and "
                "passwordEnv or passwordFile"
            )


class PushLink(MqttLink):
    """An :class:`MqttLink` that can hand QoS 0 messages straight to paho.

    ``aiomqtt.Client.publish`` waits for every message, QoS 0 included, on an
    event of its own, and scans all pending calls each time: about 100-250 us
    per message, the whole budget of a 10,000 readings/s data plane. Telemetry
    at QoS 0 needs no acknowledgement, so the sink queues a run of messages
    in paho (through the aiomqtt client's paho instance; the aiomqtt event loop
    integration writes them out) and then waits until paho has nothing left to
    write. This belongs in :class:`MqttLink` itself (``publish_nowait``); when
    the aiomqtt internals differ, :meth:`paho_client` returns ``None`` and the
    sink falls back to :meth:`MqttLink.publish_batch`.
    """

    def paho_client(self) -> mqtt_client.Client | None:
        client = self._client
        if client is None or not self.connected:
            return None
        inner = getattr(client, "_client", None)
        return inner if isinstance(inner, mqtt_client.Client) else None


class _MqttWire:
    __slots__ = ("legacy", "prefix", "qos", "retain", "suffix", "topic")

    def __init__(
        self, cfg: MqttPushConfig, device: DeviceSpec[Any, Any], prop: PropertySpec[Any]
    ) -> None:
        self.topic = fill_template(cfg.topic, device, prop)
        self.qos = cfg.qos
        self.retain = cfg.retained
        self.legacy = cfg.format == "kubeedge-legacy"
        self.prefix = reading_prefix(device, prop)
        self.suffix = reading_suffix(prop)


class MqttReporter(Reporter):
    """Publishes readings to an MQTT broker; see the module docstring for the config.

    Devices that name the same broker share one connection (and one queue);
    topic, QoS, retain and format are taken per property.
    """

    kind = "mqtt"
    batch_limit = 2048
    """Readings taken from the queue at once."""
    fast_chunk = 512
    """QoS 0 messages handed to paho before waiting for them to reach the socket."""
    window = 128
    """Messages in flight at once. aiomqtt scans every pending call on each publish, so a
    much larger window costs more than it gains; QoS 1 needs a window to hide the PUBACK
    round trip."""

    def __init__(self, config: Mapping[str, Any], context: ReporterContext) -> None:
        super().__init__(config, context)
        cfg = parse_config(MqttPushConfig, config)
        _check_mqtt(cfg)
        self._cfg = cfg
        if cfg.address is not None:
            username = context.environ.get(cfg.usernameEnv) if cfg.usernameEnv else None
            password = read_secret(
                context.environ, env=cfg.passwordEnv, file=cfg.passwordFile, what="MQTT password"
            )
            settings = MqttSettings.from_url(
                cfg.address,
                username=username or None,
                password=password,
                ca_file=cfg.caFile,
                cert_file=cfg.certFile,
                key_file=cfg.keyFile,
                protocol=cfg.protocol,
            )
        elif context.mqtt is not None:
            base = context.mqtt
            # A second connection must not reuse the mapper's client id: the broker
            # would disconnect one of the two.
            client_id = f"{base.client_id}-push" if base.client_id else None
            settings = replace(base, client_id=client_id)
        else:
            raise ConfigError(
                "address: no broker given and the mapper has none (give pushMethod.mqtt.address)"
            )
        self.settings = settings
        self.target = settings.url
        self.link: PushLink | None = None
        self._queue = BatchQueue(self.stats, cfg.queueSize)
        self._wires: PropCache[_MqttWire] = PropCache()

    @classmethod
    def validate(cls, config: Mapping[str, Any]) -> None:
        _check_mqtt(parse_config(MqttPushConfig, config))

    @classmethod
    def pool_key(cls, config: Mapping[str, Any]) -> Hashable:
        return parse_config(MqttPushConfig, config).connection_key()

    def offer(self, device: DeviceSpec[Any, Any], items: Sequence[Item]) -> None:
        self._queue.put(device, items)

    def _wire(self, device: DeviceSpec[Any, Any], prop: PropertySpec[Any]) -> _MqttWire:
        def make() -> _MqttWire:
            own = property_config(prop, self.kind)
            cfg = self._cfg if own is None else parse_config(MqttPushConfig, own)
            return _MqttWire(cfg, device, prop)

        return self._wires.prepare(prop, make)

    def encode(self, batches: Sequence[Batch]) -> list[tuple[str, bytes, int, bool]]:
        """The MQTT messages ``(topic, payload, qos, retain)`` of ``batches``."""
        wires = self._wires
        messages: list[tuple[str, bytes, int, bool]] = []
        append = messages.append
        for device, items in batches:
            for prop, value, reading in items:
                wire = wires.get(prop)
                if wire is None:
                    wire = self._wire(device, prop)
                if wire.legacy:
                    ts = reading.source_timestamp or reading.timestamp
                    text = (
                        f"time is {legacy_time(ts)}  {wire.topic}: {format_text(value, prop.type)}"
                    )
                    payload = text.encode()
                else:
                    payload = reading_json(wire.prefix, wire.suffix, value, reading).encode()
                append((wire.topic, payload, wire.qos, wire.retain))
        return messages

    async def run(self) -> None:
        async with PushLink(self.settings, name=f"sink.mqtt[{self.target}]") as link:
            self.link = link
            try:
                while True:
                    batches = await self._queue.take(self.batch_limit)
                    await self._publish(link, self.encode(batches))
            finally:
                self.link = None

    async def _publish(self, link: PushLink, messages: list[tuple[str, bytes, int, bool]]) -> None:
        stats = self.stats
        i, n = 0, len(messages)
        while i < n:
            if not link.connected:
                await link.up.wait()
            paho = link.paho_client() if messages[i][2] == 0 else None
            if paho is not None:
                i = await self._publish_qos0(link, paho, messages, i)
                continue
            j = i + 1
            while j < n and j - i < self.window and messages[j][2] != 0:
                j += 1
            chunk = messages[i:j]
            try:
                acked = await link.publish_batch(chunk)
            except LinkDown:
                stats.errors += 1
                continue
            i += acked
            stats.sent += acked
            if acked < len(chunk):
                stats.errors += 1  # the link dropped: send the rest once it is back

    async def _publish_qos0(
        self,
        link: PushLink,
        paho: mqtt_client.Client,
        messages: list[tuple[str, bytes, int, bool]],
        start: int,
    ) -> int:
        """Hand a run of QoS 0 messages to paho, wait until they are written; return the next."""
        stats = self.stats
        end = min(len(messages), start + self.fast_chunk)
        i = start
        while i < end and messages[i][2] == 0:
            topic, payload, _, retain = messages[i]
            if paho.publish(topic, payload, 0, retain).rc != mqtt_client.MQTT_ERR_SUCCESS:
                break
            i += 1
        spins = 0
        while paho.want_write() and link.connected:
            await asyncio.sleep(0 if spins < 16 else 0.001)
            spins += 1
        if i == start:
            stats.errors += 1  # not connected after all: wait for the link
            await asyncio.sleep(0.05)
        elif link.connected:
            stats.sent += i - start
        else:
            # QoS 0 is at most once: what paho still held when the link dropped is gone.
            stats.errors += 1
            stats.dropped += i - start
        return i

    async def aclose(self) -> None:
        if self._queue.discard():
            log.info("sink=mqtt target=%s event=closed unsent-dropped", self.target)
