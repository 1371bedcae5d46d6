"""MQTT over TLS, client certificates, credentials, and the generated broker ACL."""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from mapper_sdk import topics
from mapper_sdk.acl import AppRule, build_acl, render_acl, render_passwords
from mapper_sdk.api import ApiServer, server_tls
from mapper_sdk.driver import Resources
from mapper_sdk.model import load_text
from mapper_sdk.mqtt import LinkDown, MqttLink, MqttSettings
from mapper_sdk.runtime import Mapper, MapperOptions
from mapper_sdk.testing import Mosquitto
from mapper_sdk.testing.pki import TestPki

from ..sdk.memdriver import MemBus, MemDriver

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return TestPki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_broker(pki: TestPki) -> Iterator[Mosquitto]:
    server = pki.server()
    broker = Mosquitto(tls=(pki.ca.cert, server.cert, server.key), users={"edge": "pw-1"})
    broker.start()
    yield broker
    broker.close()


async def _up(link: MqttLink, timeout: float = 5.0) -> bool:
    for _ in range(int(timeout / 0.02)):
        if link.connected or link.last_error:
            break
        await asyncio.sleep(0.02)
    return link.connected


async def test_mqtts_with_trusted_ca_and_password(tls_broker: Mosquitto, pki: TestPki) -> None:
    settings = MqttSettings.from_url(
        tls_broker.url, username="edge", password="pw-1", ca_file=str(pki.ca.cert)
    )
    assert settings.tls
    async with MqttLink(settings) as link:
        assert await _up(link), link.last_error
        await link.publish("secure/ok", b"1")


async def test_untrusted_broker_certificate_is_refused_clearly(
    tls_broker: Mosquitto, tmp_path: Path
) -> None:
    other = TestPki(tmp_path / "other", name="Someone Else's CA")
    settings = MqttSettings.from_url(
        tls_broker.url, username="edge", password="pw-1", ca_file=str(other.ca.cert)
    )
    async with MqttLink(settings, backoff_initial=0.05) as link:
        assert not await _up(link)
        with pytest.raises(LinkDown):
            await link.publish("secure/no", b"1")
    assert link.last_error is not None
    assert "TLS certificate is not trusted" in link.last_error


async def test_wrong_password_over_tls_is_refused_clearly(
    tls_broker: Mosquitto, pki: TestPki
) -> None:
    settings = MqttSettings.from_url(
        tls_broker.url, username="edge", password="nope", ca_file=str(pki.ca.cert)
    )
    async with MqttLink(settings, backoff_initial=0.05) as link:
        assert not await _up(link)
    assert link.last_error is not None
    assert "refused the credentials" in link.last_error


async def test_client_certificate_required(pki: TestPki) -> None:
    server = pki.server("server-mtls")
    client = pki.client()
    with Mosquitto(tls=(pki.ca.cert, server.cert, server.key), require_certificate=True) as broker:
        good = MqttSettings.from_url(
            broker.url,
            ca_file=str(pki.ca.cert),
            cert_file=str(client.cert),
            key_file=str(client.key),
        )
        async with MqttLink(good) as link:
            assert await _up(link), link.last_error
        # TLS 1.3 reports the missing certificate after the handshake, as an alert that
        # paho logs; the connection never gets its CONNACK.
        bare = replace(MqttSettings.from_url(broker.url, ca_file=str(pki.ca.cert)), timeout=1.0)
        async with MqttLink(bare, backoff_initial=0.05) as link:
            assert not await _up(link, timeout=4.0)
            assert link.last_error


def test_missing_ca_file_is_a_config_error(tmp_path: Path) -> None:
    from mapper_sdk.errors import ConfigError

    settings = MqttSettings.from_url("mqtts://127.0.0.1:1", ca_file=str(tmp_path / "none.pem"))
    with pytest.raises(ConfigError, match=re.escape("TLS setup for mqtts://127.0.0.1:1 failed")):
        settings.tls_context()


# --------------------------------------------------------------------------- ACL
DEVICES = """
devices:
  - name: pump-a
    nodeName: node-1
    protocol: mem
    connection: {device: pump-a}
    properties:
      - {name: flow, type: float, visitor: {address: f},
         pushMethod: {mqtt: {topic: "telemetry/{device}/{property}"}}}
  - name: pump-b
    nodeName: node-2
    protocol: mem
    connection: {device: pump-b}
    properties:
      - {name: flow, type: float, visitor: {address: f}}
"""


