"""The command line of KubeEdge mode, and a real mapper process end to end."""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from mapper_sdk.cli import add_broker_options
from mapper_sdk.errors import ConfigError, DriverNotFound
from mapper_sdk.kubeedge import add_kubeedge_options, options_from_args, run_kubeedge
from mapper_sdk.kubeedge.regenerate import main as regenerate
from simulators.modbus import ModbusSimulator

from .edgecore import FakeEdgecore, wait_for
from .test_modbus import THERMOSTAT


def parser(with_broker: bool) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    if with_broker:
        add_broker_options(p)
    add_kubeedge_options(p)
    return p


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("MAPPERKIT_PROTOCOL", "MAPPERKIT_DMI_SOCKET", "MAPPERKIT_MAPPER_SOCKET"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("MAPPERKIT_BROKER", raising=False)
    args = parser(with_broker=False).parse_args(["--kubeedge"])
    options = options_from_args(args)
    assert args.kubeedge
    assert options.protocol == "modbus"
    assert options.dmi_socket == Path("/etc/kubeedge/dmi.sock")
    assert options.socket == Path("/etc/kubeedge/mapperkit-modbus.sock")
    assert (options.budget.rate, options.budget.burst) == (1.0, 100)
    assert options.health == ("127.0.0.1", 7778)
    assert options.mapper.mqtt is None  # no broker: the twin goes over DMI


def test_options_beside_mapperkit_run_broker_options() -> None:
    args = parser(with_broker=True).parse_args(
        [
            "--kubeedge",
            "--protocol",
            "opcua",
            "--mapper-socket",
            "/run/m.sock",
            "--broker",
            "mqtt://10.1.2.3:1884",
            "--dmi-rate",
            "0.5",
            "--dmi-burst",
            "20",
            "--health-port",
            "0",
        ]
    )
    options = options_from_args(args)
    assert options.socket == Path("/run/m.sock")
    assert options.mapper.mqtt is not None
    assert (options.mapper.mqtt.host, options.mapper.mqtt.port) == ("10.1.2.3", 1884)
    assert (options.budget.rate, options.budget.burst) == (0.5, 20)
    assert options.health is None


def test_bad_options_are_config_errors() -> None:
    args = parser(with_broker=False).parse_args(["--dmi-rate", "0"])
    with pytest.raises(ConfigError, match="rate must be positive"):
        options_from_args(args)
    args = parser(with_broker=False).parse_args(["--health-port", "70000"])
    with pytest.raises(ConfigError, match="--health-port"):
        options_from_args(args)


async def test_unknown_protocol_names_the_installed_drivers() -> None:
    args = parser(with_broker=False).parse_args(["--kubeedge", "--protocol", "zigbee"])
    with pytest.raises(DriverNotFound, match=r"'zigbee'.*installed: .*modbus"):
        await run_kubeedge(args)


def test_committed_stubs_match_the_proto(capsys: pytest.CaptureFixture[str]) -> None:
    assert regenerate(["--check"]) == 0
    assert "match" in capsys.readouterr().out


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_mapper_process_registers_reports_and_stops_on_sigterm(sockets: Path) -> None:
    health, api = free_port(), free_port()
    async with ModbusSimulator("thermostat", port=0) as sim:
        core = FakeEdgecore(sockets / "dmi.sock")
        core.load(THERMOSTAT.format(port=sim.port))
        async with core:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "mapper_sdk.kubeedge",
                "--protocol",
                "modbus",
                "--dmi-socket",
                str(sockets / "dmi.sock"),
                "--mapper-socket",
                str(sockets / "modbus.sock"),
                "--health-port",
                str(health),
                "--http-port",
                str(api),
                "--log-level",
                "warning",
                stderr=asyncio.subprocess.PIPE,
            )
            try:
                await wait_for(
                    lambda: core.latest_twins("thermostat-1").get("setpoint") == ("21.5", "21.5"),
                    timeout=20,
                    what="reports from the process",
                )
                assert "online" in core.states("thermostat-1")
                async with aiohttp.ClientSession() as http:
                    async with http.get(f"http://127.0.0.1:{health}/readyz") as resp:
                        assert resp.status == 200
                    # The management API serves the devices edgecore handed over.
                    url = f"http://127.0.0.1:{api}/api/v1/device/plant/thermostat-1/setpoint"
                    async with http.get(url) as resp:
                        assert resp.status == 200, await resp.text()
                        assert "21.5" in await resp.text()
                    async with http.get(f"http://127.0.0.1:{api}/metrics") as resp:
                        assert resp.status == 200
                proc.send_signal(signal.SIGTERM)
                async with asyncio.timeout(10):
                    _, stderr = await proc.communicate()
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            assert proc.returncode == 0, stderr.decode()
            assert core.states("thermostat-1")[-1] == "offline"
            assert not (sockets / "modbus.sock").exists()


def test_options_need_no_grpc_and_running_explains_the_missing_extra() -> None:
    # A fresh interpreter in which grpc cannot be imported, as without the extra.
    code = (
        "import sys; sys.modules['grpc'] = None\n"
        "import argparse\n"
        "from mapper_sdk.kubeedge.options import add_kubeedge_options\n"
        "p = argparse.ArgumentParser(); add_kubeedge_options(p)\n"
        "assert p.parse_args(['--kubeedge']).kubeedge\n"
        "import mapper_sdk.kubeedge as k\n"
        "try:\n"
        "    k.run_kubeedge\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == (
        "ConfigError KubeEdge mode needs grpc: pip install 'mapperkit[kubeedge]'"
    )
