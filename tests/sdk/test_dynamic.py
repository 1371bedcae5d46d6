"""Devices added, updated and removed while a mapper runs; on-demand reads and writes."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest

from mapper_sdk import topics
from mapper_sdk.errors import ConfigError, DeviceUnavailable, WriteRejected
from mapper_sdk.testing import Mosquitto

from ..mqttpeer import mqtt_peer
from .memdriver import MemBus
from .test_runtime import options, rig, running, updates


async def test_add_update_remove(mosquitto: Mosquitto) -> None:
    bus = MemBus()
    for name in ("dyn-a", "dyn-b"):
        bus.device(name).values.update({"t": 1.0, "sp": 10.0, "h": 0})
    async with mqtt_peer(mosquitto.port, "$hw/events/device/default/+/twin/update") as peer:
        async with running([rig("dyn-a")], bus, options(mosquitto)) as mapper:
            await peer.wait_for(lambda m: updates(m, "dyn-a"))
            with pytest.raises(ConfigError, match="already served"):
                await mapper.add_device(rig("dyn-a"))

            await mapper.add_device(rig("dyn-b"))
            await peer.wait_for(lambda m: updates(m, "dyn-b"))
            assert {d.id for d in mapper.devices} == {"default/dyn-a", "default/dyn-b"}

            # A desired-only change is applied by the running worker, without a reconnect.
            worker_b = mapper.workers["default/dyn-b"]
            spec = worker_b.spec
            changed = replace(
                spec,
                properties=tuple(
                    replace(p, desired="12.5") if p.name == "setpoint" else p
                    for p in spec.properties
                ),
            )
            await mapper.update_device(changed)
            while bus.device("dyn-b").writes != [("setpoint", 12.5)]:
                await asyncio.sleep(0.02)
            assert mapper.workers["default/dyn-b"] is worker_b
            assert bus.device("dyn-b").connects == 1

            # Any other change restarts that device alone.
            slower = rig("dyn-b", collect=200)
            await mapper.update_device(slower)
            assert mapper.workers["default/dyn-b"] is not worker_b
            while bus.device("dyn-b").connects < 2:
                await asyncio.sleep(0.02)
            assert bus.device("dyn-a").connects == 1

            await mapper.remove_device("default/dyn-b")
            assert set(mapper.workers) == {"default/dyn-a"}
            with pytest.raises(KeyError):
                await mapper.remove_device("default/dyn-b")


async def test_on_demand_read_and_write(mosquitto: Mosquitto) -> None:
    bus = MemBus()
    dev = bus.device("ondemand")
    dev.values.update({"t": 4.5, "sp": 10.0, "h": 3})
    async with running([rig("ondemand", collect=5000)], bus, options(mosquitto)) as mapper:
        worker = mapper.worker("ondemand")
        while not worker.connected:
            await asyncio.sleep(0.01)
        reading = await mapper.read("default/ondemand", "temp")
        assert reading.value == 4.5
        echoed = await mapper.write("ondemand", "setpoint", "17")
        assert echoed is not None and echoed.value == 17.0
        assert dev.values["sp"] == 17.0
        with pytest.raises(WriteRejected, match="ReadOnly"):
            await mapper.write("ondemand", "temp", "1")
        with pytest.raises(WriteRejected, match="above the maximum 30"):
            await mapper.write("ondemand", "setpoint", "31")
        with pytest.raises(KeyError):
            await mapper.read("ondemand", "nope")
        with pytest.raises(KeyError):
            await mapper.read("nobody", "temp")
        dev.online = False
        worker.driver.go_offline()  # type: ignore[attr-defined]
        while worker.connected:
            await asyncio.sleep(0.01)
        with pytest.raises(DeviceUnavailable):
            await mapper.read("ondemand", "temp")


async def test_report_strategy_on_change_reports_only_changes(mosquitto: Mosquitto) -> None:
    from mapper_sdk.model import load_text

    from .test_runtime import DRIVERS

    text = """
devices:
  - name: changes
    protocol: mem
    connection: {device: changes}
    collectCycle: 30
    reportStrategy: {mode: on-change, deadband: 0.5}
    properties:
      - {name: level, type: float, visitor: {address: l}}
"""
    spec = load_text(text, drivers=DRIVERS).devices[0]
    bus = MemBus()
    dev = bus.device("changes")
    dev.values["l"] = 1.0
    topic = topics.device_topic("default", "changes", topics.TWIN_UPDATE)
    sequence = [1.0, 1.2, 1.5, 1.51, 2.2, 2.2, 0.0]
    async with mqtt_peer(mosquitto.port, topic) as peer:
        async with running([spec], bus, options(mosquitto)) as mapper:
            worker = mapper.workers["default/changes"]
            for value in sequence:
                dev.values["l"] = value
                seen = worker.stats.cycles
                while worker.stats.cycles < seen + 2:
                    await asyncio.sleep(0.01)
            await peer.wait_for(
                lambda m: any(d.json["twin"]["level"]["actual"]["value"] == "0.0" for d in m)
            )
    values: list[Any] = [d.json["twin"]["level"]["actual"]["value"] for d in peer.messages]
    # 1.2 and 1.5 are within 0.5 of the last reported 1.0; 1.51 is beyond it.
    assert values == ["1.0", "1.51", "2.2", "0.0"]