def test_acl_rules_per_identity() -> None:
    inv = load_text(DEVICES)
    idents = {i.user: i for i in build_acl(inv.devices, apps=[AppRule.parse("dash:ro:pump-a")])}
    assert set(idents) == {"twin", "mapper-node-1", "mapper-node-2", "dash"}
    a_update = topics.device_topic("default", "pump-a", topics.TWIN_UPDATE)
    b_update = topics.device_topic("default", "pump-b", topics.TWIN_UPDATE)
    assert a_update in idents["mapper-node-1"].write
    assert b_update not in idents["mapper-node-1"].write
    assert "telemetry/pump-a/flow" in idents["mapper-node-1"].write
    assert a_update not in idents["dash"].write  # read-only app
    assert topics.device_topic("default", "pump-a", topics.TWIN_GET) in idents["dash"].write
    assert all("pump-b" not in t for t in idents["dash"].read + idents["dash"].write)
    text = render_acl(list(idents.values()), ["devices.yaml"])
    assert "user mapper-node-2\n" in text
    assert render_passwords(list(idents.values()), generate=False).count(":CHANGE-ME") == 4


async def test_mosquitto_enforces_the_generated_acl(tmp_path: Path) -> None:
    files = tmp_path / "devices.yaml"
    files.write_text(DEVICES)
    out = tmp_path / "acl-out"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mapper_sdk.cli",
        "broker",
        "acl",
        "--devices",
        str(files),
        "-o",
        str(out),
        "--generate-passwords",
        cwd=ROOT,
        stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    _, stderr = await proc.communicate()
    assert proc.returncode == 0, stderr.decode()
    passwords = dict(
        line.split(":", 1) for line in (out / "passwd.txt").read_text().splitlines() if line
    )
    assert passwords["mapper-node-1"] != "CHANGE-ME"
    with Mosquitto(users=passwords, acl_file=out / "acl") as broker:

        def settings(user: str) -> MqttSettings:
            return MqttSettings.from_url(broker.url, username=user, password=passwords[user])

        received: list[str] = []
        twin = MqttLink(
            settings("twin"),
            subscriptions=["$hw/events/device/+/+/twin/update"],
            on_message=lambda m: received.append(m.topic.value),
        )
        mapper = MqttLink(settings("mapper-node-1"))
        async with twin, mapper:
            assert await _up(twin) and await _up(mapper)
            own = topics.device_topic("default", "pump-a", topics.TWIN_UPDATE)
            other = topics.device_topic("default", "pump-b", topics.TWIN_UPDATE)
            # MQTT 3.1.1 has no error for a denied publish: the broker drops it.
            await mapper.publish(other, b'{"twin": {}}')
            await mapper.publish(own, b'{"twin": {}}')
            for _ in range(100):
                if received:
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.2)
    assert received == [own]


# --------------------------------------------------------------------------- HTTP API
async def test_api_over_https_with_token_and_no_secrets_in_logs(
    mosquitto: Mosquitto, pki: TestPki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    bus = MemBus()
    bus.device("pump-a").values["f"] = 3.5
    plain = DEVICES.replace(
        ',\n         pushMethod: {mqtt: {topic: "telemetry/{device}/{property}"}}}', "}"
    )
    device = load_text(plain, drivers={"mem": MemDriver}).device("pump-a")
    assert device.properties[0].push_method is None
    resources = Resources()
    resources.extras["mem.bus"] = bus
    secret_password = "mqtt-secret-123"
    options = MapperOptions(
        mqtt=MqttSettings.from_url(mosquitto.url, password=secret_password, username="nobody")
    )
    # The anonymous broker accepts any credentials; what matters is where they show up.
    cert = pki.server("https")
    token = "api-token-456"
    mapper = Mapper([device], {"mem": MemDriver}, options, resources=resources)
    ctx = ssl.create_default_context(cafile=str(pki.ca.cert))
    async with (
        mapper,
        ApiServer(
            mapper, port=0, token=token, ssl_context=server_tls(str(cert.cert), str(cert.key))
        ) as api,
    ):
        base = f"https://127.0.0.1:{api.port}"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/api/v1/ping", ssl=ctx) as resp:
                assert resp.status == 401
            headers = {"Authorization": f"Bearer {token}"}
            while not mapper.worker("pump-a").connected:
                await asyncio.sleep(0.02)
            async with http.get(
                f"{base}/api/v1/device/default/pump-a/flow", ssl=ctx, headers=headers
            ) as resp:
                assert resp.status == 200
                body: Any = await resp.json()
            async with http.get(f"{base}/metrics", ssl=ctx, headers=headers) as resp:
                metrics = await resp.text()
            async with http.get(
                f"{base}/api/v1/ping", ssl=ctx, headers={"Authorization": "Bearer wrong"}
            ) as resp:
                assert resp.status == 401
                denied = await resp.text()
    assert "3.5" in str(body)
    for secret in (secret_password, token):
        assert secret not in caplog.text
        assert secret not in metrics
        assert secret not in denied
    assert secret_password not in repr(options)
