"""A full or read-only disk under the twin's store and under the mapper's outbox.

The fault is real: each store lives on a small tmpfs of its own, filled to the
last block with a filler file, or remounted read-only. (The test is skipped,
saying why, where mounting is not permitted.)

* Twin store full: updates are refused with 500 and a reason that says why,
  nothing of a refused update is visible, reads go on; when space returns the
  same updates are accepted, and a restart from the file shows exactly what was
  acknowledged.
* Twin store read-only: the service does not start, and says why.
* Outbox full while the broker is away: the mapper keeps running, says once
  that its store fails, keeps the messages in memory within its bound and loses
  none; the store is used again when space returns. A full disk while the
  outbox drains (deletes fail too) neither stops the drain nor repeats it.
* Outbox read-only: the mapper does not start, and says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mapper_sdk import topics
from mapper_sdk.errors import ConfigError, TwinRejected
from mapper_sdk.mqtt import MqttSettings
from mapper_sdk.runtime import Mapper, MapperOptions, WorkerOptions
from mapper_sdk.testing import Mosquitto
from simulators.modbus import ModbusSimulator
from twin.client import TwinClient

from .conftest import (
    MODBUS_DRIVERS,
    OutboxSpy,
    Process,
    Recorder,
    counter_devices,
    counter_profile,
    fill_disk,
    first_occurrences,
    load_devices,
    native,
    python_command,
    remount,
    settings_for,
    start_broker,
    tmpfs,
    twin_service,
    wait_until,
)

TWIN_DEVICES = [
    {
        "name": f"tank-{i}",
        "protocol": "modbus",
        "properties": [
            {"name": "level", "type": "int", "minimum": 0, "maximum": 1_000_000},
            {"name": "label", "type": "string"},
        ],
    }
    for i in range(3)
]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "disk", 1024) as path:
        yield path


def update(n: int) -> dict[str, Any]:
    """Two desired values in one update: a half-written one would show."""
    return {"level": {"expected": {"value": str(n)}}, "label": {"expected": {"value": f"l{n}"}}}


def desired(state: Any) -> tuple[int, str]:
    return int(state.twins["level"]["expected"]["value"]), state.twins["label"]["expected"]["value"]


# ----------------------------------------------------------------------------- twin
async def test_twin_store_full_refuses_with_500_and_recovers(
    mosquitto: Mosquitto, small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_for(mosquitto)
    db = small_disk / "twin.db"
    specs = load_devices(TWIN_DEVICES, None)
    device = "default/tank-0"
    acked: dict[int, int] = {}  # n -> version
    async with twin_service(settings, db, specs), TwinClient(settings) as app:
        for n in range(1, 4):
            acked[n] = (await app.update(device, update(n))).version
        filler = fill_disk(small_disk)

        # Updates until the store's log cannot grow: the first refusal comes within a few.
        refused: list[tuple[int, str, TwinRejected]] = []
        n = 3
        while not refused and n < 200:
            n += 1
            eid = f"full-{uuid.uuid4().hex}"
            try:
                acked[n] = (await app.update(device, update(n), event_id=eid)).version
            except TwinRejected as exc:
                refused.append((n, eid, exc))
        assert refused, "the full disk was never noticed"
        n_refused, eid_refused, error = refused[0]
        assert error.code == 500
        assert "disk is full" in error.reason
        assert "nothing changed" in error.reason
        # Refused as a whole: the last acknowledged update is what the twin holds.
        last = max(acked)
        state = await app.get(device)
        assert state.version == acked[last]
        assert desired(state) == (last, f"l{last}")
        # Still full: refused again; reads and other devices' reads go on.
        with pytest.raises(TwinRejected) as again:
            await app.update("default/tank-1", update(7))
        assert again.value.code == 500
        assert (await app.get("default/tank-1")).version == 0
        assert any("store-write-failed" in r.getMessage() for r in caplog.records)

        # Space returns: the refused update, sent again with its event_id, is applied.
        filler.unlink()
        result = await app.update(device, update(n_refused), event_id=eid_refused)
        assert result.version == acked[last] + 1
        acked[n_refused] = result.version
        for m in range(n_refused + 1, n_refused + 4):
            acked[m] = (await app.update(device, update(m))).version
        final = await app.get(device)

    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    # A restart from the file shows exactly what was acknowledged, nothing else.
    async with twin_service(settings, db, specs), TwinClient(settings) as app:
        after = await app.get(device)
        assert after.version == final.version == max(acked.values())
        top = max(acked)
        assert desired(after) == (top, f"l{top}")
        assert (await app.get("default/tank-1")).version == 0


async def test_twin_store_on_a_read_only_disk_is_refused_at_start(
    mosquitto: Mosquitto, small_disk: Path, tmp_path: Path
) -> None:
    devices = tmp_path / "tanks.yaml"
    devices.write_text(native(TWIN_DEVICES))
    db = small_disk / "twin.db"
    args = ["serve", "--broker", mosquitto.url, "--db", str(db), "--devices", str(devices)]
    command = python_command("twin", *args)

    # A store made earlier, then the disk turns read-only.
    settings = settings_for(mosquitto)
    specs = load_devices(TWIN_DEVICES, None)
    async with twin_service(settings, db, specs), TwinClient(settings) as app:
        version = (await app.update("default/tank-0", update(5))).version
    remount(small_disk, "ro")
    try:
        proc = await Process.start(command)
        try:
            assert await proc.finish() == 1
        finally:
            await proc.aclose()
        assert "cannot read the twin store" in proc.output
        assert "read-only file system" in proc.output
    finally:
        remount(small_disk, "rw")

    proc = await Process.start(command)
    try:
        await proc.wait_line("event=ready")
        async with TwinClient(settings) as app:
            state = await app.get("default/tank-0")
            assert state.version == version
            assert desired(state) == (5, "l5")
    finally:
        await proc.aclose()


# ----------------------------------------------------------------------------- outbox
@contextlib.asynccontextmanager
async def counter_mapper(broker: Mosquitto, outbox: Path, sim: ModbusSimulator) -> Any:
    options = MapperOptions(
        mqtt=MqttSettings.from_url(broker.url),
        outbox_path=outbox,
        outbox_max=10_000,
        worker=WorkerOptions(backoff_initial=0.05, backoff_max=0.5),
    )
    mapper = Mapper(load_devices(counter_devices(sim.port, 1)), MODBUS_DRIVERS, options)
    async with mapper:
        yield mapper


async def test_outbox_on_a_full_disk_keeps_everything_in_order(
    small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mapper_sdk.runtime.outbox")
    path = small_disk / "outbox.db"
    broker = start_broker(persistence=True)
    filters = [topics.device_filter(topics.TWIN_UPDATE), topics.device_filter(topics.STATE_UPDATE)]
    try:
        async with (
            ModbusSimulator(counter_profile(1)) as sim,
            Recorder(broker.port, filters) as recorder,
        ):
            async with counter_mapper(broker, path, sim) as mapper:
                assert mapper.outbox is not None
                outbox = mapper.outbox
                spy = OutboxSpy(outbox)
                worker = mapper.workers["default/meter-1"]
                await wait_until(lambda: len(spy.puts) > 10, "reports")

                # 1. Broker away: the outbox stores; then the disk fills up under it.
                await asyncio.to_thread(broker.stop)
                await wait_until(lambda: outbox.spilled > 10, "reports kept in the store")
                filler = fill_disk(small_disk)
                await wait_until(lambda: outbox.store_error is not None, "the store to fail")
                assert "full" in (outbox.store_error or "")
                made = len(spy.puts)
                cycles = worker.stats.cycles
                await wait_until(lambda: len(spy.puts) > made + 20, "reports made on a full disk")
                assert worker.stats.cycles > cycles  # the mapper goes on
                assert outbox.dropped == 0
                assert outbox.depth == len(spy.puts) - outbox.sent

                # 2. The broker returns while the disk is still full: the drain cannot
                # delete what was delivered, and goes on without sending anything twice.
                await asyncio.to_thread(broker.start)
                await wait_until(lambda: outbox.depth == 0, "the outbox to drain", 20)
                assert outbox.store_error is not None
                await asyncio.sleep(0.3)
                # Each message was acknowledged once: the drain does not send rows again.
                assert outbox.sent <= len(spy.puts)

                # 3. Space returns: the store is cleaned up and used again.
                filler.unlink()
                await wait_until(lambda: outbox.store_error is None, "the store to work again")
                await asyncio.to_thread(broker.stop)
                spilled = outbox.spilled
                await wait_until(lambda: outbox.spilled > spilled + 10, "reports stored again")
                await asyncio.to_thread(broker.start)
                await wait_until(lambda: outbox.depth == 0, "the outbox to drain again", 20)
            made_ids = spy.event_ids()
            await wait_until(
                lambda: set(made_ids) <= {m.json["event_id"] for m in recorder.messages},
                "every message to arrive",
                20,
            )
            delivered = first_occurrences([m.json["event_id"] for m in recorder.messages])
            assert delivered == made_ids  # nothing lost, in order
            assert outbox.dropped == 0
            assert outbox.sent == len(made_ids)
        failures = [r for r in caplog.records if "event=store-failed" in r.getMessage()]
        assert len(failures) == 1  # said once, not per message
        assert any("event=store-recovered" in r.getMessage() for r in caplog.records)
        with contextlib.closing(sqlite3.connect(path)) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            assert conn.execute("SELECT COUNT(*) FROM outbox").fetchone() == (0,)
    finally:
        broker.close()


async def test_outbox_on_a_read_only_disk_is_refused_at_start(
    mosquitto: Mosquitto, small_disk: Path
) -> None:
    remount(small_disk, "ro")
    try:
        async with ModbusSimulator(counter_profile(1)) as sim:
            with pytest.raises(ConfigError, match="cannot open the outbox"):
                async with counter_mapper(mosquitto, small_disk / "outbox.db", sim):
                    pass
    finally:
        remount(small_disk, "rw")
