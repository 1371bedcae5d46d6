"""``kill -9`` of the twin service while 100 devices are being updated.

``python -m twin serve`` runs as a child process. One loop per device sends
updates back to back (each sets two desired values and one reported value, so
a half-applied update would show), and the service is killed with SIGKILL while
they are in flight. After a restart on the same store:

* every update whose ``result`` a client received is there with its version:
  sent again with its ``event_id``, it is answered with the original result and
  changes nothing;
* each device holds either its last acknowledged update or the one that was in
  flight, whole (never a mix of two updates);
* the restart publishes no document and no delta.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mapper_sdk import topics
from mapper_sdk.errors import TwinRejected
from mapper_sdk.mqtt import LinkDown
from mapper_sdk.testing import Mosquitto
from twin.client import TwinClient, TwinUnavailable

from .conftest import Process, Recorder, native, python_command, settings_for

DEVICES = 100
CLIENTS = 4
LOAD_S = 1.0


def device_file(path: Path) -> Path:
    props = [
        {"name": "setpoint", "type": "int", "minimum": 0, "maximum": 10_000_000},
        {"name": "mode", "type": "string"},
        {"name": "level", "type": "int", "accessMode": "ReadOnly"},
    ]
    devices = [
        {"name": f"unit-{i:03d}", "protocol": "modbus", "properties": props} for i in range(DEVICES)
    ]
    path.write_text(native(devices))
    return path


@contextlib.asynccontextmanager
async def serving(
    broker: Mosquitto, db: Path, devices: Path, *, clean: bool = True
) -> AsyncIterator[Process]:
    # A clean session here: what the restart itself publishes is checked, without the
    # requests a persistent session would deliver from before the kill (tested apart).
    args = ["serve", "--broker", broker.url, "--db", str(db), "--devices", str(devices)]
    if clean:
        args.append("--clean-session")
    proc = await Process.start(python_command("twin", *args, "--node", "edge-0"))
    try:
        await proc.wait_line("event=ready")
        yield proc
    finally:
        await proc.aclose()


def body(n: int) -> dict[str, Any]:
    """Update number ``n`` of a device: two desired values and a reported one."""
    return {
        "setpoint": {"expected": {"value": str(n)}},
        "mode": {"expected": {"value": f"m{n}"}},
        "level": {"actual": {"value": str(n)}},
    }


@dataclass
class DeviceLoad:
    device: str
    acked: list[tuple[int, str, int]] = field(default_factory=list)
    """``(n, event_id, version)`` of each update whose result came back."""
    unanswered: list[int] = field(default_factory=list)


async def drive(client: TwinClient, load: DeviceLoad) -> None:
    """Send updates one after another until one goes unanswered."""
    n = 0
    while True:
        n += 1
        eid = f"{load.device}-{n}-{uuid.uuid4().hex[:6]}"
        try:
            result = await client.update(load.device, body(n), event_id=eid)
        except (TwinUnavailable, LinkDown, TwinRejected):
            load.unanswered.append(n)
            return
        load.acked.append((n, eid, result.version))


async def test_kill_9_under_load_keeps_every_acknowledged_update(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    devices = device_file(tmp_path / "devices.yaml")
    db = tmp_path / "twin.db"
    settings = settings_for(mosquitto)
    names = [f"default/unit-{i:03d}" for i in range(DEVICES)]
    loads = [DeviceLoad(name) for name in names]

    async with serving(mosquitto, db, devices) as twin:
        async with contextlib.AsyncExitStack() as stack:
            clients = [
                await stack.enter_async_context(TwinClient(settings, timeout=2.0))
                for _ in range(CLIENTS)
            ]
            tasks = [
                asyncio.create_task(drive(clients[i % CLIENTS], load), name=f"load-{i}")
                for i, load in enumerate(loads)
            ]
            await asyncio.sleep(LOAD_S)
            acked_before_kill = sum(len(load.acked) for load in loads)
            twin.kill9()  # while updates are in flight
            assert await twin.finish() == -9
            await asyncio.gather(*tasks)
    assert acked_before_kill > DEVICES, "the load ran"
    assert all(load.unanswered for load in loads), "every device had an update in flight"

    # The store survived the kill intact.
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)

    doc_filters = [
        topics.device_filter(topics.TWIN_UPDATE_DOCUMENT),
        topics.device_filter(topics.TWIN_UPDATE_DELTA),
    ]
    async with Recorder(mosquitto.port, doc_filters, persistent=False) as recorder:
        async with serving(mosquitto, db, devices):
            async with TwinClient(settings, timeout=5.0) as client:
                states = {name: await client.get(name) for name in names}
                # The restart published no document and no delta.
                assert recorder.messages == []

                for load in loads:
                    state = states[load.device]
                    n_last, _, v_last = load.acked[-1] if load.acked else (0, "", 0)
                    setpoint = int(state.twins["setpoint"]["expected"]["value"])
                    mode = state.twins["mode"]["expected"]["value"]
                    level = int(state.twins["level"]["actual"]["value"])
                    # Whole updates only: all three values come from the same update.
                    assert (mode, level) == (f"m{setpoint}", setpoint), load.device
                    if state.version == v_last:
                        assert setpoint == n_last, load.device
                    else:
                        # The update in flight was committed, its result not received.
                        assert state.version == v_last + 1, load.device
                        assert setpoint == load.unanswered[0] == n_last + 1, load.device

                # Every acknowledged update is remembered with its version: sent again,
                # each gets its original result and changes nothing.
                async def replay(load: DeviceLoad) -> None:
                    for n, eid, version in load.acked:
                        again = await client.update(load.device, body(n), event_id=eid)
                        assert again.version == version, (load.device, n)

                await asyncio.gather(*(replay(load) for load in loads))
                for name in names:
                    assert (await client.get(name)).version == states[name].version
            await asyncio.sleep(0.2)
            assert recorder.messages == [], "replayed updates published nothing"


async def test_requests_sent_while_the_twin_is_dead_are_applied_after_restart(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """With its default persistent session the twin gets what was published while it was
    down (the broker queues it), so a desired value set then is not lost."""
    db = tmp_path / "twin.db"
    devices = device_file(tmp_path / "units.yaml")
    settings = settings_for(mosquitto)
    async with serving(mosquitto, db, devices, clean=False) as twin:
        twin.kill9()
        assert await twin.finish() == -9
    async with TwinClient(settings, timeout=2.0) as client:
        # Published at QoS 1 while no twin runs: the client gets no answer now.
        with contextlib.suppress(TwinUnavailable):
            await client.set_desired("default/unit-007", {"setpoint": 77})
    async with serving(mosquitto, db, devices, clean=False):
        async with TwinClient(settings, timeout=5.0) as client:
            for _ in range(100):
                state = await client.get("default/unit-007")
                if state.desired("setpoint") == 77:
                    break
                await asyncio.sleep(0.05)
            assert state.desired("setpoint") == 77
