"""An MQTT peer for tests: records what arrives and waits for conditions."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiomqtt


@dataclass
class Received:
    topic: str
    payload: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.payload)


class MqttPeer:
    """Subscribes to filters, keeps every message, and publishes on request."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.messages: list[Received] = []
        self._changed = asyncio.Condition()

    async def _pump(self) -> None:
        async for message in self.client.messages:
            payload = message.payload if isinstance(message.payload, bytes) else b""
            async with self._changed:
                self.messages.append(Received(message.topic.value, payload))
                self._changed.notify_all()

    def on(self, suffix: str) -> list[Received]:
        return [m for m in self.messages if m.topic.endswith(suffix)]

    async def wait_for(
        self, predicate: Callable[[list[Received]], Any], timeout: float = 10.0
    ) -> Any:
        """Wait until ``predicate(messages)`` is truthy; return its value."""
        async with asyncio.timeout(timeout), self._changed:
            while True:
                result = predicate(self.messages)
                if result:
                    return result
                await self._changed.wait()

    async def publish(self, topic: str, doc: Any, qos: int = 1) -> None:
        payload = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        await self.client.publish(topic, payload, qos=qos)


@contextlib.asynccontextmanager
async def mqtt_peer(
    url_port: int, *filters: str, client_id: str | None = None, clean: bool = True
) -> AsyncIterator[MqttPeer]:
    client = aiomqtt.Client("127.0.0.1", url_port, identifier=client_id, clean_session=clean)
    async with client:
        for flt in filters:
            await client.subscribe(flt, qos=1)
        peer = MqttPeer(client)
        task = asyncio.create_task(peer._pump(), name="test.mqttpeer")
        try:
            yield peer
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await task
