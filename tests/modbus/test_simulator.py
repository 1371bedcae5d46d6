"""The Modbus simulator: profiles, behaviours, faults, counters and the command line."""

from __future__ import annotations

import argparse
import asyncio
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.framer import FramerType

from mapper_sdk.cli import build_parser
from simulators.modbus import Fault, ModbusSimulator, load_profile
from simulators.modbus.cli import register, run
from simulators.modbus.profile import Point, decode_value, encode_value
from simulators.modbus.server import LivePoint

PROFILES = Path(__file__).parents[2] / "simulators" / "modbus" / "profiles"


def one_unit(*points: dict[str, Any], **unit: Any) -> dict[str, Any]:
    return {"units": [{"id": 1, "points": list(points), **unit}]}


@pytest.mark.parametrize("name", ["energy_meter", "thermostat"])
def test_shipped_profiles_load(name: str) -> None:
    by_name = load_profile(name)
    by_path = load_profile(PROFILES / f"{name}.yaml")
    assert by_name == by_path
    assert by_name.units[0].points


def test_python_profile(tmp_path: Path) -> None:
    path = tmp_path / "plant.py"
    path.write_text(
        "PROFILE = {'units': [{'id': 5, 'points': "
        "[{'name': 'x', 'table': 'holding', 'address': 0, 'value': 3}]}]}\n"
    )
    assert load_profile(path).units[0].id == 5


