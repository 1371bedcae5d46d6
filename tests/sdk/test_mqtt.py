"""MQTT settings and the self-healing link, against real brokers."""

from __future__ import annotations

import asyncio
import logging

import pytest

from mapper_sdk.errors import ConfigError
from mapper_sdk.mqtt import LinkDown, MqttLink, MqttSettings
from mapper_sdk.testing import Mosquitto

from ..conftest import MQTT_PASSWORD, MQTT_USER
from ..mqttpeer import mqtt_peer


def test_urls() -> None:
    s = MqttSettings.from_url("mqtt://broker.local")
    assert (s.host, s.port, s.tls) == ("broker.local", 1883, False)
    s = MqttSettings.from_url("mqtts://u:p%40ss@10.0.0.1")
    assert (s.host, s.port, s.tls, s.username, s.password) == ("10.0.0.1", 8883, True, "u", "p@ss")
    assert "p@ss" not in repr(s) and s.url == "mqtts://10.0.0.1:8883"
    s = MqttSettings.from_url("tcp://127.0.0.1:1884", username="x", password="y", protocol="5")
    assert (s.port, s.username, s.password, s.protocol) == (1884, "x", "y", "5")
    assert MqttSettings.from_url("127.0.0.1:1999").port == 1999
    with pytest.raises(ConfigError, match="scheme must be mqtt:// or mqtts://"):
        MqttSettings.from_url("http://x")
    with pytest.raises(ConfigError, match="invalid port"):
        MqttSettings.from_url("mqtt://x:99999")
    with pytest.raises(ConfigError, match=r"3\.1\.1 or 5"):
        MqttSettings.from_url("mqtt://x", protocol="4")


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_link_publishes_and_receives(mosquitto: Mosquitto, protocol: str) -> None:
    got: list[bytes] = []
    connected = asyncio.Event()
    settings = MqttSettings.from_url(mosquitto.url, protocol=protocol)
    link = MqttLink(
        settings,
        subscriptions=[f"link-test/{protocol}/in"],
        on_message=lambda m: got.append(m.payload),  # type: ignore[arg-type]
        on_connect=connected.set,
    )
    async with mqtt_peer(mosquitto.port, f"link-test/{protocol}/out") as peer, link:
        async with asyncio.timeout(5):
            await connected.wait()
        await link.publish(f"link-test/{protocol}/out", b"hello")
        acked = await link.publish_batch(
            [(f"link-test/{protocol}/out", str(i).encode(), 1, False) for i in range(50)]
        )
        assert acked == 50
        await peer.publish(f"link-test/{protocol}/in", b"ping")
        await peer.wait_for(lambda m: len(m) == 51)
        assert [m.payload for m in peer.messages] == [b"hello"] + [
            str(i).encode() for i in range(50)
        ]
        for _ in range(100):
            if got:
                break
            await asyncio.sleep(0.02)
    assert got == [b"ping"]


async def test_link_with_credentials(mosquitto_auth: Mosquitto) -> None:
    settings = MqttSettings.from_url(mosquitto_auth.url, username=MQTT_USER, password=MQTT_PASSWORD)
    async with MqttLink(settings) as link:
        async with asyncio.timeout(5):
            await link.wait_up()
        await link.publish("auth/ok", b"1")


async def test_wrong_password_is_refused_with_a_clear_reason(
    mosquitto_auth: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="mapper_sdk.mqtt")
    settings = MqttSettings.from_url(mosquitto_auth.url, username=MQTT_USER, password="wrong")
    async with MqttLink(settings, backoff_initial=0.05) as link:
        for _ in range(100):
            if link.last_error:
                break
            await asyncio.sleep(0.02)
        assert not link.connected
        with pytest.raises(LinkDown, match="not connected"):
            await link.publish("auth/no", b"1")
    assert link.last_error is not None
    assert "refused the credentials" in link.last_error
    assert "refused the credentials" in caplog.text


async def test_link_reconnects_after_broker_restart(private_mosquitto: Mosquitto) -> None:
    connects = 0

    def on_connect() -> None:
        nonlocal connects
        connects += 1

    settings = MqttSettings.from_url(private_mosquitto.url)
    async with MqttLink(settings, on_connect=on_connect, backoff_initial=0.05) as link:
        async with asyncio.timeout(5):
            await link.wait_up()
        private_mosquitto.stop()
        for _ in range(200):
            if not link.connected:
                break
            await asyncio.sleep(0.01)
        with pytest.raises(LinkDown):
            await link.publish("x", b"1")
        private_mosquitto.start()
        async with asyncio.timeout(10):
            await link.wait_up()
        await link.publish("x", b"2")
    assert connects == 2
