"""The OPC-UA simulator: profiles, behaviours, faults and the ``mapperkit sim opcua`` command."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

import pytest
import yaml
from asyncua import Client, ua

from mapper_sdk.testing import free_port
from simulators.opcua import BUILTIN_PROFILES, OpcUaSimulator, Profile, load_profile
from simulators.opcua.cli import register

pytestmark = pytest.mark.timeout(60)


def test_builtin_profile_loads() -> None:
    assert load_profile("thermostat") == load_profile(BUILTIN_PROFILES / "thermostat.yaml")
    with pytest.raises(ValueError, match="built-in: thermostat"):
        load_profile("boiler")
    profile = load_profile(BUILTIN_PROFILES / "thermostat.yaml")
    names = {v.name for v in profile.variables}
    assert {"temperature", "setpoint", "humidity", "runtimeHours"} <= names
    assert next(v for v in profile.variables if v.name == "setpoint").writable


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ([{"name": "a", "type": "Double", "behaviour": "sine", "step": 1}], "step, min and max"),
        ([{"name": "a", "type": "String", "behaviour": "counter"}], "needs a numeric type"),
        ([{"name": "a", "type": "Byte", "value": 256}], "outside the Byte range"),
        ([{"name": "a", "type": "Float", "value": "x"}], "is a number"),
        ([{"name": "a", "type": "Quaternion"}], "unknown type"),
        ([{"name": "a", "type": "Int32", "behaviour": "wobble"}], "unknown behaviour"),
        ([{"name": "a", "type": "Int32"}, {"name": "a", "type": "Int32"}], "listed twice"),
        ([{"name": "a", "type": "Int32", "nodeId": "ns=2;i=4"}], "no ns="),
        ([{"name": "a", "type": "Int32", "behaviour": "randomWalk", "min": 5, "max": 1}], "below"),
    ],
)
def test_profile_errors(tmp_path: Path, variables: list[dict[str, object]], message: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"variables": variables}))
    with pytest.raises(ValueError, match=message) as info:
        load_profile(path)
    assert str(path) in str(info.value)


def test_secure_profile_needs_a_certificate() -> None:
    with pytest.raises(ValueError, match="need the server's certificate"):
        Profile.model_validate(
            {
                "security": {"policies": ["Basic256Sha256_SignAndEncrypt"]},
                "variables": [{"name": "a", "type": "Int32"}],
            }
        )


async def test_behaviours_move_values(sim: OpcUaSimulator) -> None:
    first = sim.value("fast")
    await asyncio.sleep(0.3)
    assert sim.value("fast") > first
    assert 19.5 <= sim.value("temperature") <= 22.5
    assert 30.0 <= sim.value("humidity") <= 60.0
    assert sim.value("mode") == "comfort"


async def test_restart_keeps_the_port_and_drops_sessions(sim: OpcUaSimulator) -> None:
    port = sim.port
    async with Client(sim.url) as client:
        node = client.get_node(sim.node_id("setpoint"))
        await node.read_value()
        await sim.restart(downtime=0.1)
        with pytest.raises((ConnectionError, ua.UaError, OSError, TimeoutError)):
            await node.read_value()
    assert sim.port == port
    async with Client(sim.url) as client:
        assert await client.get_node(sim.node_id("mode")).read_value() == "comfort"


async def test_refused_writes_and_type_checks(sim: OpcUaSimulator) -> None:
    async with Client(sim.url) as client:
        setpoint = client.get_node(sim.node_id("setpoint"))
        with pytest.raises(ua.UaStatusCodeError, match="BadTypeMismatch"):
            await setpoint.write_value(ua.Variant(5, ua.VariantType.Int32))
        sim.refuse_writes(status="BadUserAccessDenied")
        with pytest.raises(ua.UaStatusCodeError, match="BadUserAccessDenied"):
            await setpoint.write_value(ua.Variant(20.0, ua.VariantType.Double))
        sim.accept_writes()
        await setpoint.write_value(ua.Variant(21.5, ua.VariantType.Double))
    with pytest.raises(ValueError, match="unknown OPC-UA status"):
        sim.refuse_writes(status="BadWeather")
    with pytest.raises(KeyError, match="not a variable"):
        sim.value("nothing")


def test_make_certs_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["opcua", "--make-certs", str(tmp_path / "pki")])
    assert args.func(args) == 0
    for name in (
        "ca.pem",
        "server-cert.pem",
        "server-key.pem",
        "client-cert.pem",
        "client-key.pem",
    ):
        assert (tmp_path / "pki" / name).is_file()
    assert "client certificate" in capsys.readouterr().out


async def test_standalone_command_serves_the_profile() -> None:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mapper_sdk.cli",
        "sim",
        "opcua",
        "--port",
        str(port),
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(30):
            line = (await proc.stdout.readline()).decode()
        assert f"opc.tcp://127.0.0.1:{port}/mapperkit/thermostat" in line, line
        async with Client(f"opc.tcp://127.0.0.1:{port}/mapperkit/thermostat") as client:
            node = client.get_node("ns=2;s=Thermostat.setpoint")
            assert await node.read_value() == 21.5
    finally:
        proc.terminate()
        async with asyncio.timeout(10):
            assert await proc.wait() == 0
