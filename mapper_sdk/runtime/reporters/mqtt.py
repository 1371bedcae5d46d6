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

"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Literal

from pydantic import Field

from ...codec import format_text
from ...errors import ConfigError
from ...model import DeviceSpec, PropertySpec
from ...mqtt import LinkDown, MqttLink, MqttSettings
from ._common import (
    DEFAULT_QUEUE,
    Batch,
    BatchQueue,
    Format,
    PropCache,
    PushConfig,
    check_template,
    fill_template,
    legacy_time,
    parse_config,
    property_config,
    read_secret,
    reading_json,
    reading_prefix,
    reading_suffix,
)
from .base import Item, Reporter, ReporterContext

__all__ = ["MqttPushConfig", "MqttReporter"]

log = logging.getLogger("mapper_sdk.reporters")


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
        self.link: MqttLink | None = None
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
        async with MqttLink(self.settings, name=f"sink.mqtt[{self.target}]") as link:
            self.link = link
            try:
                while True:
                    batches = await self._queue.take(self.batch_limit)
                    await self._publish(link, self.encode(batches))
            finally:
                self.link = None

    async def _publish(self, link: MqttLink, messages: list[tuple[str, bytes, int, bool]]) -> None:
        stats = self.stats
        i, n = 0, len(messages)
        while i < n:
            if not link.connected:
                await link.up.wait()
            if messages[i][2] == 0 and link.can_publish_nowait:
                i = await self._publish_qos0(link, messages, i)
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
        link: MqttLink,
        messages: list[tuple[str, bytes, int, bool]],
        start: int,
    ) -> int:
        """Hand a run of QoS 0 messages to the link and wait until they are written.

        Returns the index of the next message to send.
        """
        stats = self.stats
        end = min(len(messages), start + self.fast_chunk)
        i = start
        while i < end and messages[i][2] == 0:
            topic, payload, _, retain = messages[i]
            if not link.publish_nowait(topic, payload, retain=retain):
                break
            i += 1
        await link.drain()
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
