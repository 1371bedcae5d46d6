"""The BLE simulator itself: profiles, behaviours, faults, bleak's public API, the CLI."""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
import time
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from bleak import BleakClient, BleakScanner
from bleak.exc import BleakDeviceNotFoundError, BleakGATTProtocolError

from mapper_sdk.cli import main as mapperkit
from mapper_sdk.errors import ConfigError
from mapper_sdk.testing import Mosquitto
from simulators.ble import (
    SimPeripheral,
    VirtualRadio,
    builtin_profiles,
    current_radio,
    load_profile,
    parse_profile,
)
from simulators.ble.bleak_backend import BumbleBleakScanner

from .conftest import COUNTER_UUID, EXAMPLES, PeripheralFactory, peripheral_spec, scan_args

BATTERY = "00002a19-0000-1000-8000-00805f9b34fb"
ENV_SERVICE = "0000181a-0000-1000-8000-00805f9b34fb"


# ---------------------------------------------------------------------------- profiles
def test_builtin_profiles_load() -> None:
    assert {"environmental-sensor", "actuator", "demo"} <= set(builtin_profiles())
    demo = load_profile("demo")
    assert [p.name for p in demo.peripherals] == ["env-sensor-1", "led-actuator-1"]
    temp = demo.peripherals[0].characteristic("2A6E")
    assert temp.format == "int16" and temp.scale == 0.01 and temp.has("notify")


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("peripherals: []", "at least 1 item"),
        (
            "peripherals: [{name: a, address: '01:00:00:00:00:01', services: []}]",
            "not a random static address",
        ),
        (
            "peripherals: [{name: a, address: 'C0:00:00:00:00:01', services: "
            "[{uuid: '180F', characteristics: [{uuid: '2A19', properties: [fly]}]}]}]",
            "'fly' is not a GATT property",
        ),
        (
            "peripherals: [{name: a, address: 'C0:00:00:00:00:01', services: "
            "[{uuid: '180F', characteristics: [{uuid: '2A19', format: string, "
            "behaviour: {kind: counter}}]}]}]",
            "a behaviour moves numbers",
        ),
        (
            "peripherals: [{name: a, address: 'C0:00:00:00:00:01', services: [], "
            "faults: {readErrors: {'2A19': NOPE}}}]",
            "'NOPE' is not an ATT error",
        ),
        (
            "peripherals: [{name: a, address: 'C0:00:00:00:00:01', services: []},"
            " {name: a, address: 'C0:00:00:00:00:02', services: []}]",
            "peripheral name used twice: a",
        ),
        ("peripherals: [", "invalid YAML"),
    ],
)
def test_profile_errors_name_the_field(yaml_text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse_profile(yaml_text, "sim.yaml")
    assert "sim.yaml" in str(info.value)


def test_a_missing_profile_lists_the_builtin_ones() -> None:
    with pytest.raises(ConfigError, match="built-in profiles: actuator, demo"):
        load_profile("/nonexistent/profile.yaml")


# ---------------------------------------------------------------------------- behaviours
async def test_behaviours_move_values(add_peripheral: PeripheralFactory) -> None:
    spec = peripheral_spec("environmental-sensor")
    data = spec.model_dump()
    for service in data["services"]:
        for char in service["characteristics"]:
            char["interval"] = 5
            if char["uuid"] == COUNTER_UUID:
                char["behaviour"] = {
                    "kind": "counter",
                    "start": 8,
                    "step": 1,
                    "minimum": 5,
                    "maximum": 10,
                }
    sensor = await add_peripheral(type(spec).model_validate(data))
    seen_counter: set[float] = set()
    seen_humidity: list[float] = []
    seen_temp: list[float] = []
    for _ in range(40):
        await asyncio.sleep(0.01)
        seen_counter.add(float(sensor.value(COUNTER_UUID)))
        seen_humidity.append(float(sensor.value("2A6F")))
        seen_temp.append(float(sensor.value("2A6E")))
    assert seen_counter <= {5.0, 6.0, 7.0, 8.0, 9.0, 10.0}
    assert {5.0, 10.0} <= seen_counter, "the counter wraps from its maximum to its minimum"
    assert all(20 <= h <= 80 for h in seen_humidity) and len(set(seen_humidity)) > 1
    assert all(abs(t - 21.5) <= 2.5 + 1e-9 for t in seen_temp)
    assert not math.isclose(min(seen_temp), max(seen_temp))


# ---------------------------------------------------------------------------- bleak's API
async def test_bleak_scanner_reports_name_services_and_filters(
    radio: VirtualRadio, env: SimPeripheral
) -> None:
    found = await BleakScanner.find_device_by_name(
        env.name, timeout=2, backend=BumbleBleakScanner, **scan_args(radio)
    )
    assert found is not None and found.address == env.address
    async with BleakScanner(
        service_uuids=[ENV_SERVICE], backend=BumbleBleakScanner, **scan_args(radio)
    ) as scanner:
        await asyncio.sleep(0.1)
        seen = scanner.discovered_devices_and_advertisement_data
    assert env.address in seen
    adv = seen[env.address][1]
    assert adv.local_name == env.name
    assert ENV_SERVICE in adv.service_uuids
    assert all(ENV_SERVICE in a.service_uuids for _, a in seen.values())


async def test_bleak_client_end_to_end_with_a_bare_address(
    radio: VirtualRadio, env: SimPeripheral
) -> None:
    backend = radio.backend()
    disconnected = asyncio.Event()
    client = BleakClient(
        env.address,
        disconnected_callback=lambda _c: disconnected.set(),
        timeout=2,
        backend=backend.client_backend,
        radio=radio,
    )
    async with client:
        assert client.is_connected
        assert client.mtu_size == 247
        assert await client.read_gatt_char(BATTERY) == bytearray([97])
        char = client.services.get_characteristic(BATTERY)
        assert char is not None and char.properties == ["read"]
        with pytest.raises(BleakGATTProtocolError) as info:
            await client.write_gatt_char(BATTERY, b"\x01", response=True)
        assert info.value.code.name == "WRITE_NOT_PERMITTED"
        got: list[bytearray] = []
        await client.start_notify(COUNTER_UUID, lambda _c, data: got.append(data))
        await env.notify(COUNTER_UUID, 77)
        await asyncio.sleep(0.02)
        assert got[-1] == bytearray((77).to_bytes(4, "little"))
        await client.stop_notify(COUNTER_UUID)
        await env.notify(COUNTER_UUID, 78)
        await asyncio.sleep(0.02)
        assert got[-1] != bytearray((78).to_bytes(4, "little"))
        await client.pair()
    assert not disconnected.is_set(), "a disconnect we asked for is not reported"
    await asyncio.wait_for(env.wait_connected(False), 5)


async def test_bleak_client_reports_an_unsolicited_disconnect(
    radio: VirtualRadio, env: SimPeripheral
) -> None:
    backend = radio.backend()
    disconnected = asyncio.Event()
    found = await BleakScanner.find_device_by_address(
        env.address, timeout=2, backend=BumbleBleakScanner, **scan_args(radio)
    )
    assert found is not None
    client = BleakClient(
        found,
        disconnected_callback=lambda _c: disconnected.set(),
        backend=backend.client_backend,
        radio=radio,
    )
    await client.connect()
    await env.disconnect()
    await asyncio.wait_for(disconnected.wait(), 5)
    assert not client.is_connected
    await client.disconnect()  # harmless on a dead link


async def test_bleak_client_gives_up_on_an_unknown_address(radio: VirtualRadio) -> None:
    client = BleakClient(
        "C1:EE:EE:EE:EE:EE", timeout=0.2, backend=radio.backend().client_backend, radio=radio
    )
    with pytest.raises(BleakDeviceNotFoundError):
        await client.connect()


async def test_a_timed_out_connection_does_not_block_the_next(
    radio: VirtualRadio, env: SimPeripheral
) -> None:
    backend = radio.backend()
    found = await BleakScanner.find_device_by_address(
        env.address, timeout=2, backend=BumbleBleakScanner, **scan_args(radio)
    )
    assert found is not None
    await env.stop_advertising()
    client = BleakClient(found, timeout=0.2, backend=backend.client_backend, radio=radio)
    with pytest.raises(TimeoutError):
        await client.connect()
    await env.start_advertising()
    await client.connect()  # the controller's pending connection was cleared
    assert client.is_connected
    await client.disconnect()


# ---------------------------------------------------------------------------- radio
async def test_one_radio_per_event_loop(radio: VirtualRadio, env: SimPeripheral) -> None:
    assert current_radio() is radio
    with pytest.raises(RuntimeError, match="one per loop"):
        await VirtualRadio().start()
    clash = peripheral_spec("actuator")
    with pytest.raises(ValueError, match="already on this radio"):
        await radio.add_peripheral(clash.model_copy(update={"name": env.name}))
    with pytest.raises(ValueError, match="is taken by"):
        await radio.add_peripheral(clash.model_copy(update={"address": env.address}))


def test_cli_runs_the_demo_profile(capsys: pytest.CaptureFixture[str]) -> None:
    # A fresh event loop (asyncio.run) gets its own radio.
    assert mapperkit(["sim", "ble", "--profile", "demo", "--duration", "0.3"]) == 0


def test_cli_reports_a_bad_profile(capsys: pytest.CaptureFixture[str]) -> None:
    assert mapperkit(["sim", "ble", "--profile", "/nonexistent.yaml", "--duration", "0"]) == 2
    assert "cannot read the profile" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_serves_the_example_devices_with_a_mapper_in_the_same_process(
    mosquitto: Mosquitto,
) -> None:
    """`mapperkit sim ble -c ...`: the runtime reports the simulated devices to the twin topics."""
    received: dict[str, list[dict[str, Any]]] = {}

    def on_message(_client: Any, _userdata: Any, message: Any) -> None:
        received.setdefault(message.topic, []).append(json.loads(message.payload))

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.on_message = on_message
    client.connect("127.0.0.1", mosquitto.port)
    client.subscribe("$hw/events/device/#")
    client.loop_start()
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "mapper_sdk.cli",
                "sim",
                "ble",
                "--profile",
                "demo",
                "-c",
                str(EXAMPLES / "env-sensor.yaml"),
                str(EXAMPLES / "led-actuator.yaml"),
                "--broker",
                mosquitto.url,
                "--duration",
                "2.5",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        time.sleep(0.2)
    finally:
        client.loop_stop()
        client.disconnect()
    assert done.returncode == 0, done.stderr
    prefix = "$hw/events/device/default/"
    env_states = [m["state"] for m in received[prefix + "env-sensor-1/state/update"]]
    assert env_states[0] == "online" and env_states[-1] == "offline"
    reported: dict[str, Any] = {}
    for topic in (prefix + "env-sensor-1/twin/update", prefix + "led-actuator-1/twin/update"):
        for message in received[topic]:
            for name, entry in message["twin"].items():
                reported[name] = entry["actual"]["value"]
    assert reported["battery"] == "97"
    assert -40 < float(reported["temperature"]) < 85
    assert reported["firmware"] == "1.4.2"
    assert reported["power"] == "OFF"
