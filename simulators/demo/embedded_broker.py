"""An embedded MQTT broker for the demo when Mosquitto is not installed.

``python -m simulators.demo.embedded_broker --port N`` runs amqtt (a maintained
pure-Python broker) in a process of its own (its event loop and paho's blocking
connect must not share one), prints ``ready`` once it listens, and stops on
SIGTERM. It is a fallback for a demo: MQTT 3.1.1 only, nothing persisted.

amqtt refuses client messages on topics starting with ``$`` (MQTT 4.7.2-1 lets a
broker reserve them), while KubeEdge's twin topics are ``$hw/events/...``, which
Mosquitto and edgecore's broker carry. :class:`KubeEdgeBroker` lets them through.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from typing import Any

from amqtt.broker import Broker


class _Topic(str):
    """A topic that does not count as reserved (see the module docstring)."""

    __slots__ = ()

    def startswith(self, prefix: Any, *args: Any) -> bool:
        if prefix == "$":
            return False
        return str.startswith(self, prefix, *args)


class KubeEdgeBroker(Broker):  # type: ignore[misc]
    """amqtt's broker, carrying ``$hw/...`` topics like Mosquitto does."""

    async def _handle_message_delivery(
        self, client_session: Any, handler: Any, wait_deliver: asyncio.Future[Any]
    ) -> bool:
        message = wait_deliver.result()
        topic = getattr(message, "topic", None)
        if isinstance(topic, str) and topic.startswith("$hw/"):
            message.topic = _Topic(topic)
        result: bool = await super()._handle_message_delivery(client_session, handler, wait_deliver)
        return result


async def serve(port: int) -> None:
    broker = KubeEdgeBroker(
        {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }
    )
    await broker.start()
    print("ready", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await broker.shutdown()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m simulators.demo.embedded_broker")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(serve(args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