@pytest.mark.parametrize(
    ("profile", "message"),
    [
        ({"units": []}, "units"),
        (one_unit({"name": "x", "table": "tape", "address": 0}), "expected coil, discrete"),
        (
            one_unit(
                {"name": "x", "table": "holding", "address": 0, "type": "float32"},
                {"name": "y", "table": "holding", "address": 1},
            ),
            "overlap",
        ),
        (
            one_unit(
                {"name": "x", "table": "holding", "address": 0},
                {"name": "x", "table": "input", "address": 0},
            ),
            "defined twice",
        ),
        (one_unit({"name": "x", "table": "coil", "address": 0, "type": "int16"}), "single bits"),
        (
            one_unit({"name": "x", "table": "holding", "address": 0, "value": 70000}),
            "does not fit in uint16",
        ),
        (
            one_unit(
                {"name": "s", "table": "holding", "address": 0, "type": "string", "value": "abc"}
            ),
            "do not fit in 1 registers",
        ),
        (
            one_unit(
                {
                    "name": "s",
                    "table": "holding",
                    "address": 0,
                    "type": "string",
                    "length": 2,
                    "behaviour": "counter",
                }
            ),
            "constant or a setpoint",
        ),
        (one_unit({"name": "x", "table": "input", "address": 0, "writable": True}), "writable"),
        (
            one_unit({"name": "x", "table": "holding", "address": 0, "behaviour": "wobble"}),
            "behaviour",
        ),
        ({**one_unit(), "faults": [{"unit": 1}]}, "needs exception, delay or drop"),
        ({**one_unit(), "faults": [{"exception": 9}]}, "not a Modbus exception code"),
    ],
)
def test_profile_errors(profile: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_profile(profile)


def test_missing_profile_file() -> None:
    with pytest.raises(ValueError, match="no such profile file"):
        load_profile("/nonexistent/profile.yaml")


@pytest.mark.parametrize(
    ("value", "ptype", "byte", "word", "regs"),
    [
        (0x12345678, "uint32", "big", "big", [0x1234, 0x5678]),
        (0x12345678, "uint32", "big", "little", [0x5678, 0x1234]),
        (0x12345678, "uint32", "little", "big", [0x3412, 0x7856]),
        (0x12345678, "uint32", "little", "little", [0x7856, 0x3412]),
        (-2, "int16", "big", "big", [0xFFFE]),
        (1.0, "float32", "big", "big", [0x3F80, 0x0000]),
        ("AB", "string", "big", "big", [0x4142]),
        ("AB", "string", "little", "big", [0x4241]),
    ],
)
def test_encoding(value: Any, ptype: str, byte: str, word: str, regs: list[int]) -> None:
    assert encode_value(value, ptype, None, byte, word) == regs
    assert decode_value(regs, ptype, None, byte, word) == value


def live(point: dict[str, Any], seed: int = 1) -> LivePoint:
    import random

    return LivePoint(Point.model_validate(point), random.Random(seed))


def test_counter_behaviour() -> None:
    lp = live(
        {
            "name": "n",
            "table": "holding",
            "address": 0,
            "value": 65534,
            "behaviour": {"kind": "counter", "step": 1, "interval": 2},
        }
    )
    assert [lp.current(lp.t0 + t) for t in (0, 1.9, 2, 4.5)] == [65534, 65534, 65535, 0]
    toggle = live({"name": "b", "table": "coil", "address": 0, "behaviour": {"kind": "counter"}})
    assert [toggle.current(toggle.t0 + t) for t in (0, 1, 2)] == [False, True, False]


def test_sine_behaviour() -> None:
    lp = live(
        {
            "name": "v",
            "table": "input",
            "address": 0,
            "type": "float32",
            "behaviour": {"kind": "sine", "mean": 230, "amplitude": 10, "period": 4},
        }
    )
    assert math.isclose(lp.current(lp.t0 + 1), 240)
    assert math.isclose(lp.current(lp.t0 + 3), 220)


def test_random_walk_stays_in_bounds() -> None:
    lp = live(
        {
            "name": "w",
            "table": "input",
            "address": 0,
            "type": "int16",
            "value": 10,
            "behaviour": {"kind": "random_walk", "step": 5, "interval": 1, "min": 0, "max": 20},
        }
    )
    seen = {lp.current(lp.t0 + t) for t in range(1, 200)}
    assert len(seen) > 5
    assert min(seen) >= 0 and max(seen) <= 20
    assert all(isinstance(v, int) for v in seen)


async def client_for(sim: ModbusSimulator) -> AsyncModbusTcpClient:
    framer = FramerType.RTU if sim.framing == "rtu" else FramerType.SOCKET
    client = AsyncModbusTcpClient(
        sim.host, port=sim.port, framer=framer, timeout=1, retries=0, reconnect_delay=0
    )
    assert await client.connect()
    return client


PROFILE = {
    "units": [
        {
            "id": 1,
            "points": [
                {"name": "sp", "table": "holding", "address": 2, "behaviour": "setpoint"},
                {"name": "ro", "table": "holding", "address": 3, "value": 5},
                {"name": "c", "table": "coil", "address": 17, "behaviour": "setpoint"},
                {
                    "name": "n",
                    "table": "input",
                    "address": 0,
                    "type": "uint32",
                    "behaviour": {"kind": "counter", "interval": 0.001},
                },
            ],
        },
        {
            "id": 2,
            "strict": True,
            "points": [
                {"name": "a", "table": "coil", "address": 0},
                {"name": "b", "table": "coil", "address": 2},
            ],
        },
    ]
}


@pytest.mark.parametrize("framing", ["tcp", "rtu"])
async def test_serving_counting_and_faults(framing: Any) -> None:
    async with ModbusSimulator(PROFILE, framing=framing) as sim:
        client = await client_for(sim)
        try:
            resp = await client.read_holding_registers(0, count=4, device_id=1)
            assert resp.registers == [0, 0, 0, 5]
            assert not (await client.write_register(2, 77, device_id=1)).isError()
            assert sim.get(1, "sp") == 77
            refused = await client.write_register(3, 1, device_id=1)
            assert refused.exception_code == 2
            assert not (await client.write_coil(17, True, device_id=1)).isError()
            assert sim.get(1, "c") is True
            assert (await client.read_coils(16, count=2, device_id=1)).bits[:2] == [False, True]
            first = (await client.read_input_registers(0, count=2, device_id=1)).registers
            await asyncio.sleep(0.01)
            second = (await client.read_input_registers(0, count=2, device_id=1)).registers
            assert second != first  # the counter moves between reads
            assert (
                await client.read_holding_registers(0, count=1, device_id=9)
            ).exception_code == 11
            assert sim.request_count() == 8
            assert sim.request_count(unit=1, function=3) == 1
            assert sim.request_count(unit=9) == 1

            # Strict unit: coil 1 is not a point.
            assert (await client.read_coils(0, count=1, device_id=2)).bits[0] is False
            assert (await client.read_coils(0, count=3, device_id=2)).exception_code == 2

            fault = sim.add_fault(Fault(unit=1, table="holding", address=3, exception=4))
            assert (await client.read_holding_registers(0, count=3, device_id=1)).isError() is False
            assert (
                await client.read_holding_registers(0, count=4, device_id=1)
            ).exception_code == 4
            sim.remove_fault(fault)
            sim.add_fault(unit=1, table="coil", address=17, access="write", exception=3)
            assert not (await client.read_coils(17, count=1, device_id=1)).isError()
            assert (await client.write_coil(17, False, device_id=1)).exception_code == 3
            sim.clear_faults()

            sim.set(1, "ro", 1234)
            assert (await client.read_holding_registers(3, count=1, device_id=1)).registers == [
                1234
            ]
            assert await sim.read_table(1, "holding", 2, 2) == [77, 1234]
            assert await sim.read_table(1, "coil", 16, 2) == [False, True]
        finally:
            client.close()


async def test_drop_and_restart_keep_the_port_and_values() -> None:
    async with ModbusSimulator(PROFILE) as sim:
        port = sim.port
        client = await client_for(sim)
        await client.write_register(2, 42, device_id=1)
        assert sim.connections == 1
        assert sim.drop_connections() == 1
        for _ in range(100):
            if not client.connected:
                break
            await asyncio.sleep(0.01)
        assert not client.connected
        await sim.stop()
        assert not sim.running
        await sim.start()
        assert sim.port == port
        assert await client.connect()
        assert (await client.read_holding_registers(2, count=1, device_id=1)).registers == [42]
        client.close()


def test_sim_command_is_registered() -> None:
    argv = ["sim", "modbus", "--profile", "thermostat", "--port", "0", "--framing", "rtu"]
    # `mapperkit sim modbus` hands its arguments to the simulator's own parser.
    args, extra = build_parser().parse_known_args(argv)
    assert args.pass_through
    assert extra == argv[2:]
    real = argparse.ArgumentParser()
    register(real.add_subparsers())
    own = real.parse_args(argv[1:])
    assert own.func is run
    assert (own.profile, own.port, own.framing) == ("thermostat", 0, "rtu")


async def test_standalone_process() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "simulators.modbus",
        "--profile",
        "energy_meter",
        "--port",
        "0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert "listening on 127.0.0.1:" in line, line
        port = int(line.rsplit(":", 1)[1])
        client = AsyncModbusTcpClient(
            "127.0.0.1", port=port, timeout=2, retries=0, reconnect_delay=0
        )
        assert await client.connect()
        try:
            regs = (await client.read_holding_registers(0, count=8, device_id=1)).registers
        finally:
            client.close()
        assert decode_value(list(regs), "string", 8) == "EM-340"
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0


def test_bad_profile_on_the_command_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("units: [{id: 1, points: [{name: x, table: holding, address: -1}]}]\n")
    proc = subprocess.run(
        [sys.executable, "-m", "simulators.modbus", "--profile", str(bad), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 2
    assert "units.0.points.0.address" in proc.stderr
