"""``kill -9`` of a mapper: a desired value set while it was dead is written after its restart.

``mapperkit run`` (as ``python -m mapper_sdk.cli run``) serves Modbus devices of
the simulator and reports to the twin service. It is killed with SIGKILL; while
it is dead an application sets new desired values, whose deltas nobody
receives. The restarted mapper asks the twin for every device's twin
(``twin/get``) and writes what is pending, so no write is lost.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from mapper_sdk import topics
from mapper_sdk.testing import Mosquitto
from simulators.modbus import ModbusSimulator
from twin.client import TwinClient

from .conftest import (
    Process,
    Recorder,
    holding,
    load_devices,
    modbus_device,
    native,
    python_command,
    settings_for,
    twin_service,
    wait_until,
)

UNITS = (1, 2, 3)
PROFILE: dict[str, Any] = {
    "name": "valves",
    "units": [
        {
            "id": unit,
            "points": [
                {"name": "position", "table": "holding", "address": 0, "behaviour": "setpoint"},
                {"name": "flow", "table": "holding", "address": 1, "value": 10 * unit},
            ],
        }
        for unit in UNITS
    ],
}


def devices(port: int) -> list[dict[str, Any]]:
    cycles: dict[str, Any] = {"collectCycle": 100, "reportCycle": 100}
    return [
        modbus_device(
            f"valve-{unit}",
            port,
            unit,
            [
                holding("position", 0, minimum=0, maximum=1000, **cycles),
                holding("flow", 1, accessMode="ReadOnly", **cycles),
            ],
        )
        for unit in UNITS
    ]


@contextlib.asynccontextmanager
async def mapper_process(broker: Mosquitto, files: Path, outbox: Path) -> AsyncIterator[Process]:
    args = ["run", "-c", str(files), "--broker", broker.url, "--outbox", str(outbox)]
    proc = await Process.start(python_command("mapper_sdk.cli", *args, "--http-port", "0"))
    try:
        await proc.wait_line("event=mapper-started")
        yield proc
    finally:
        await proc.aclose()


async def test_desired_value_set_while_the_mapper_was_dead_is_written_after_restart(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    settings = settings_for(mosquitto)
    outbox = tmp_path / "outbox.db"
    async with ModbusSimulator(PROFILE) as sim:
        specs = devices(sim.port)
        files = tmp_path / "valves.yaml"
        files.write_text(native(specs))
        names = [f"default/valve-{unit}" for unit in UNITS]
        async with (
            twin_service(settings, tmp_path / "twin.db", load_devices(specs)),
            TwinClient(settings) as app,
        ):
            async with mapper_process(mosquitto, files, outbox) as mapper:
                # Running: a desired value is written as usual.
                for name in names:
                    await app.set_desired(name, {"position": 100})
                await wait_until(
                    lambda: all(sim.get(u, "position") == 100 for u in UNITS),
                    "the first desired values to be written",
                )
                mapper.kill9()
                assert await mapper.finish() == -9

            # Dead: new desired values are accepted by the twin; their deltas reach nobody.
            wanted = {name: 200 + i for i, name in enumerate(names)}
            for name, value in wanted.items():
                result = await app.set_desired(name, {"position": value})
                assert result.changed
            assert all(sim.get(u, "position") == 100 for u in UNITS)

            gets = topics.device_filter(topics.TWIN_GET)
            async with Recorder(mosquitto.port, [gets], persistent=False) as recorder:
                async with mapper_process(mosquitto, files, outbox):
                    # On start it asks the twin for every device's twin ...
                    await wait_until(
                        lambda: {m.device for m in recorder.messages} == set(names),
                        "a twin/get per device",
                    )
                    # ... and writes what is pending.
                    await wait_until(
                        lambda: all(sim.get(u, "position") == wanted[names[u - 1]] for u in UNITS),
                        "the values set while the mapper was dead to be written",
                        15,
                    )

                    async def acked() -> bool:
                        for name, value in wanted.items():
                            twin = (await app.get(name)).twins["position"]
                            if twin.get("actual", {}).get("value") != str(value):
                                return False
                            if twin.get("ack", {}).get("status") != "applied":
                                return False
                        return True

                    await wait_until(acked, "the twin to show the writes acknowledged")
