"""MQTT for Mapperkit processes: settings from a URL, and a self-healing link.

:class:`MqttSettings` turns ``mqtt://`` / ``mqtts://`` URLs plus options into
what aiomqtt (paho-mqtt underneath) needs: MQTT 3.1.1 by default (KubeEdge's
edgecore speaks it), MQTT 5 on request, TLS with a CA file and an optional
client certificate, username and password.

:class:`MqttLink` is one connection per process that reconnects by itself with
backoff, re-subscribes after every reconnect, hands each incoming message to
a synchronous callback, and tells its owner when it is up or down. Publishing
raises :class:`LinkDown` while the broker is away, so the caller (the outbox)
decides what to keep.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import ssl
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import unquote, urlsplit

import aiomqtt
import paho.mqtt.client as paho

from .errors import ConfigError, MapperError

__all__ = ["LinkDown", "MqttLink", "MqttSettings"]

log = logging.getLogger(__name__)


class LinkDown(MapperError):
    """The broker is not reachable right now; the message was not published."""


@dataclass(frozen=True, slots=True)
class MqttSettings:
    """How to reach the broker."""

    host: str = "127.0.0.1"
    port: int = 1883
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    protocol: Literal["3.1.1", "5"] = "3.1.1"
    client_id: str | None = None
    keepalive: int = 30
    timeout: float = 10.0
    clean_session: bool = True
    max_inflight: int = 0
    """QoS 1 messages in flight at once; 0 is unbounded, since the outbox bounds its
    window itself (paho rescans every in-flight message on each PUBACK when bounded)."""

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        protocol: str = "3.1.1",
        client_id: str | None = None,
    ) -> MqttSettings:
        """Parse ``mqtt://[user[:password]@]host[:port]`` or ``mqtts://...``.

        ``tcp://`` and ``ssl://`` (KubeEdge's spelling) are accepted too.
        Explicit keyword arguments win over credentials in the URL.
        """
        parts = urlsplit(url if "://" in url else f"mqtt://{url}")
        scheme = parts.scheme.lower()
        if scheme in ("mqtt", "tcp"):
            tls = False
        elif scheme in ("mqtts", "ssl", "tls"):
            tls = True
        else:
            raise ConfigError(
                f"broker URL {url!r}: scheme must be mqtt:// or mqtts://, got {scheme}://"
            )
        if not parts.hostname:
            raise ConfigError(f"broker URL {url!r} has no host")
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError:
            raise ConfigError(f"broker URL {url!r} has an invalid port") from None
        if protocol not in ("3.1.1", "5"):
            raise ConfigError(f"MQTT protocol must be 3.1.1 or 5, got {protocol!r}")
        return cls(
            host=parts.hostname,
            port=port,
            tls=tls,
            username=username or (unquote(parts.username) if parts.username else None),
            password=password or (unquote(parts.password) if parts.password else None),
            ca_file=ca_file,
            cert_file=cert_file,
            key_file=key_file,
            protocol=protocol,  # type: ignore[arg-type]
            client_id=client_id,
        )

    def _v5_session(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """MQTT 5 spells a persistent session as clean start off plus a session expiry."""
        if self.protocol != "5" or self.clean_session:
            return kwargs
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 7 * 24 * 3600
        return {"clean_start": False, "properties": props, **kwargs}

    def with_client_id(self, client_id: str) -> MqttSettings:
        return replace(self, client_id=client_id)

    @property
    def url(self) -> str:
        """The broker as a URL, without credentials (safe to log)."""
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    def tls_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        try:
            ctx = ssl.create_default_context(cafile=self.ca_file)
            if self.cert_file:
                ctx.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"TLS setup for {self.url} failed: {exc}") from None
        return ctx

    def client(self, *, client_id: str | None = None, **kwargs: Any) -> aiomqtt.Client:
        """A new, not yet connected aiomqtt client for these settings."""
        kwargs.setdefault("max_inflight_messages", self.max_inflight)
        # paho leaves Nagle's algorithm on: a reply sent right after another would wait
        # for the peer's delayed ACK (40 ms on Linux).
        kwargs.setdefault("socket_options", ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),))
        client = aiomqtt.Client(
            hostname=self.host,
            port=self.port,
            username=self.username,
            password=self.password,
            identifier=client_id or self.client_id or f"mapperkit-{uuid.uuid4().hex[:12]}",
            protocol=aiomqtt.ProtocolVersion.V5
            if self.protocol == "5"
            else aiomqtt.ProtocolVersion.V311,
            tls_context=self.tls_context(),
            keepalive=self.keepalive,
            timeout=self.timeout,
            clean_session=None if self.protocol == "5" else self.clean_session,
            **self._v5_session(kwargs),
        )
        # Mapperkit pipelines QoS 1 publishes on purpose; do not warn about it.
        client.pending_calls_threshold = 1_000_000
        return client


MessageHandler = Callable[[aiomqtt.Message], None]


def describe_mqtt_error(exc: BaseException) -> str:
    """A readable reason for an aiomqtt error (refused credentials, TLS, no broker)."""
    text = str(exc)
    rc = getattr(exc, "rc", None)
    if rc is not None:
        name = getattr(rc, "getName", None)
        rc_text = name() if callable(name) else str(rc)
        if "not authori" in text.lower() or rc_text in (
            "Not authorized",
            "Bad user name or password",
        ):
            return f"the broker refused the credentials ({rc_text})"
        return f"{text} ({rc_text})"
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return f"the broker's TLS certificate is not trusted: {text}"
    return text or type(exc).__name__


class MqttLink:
    """One self-healing MQTT connection.

    Args:
        settings: where and how to connect.
        subscriptions: topic filters to (re)subscribe after every connect, QoS 1.
        on_message: synchronous handler for every incoming message; keep it
            cheap (put work on a queue).
        on_connect: called after every (re)connect, once subscribed and
            :attr:`up` is set; keep it cheap (start a task to publish). The
            mapper fetches desired values from here.
        name: for logs and task names.
        will: ``(topic, payload)`` published by the broker if the link dies.
    """

    def __init__(
        self,
        settings: MqttSettings,
        *,
        subscriptions: Sequence[str] = (),
        on_message: MessageHandler | None = None,
        on_connect: Callable[[], None] | None = None,
        on_disconnect: Callable[[], None] | None = None,
        name: str = "mqtt",
        will: tuple[str, bytes] | None = None,
        backoff_initial: float = 0.2,
        backoff_max: float = 10.0,
    ) -> None:
        self.settings = settings
        self.subscriptions = list(subscriptions)
        self._on_message = on_message
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self.name = name
        self._will = will
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._client: aiomqtt.Client | None = None
        self.up = asyncio.Event()
        self._down = asyncio.Event()
        self._down.set()
        self._task: asyncio.Task[None] | None = None
        self._entered = False
        self.connects = 0
        self.last_error: str | None = None
        self._acks: dict[int, asyncio.Future[None]] = {}
        self._lean = False

    # ---- lifecycle -----------------------------------------------------------
    async def __aenter__(self) -> Self:
        if self._entered:
            raise RuntimeError("MqttLink is not reentrant")
        self._entered = True
        self._task = asyncio.create_task(self._run(), name=f"{self.name}.connection")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # The client's graceful disconnect waits for the broker; do not let a broker
            # (or a socket) that never answers hold up a shutdown.
            done, _ = await asyncio.wait({task}, timeout=self.settings.timeout / 2)
            if task in done and not task.cancelled() and task.exception() is not None:
                log.warning("mqtt=%s event=close-failed error=%r", self.name, task.exception())
        self._entered = False

    async def wait_up(self) -> None:
        """Wait until the link is connected (bound it with ``asyncio.timeout``)."""
        await self.up.wait()

    @property
    def connected(self) -> bool:
        return self.up.is_set()

    def _will_kwargs(self) -> dict[str, Any]:
        if self._will is None:
            return {}
        return {"will": aiomqtt.Will(self._will[0], self._will[1], qos=1, retain=False)}

    async def _run(self) -> None:
        delay = self._backoff_initial
        failures = 0
        while True:
            client = self.settings.client(**self._will_kwargs())
            try:
                async with client:
                    for i in range(0, len(self.subscriptions), 100):
                        chunk = self.subscriptions[i : i + 100]
                        await client.subscribe([(flt, 1) for flt in chunk])
                    self._client = client
                    self._hook_acks(client)
                    self.connects += 1
                    if failures:
                        log.info(
                            "mqtt=%s event=reconnected broker=%s", self.name, self.settings.url
                        )
                    failures = 0
                    delay = self._backoff_initial
                    self.last_error = None
                    self._down.clear()
                    self.up.set()
                    if self._on_connect is not None:
                        try:
                            self._on_connect()
                        except Exception:
                            # A bug in the callback must not stop the link from serving.
                            log.exception("mqtt=%s event=on-connect-failed", self.name)
                    async for message in client.messages:
                        if self._on_message is not None:
                            try:
                                self._on_message(message)
                            except Exception:
                                log.exception(
                                    "mqtt=%s event=handler-failed topic=%s",
                                    self.name,
                                    message.topic,
                                )
            except aiomqtt.MqttError as exc:
                reason = describe_mqtt_error(exc)
                if failures == 0 or reason != self.last_error:
                    log.warning(
                        "mqtt=%s event=disconnected broker=%s reason=%r",
                        self.name,
                        self.settings.url,
                        reason,
                    )
                self.last_error = reason
                failures += 1
            finally:
                was_up = self.up.is_set()
                self._client = None
                self._fail_acks()
                self.up.clear()
                self._down.set()
                if was_up and self._on_disconnect is not None:
                    self._on_disconnect()
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, self._backoff_max)

    # ---- subscriptions ---------------------------------------------------------
    async def subscribe(self, filters: Sequence[str]) -> None:
        """Add topic filters; they are subscribed now if connected, and after every reconnect."""
        new = [f for f in filters if f not in self.subscriptions]
        self.subscriptions.extend(new)
        client = self._client
        if client is not None and self.up.is_set() and new:
            try:
                for i in range(0, len(new), 100):
                    await client.subscribe([(flt, 1) for flt in new[i : i + 100]])
            except aiomqtt.MqttError:
                pass  # the reconnect subscribes them

    async def unsubscribe(self, filters: Sequence[str]) -> None:
        """Drop topic filters."""
        gone = [f for f in filters if f in self.subscriptions]
        for flt in gone:
            self.subscriptions.remove(flt)
        client = self._client
        if client is not None and self.up.is_set() and gone:
            try:
                await client.unsubscribe(gone)
            except aiomqtt.MqttError:
                pass

    # ---- publishing ----------------------------------------------------------
    async def publish(
        self,
        topic: str,
        payload: bytes | str,
        *,
        qos: int = 1,
        retain: bool = False,
        properties: Any = None,
    ) -> None:
        """Publish and, for QoS 1, wait for the broker's PUBACK.

        Raises :class:`LinkDown` when the link is down or drops before the
        broker acknowledged the message.
        """
        client = self._client
        if client is None or not self.up.is_set():
            raise LinkDown(f"broker {self.settings.url} is not connected")
        if self._lean:
            ack = self.send_nowait(
                topic,
                payload if isinstance(payload, bytes) else payload.encode(),
                qos,
                retain,
                properties,
            )
            if ack is not None:
                await ack
            return
        publish = asyncio.ensure_future(
            client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        )
        down = asyncio.ensure_future(self._down.wait())
        try:
            done, _ = await asyncio.wait((publish, down), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            publish.cancel()
            raise
        finally:
            down.cancel()
        if publish in done:
            exc = publish.exception()
            if exc is None:
                return
            raise LinkDown(
                f"publish to {self.settings.url} failed: {describe_mqtt_error(exc)}"
            ) from exc
        publish.cancel()
        raise LinkDown(f"broker {self.settings.url} went away before acknowledging")

    async def publish_batch(self, messages: Sequence[tuple[str, bytes, int, bool]]) -> int:
        """Publish ``(topic, payload, qos, retain)`` messages in order, pipelined.

        Returns how many messages, counted from the first, the broker has
        acknowledged; fewer than ``len(messages)`` means the link went down (the
        rest must be sent again). Raises :class:`LinkDown` when the link is down
        before anything was sent.
        """
        client = self._client
        if client is None or not self.up.is_set():
            raise LinkDown(f"broker {self.settings.url} is not connected")
        if not messages:
            return 0
        if self._lean:
            return await self._publish_lean(messages)
        tasks = [
            asyncio.ensure_future(client.publish(t, p, qos=q, retain=r)) for t, p, q, r in messages
        ]
        everything = asyncio.gather(*tasks, return_exceptions=True)
        down = asyncio.ensure_future(self._down.wait())
        try:
            await asyncio.wait((everything, down), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            for task in tasks:
                task.cancel()
            raise
        finally:
            down.cancel()
        acked = 0
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is None:
                acked += 1
            else:
                break
        if acked < len(tasks):
            for task in tasks:
                task.cancel()
            everything.cancel()
            with contextlib.suppress(BaseException):
                await everything
        return acked

    # ---- lean QoS 1 -----------------------------------------------------------
    # aiomqtt.Client.publish costs a coroutine, an Event and a scan of every pending
    # call per message: about ten times paho's own publish. For pipelined batches the
    # link hands messages to the paho client aiomqtt drives and resolves its own
    # futures from paho's on_publish (PUBACK) callback, which it chains in front of
    # aiomqtt's. Both run in the event loop's thread (aiomqtt reads the socket there).
    def _hook_acks(self, client: aiomqtt.Client) -> None:
        inner = getattr(client, "_client", None)
        original = getattr(inner, "on_publish", None)
        if not isinstance(inner, paho.Client) or original is None:
            self._lean = False
            return
        acks = self._acks

        def on_publish(*args: Any) -> None:
            # paho's signature: (client, userdata, mid, reason_code, properties)
            fut = acks.pop(args[2], None)
            if fut is not None and not fut.done():
                fut.set_result(None)
            original(*args)

        inner.on_publish = on_publish
        self._lean = True

    def _fail_acks(self) -> None:
        acks, self._acks = self._acks, {}
        for fut in acks.values():
            if not fut.done():
                fut.set_exception(
                    LinkDown(f"broker {self.settings.url} went away before acknowledging")
                )
                fut.add_done_callback(_retrieve)

    def send_nowait(
        self, topic: str, payload: bytes, qos: int, retain: bool, properties: Any = None
    ) -> asyncio.Future[None] | None:
        """Hand one message to the connection now; the future of its PUBACK, or ``None``.

        ``None`` means nothing is to be waited for (QoS 0, or already acknowledged).
        Messages handed over in a row go out in that order. Raises
        :class:`LinkDown` when the link is down; the future fails with
        :class:`LinkDown` if the connection drops before the broker acknowledged.
        """
        client = self._paho()
        if client is None:
            raise LinkDown(f"broker {self.settings.url} is not connected")
        info = client.publish(topic, payload, qos, retain, properties)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise LinkDown(f"broker {self.settings.url}: publish refused ({info.rc})")
        if qos == 0 or info.is_published():
            return None
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._acks[info.mid] = ack
        return ack

    async def _publish_lean(self, messages: Sequence[tuple[str, bytes, int, bool]]) -> int:
        acks: list[asyncio.Future[None] | None] = []
        for topic, payload, qos, retain in messages:
            try:
                acks.append(self.send_nowait(topic, payload, qos, retain))
            except LinkDown:
                if not acks:
                    raise
                break
        pending = [a for a in acks if a is not None]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        acked = 0
        for ack in acks:
            if ack is None or ack.exception() is None:
                acked += 1
            else:
                break
        if any(m[2] == 0 for m in messages[:acked]):
            await self.drain()
        return acked

    # ---- QoS 0 without waiting -------------------------------------------------
    def _paho(self) -> paho.Client | None:
        # aiomqtt.Client.publish waits on an event per message, QoS 0 included, and
        # scans its pending calls on every publish; telemetry at QoS 0 needs neither,
        # so it goes straight to the paho client aiomqtt drives (pinned aiomqtt 2.x).
        client = self._client
        if client is None or not self.up.is_set():
            return None
        inner = getattr(client, "_client", None)
        return inner if isinstance(inner, paho.Client) else None

    @property
    def can_send_nowait(self) -> bool:
        """Whether :meth:`send_nowait` can take messages now (connected, lean path)."""
        return self._lean and self._paho() is not None

    @property
    def can_publish_nowait(self) -> bool:
        """Whether :meth:`publish_nowait` is available now (connected)."""
        return self._paho() is not None

    def publish_nowait(self, topic: str, payload: bytes, *, retain: bool = False) -> bool:
        """Queue one QoS 0 message on the connection; ``False`` when it was not taken.

        Call :meth:`drain` after a run of these to wait until they are written.
        """
        client = self._paho()
        if client is None:
            return False
        return bool(client.publish(topic, payload, 0, retain).rc == paho.MQTT_ERR_SUCCESS)

    async def drain(self) -> None:
        """Wait until messages queued with :meth:`publish_nowait` reached the socket."""
        spins = 0
        client = self._paho()
        while client is not None and client.want_write() and self.up.is_set():
            await asyncio.sleep(0 if spins < 16 else 0.001)
            spins += 1


def _retrieve(fut: asyncio.Future[Any]) -> None:
    """Mark a future's outcome as seen (a cancelled batch is not an error to report)."""
    if not fut.cancelled():
        fut.exception()
