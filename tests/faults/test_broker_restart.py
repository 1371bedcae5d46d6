"""The broker stops and comes back while a mapper reports at full rate.

A real Mosquitto (with persistence, so sessions survive its restart) sits
between a mapper serving Modbus counters from the simulator, the twin service
and an application setting desired values. The broker is stopped with SIGTERM
and started again while everything runs. Afterwards every reading the mapper
accepted into its outbox has reached the twin, in the order it was read, and
every desired value the application set before the outage is on the device.
A second test gives the outbox a small bound and checks that it is never
exceeded and that exactly what it dropped is counted.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mapper_sdk import topics
from mapper_sdk.runtime import Mapper, MapperOptions, WorkerOptions
from simulators.modbus import ModbusSimulator
from twin.client import TwinClient

from .conftest import (
    MODBUS_DRIVERS,
    OutboxSpy,
    Recorder,
    counter_devices,
    counter_profile,
    first_occurrences,
    load_devices,
    settings_for,
    start_broker,
    twin_service,
    wait_until,
)

OUTAGE_S = 1.5


def changes(values: list[str]) -> int:
    """How many times a sequence of reported values changes, starting from none."""
    count, last = 0, None
    for v in values:
        if v != last:
            count += 1
            last = v
    return count


async def test_broker_restart_loses_no_reading_and_no_desired_value(tmp_path: Path) -> None:
    units = 4
    broker = start_broker(persistence=True)
    try:
        async with ModbusSimulator(counter_profile(units)) as sim:
            specs = load_devices(counter_devices(sim.port, units))
            ids = [s.id for s in specs]
            filters = [
                topics.device_filter(topics.TWIN_UPDATE),
                topics.device_filter(topics.STATE_UPDATE),
                topics.device_filter(topics.TWIN_UPDATE_DOCUMENT),
            ]
            twin_settings = settings_for(broker, client_id="faults-twin", clean_session=False)
            options = MapperOptions(
                mqtt=settings_for(broker),
                outbox_path=tmp_path / "outbox.db",
                worker=WorkerOptions(backoff_initial=0.05, backoff_max=0.5),
            )
            async with (
                Recorder(broker.port, filters) as recorder,
                twin_service(twin_settings, tmp_path / "twin.db", specs) as twin,
            ):
                mapper = Mapper(specs, MODBUS_DRIVERS, options)
                async with mapper:
                    assert mapper.outbox is not None
                    outbox = mapper.outbox
                    spy = OutboxSpy(outbox)  # before any worker ran: it sees every message
                    assert mapper.link is not None
                    link = mapper.link
                    await wait_until(
                        lambda: all(spy.counts(d) for d in ids),
                        "every device to report",
                    )
                    desired: dict[str, int] = {}
                    async with TwinClient(settings_for(broker)) as app:
                        # The application sets values while the mapper reports at full rate.
                        for round_ in range(3):
                            for i, dev in enumerate(ids):
                                value = 1000 * (round_ + 1) + i
                                await app.set_desired(dev, {"setpoint": value})
                                desired[dev] = value
                            await asyncio.sleep(0.1)
                        # The last values are accepted (result received) and the broker
                        # goes at once: their deltas may never reach the mapper.
                        last = {dev: 50000 + i for i, dev in enumerate(ids)}
                        await asyncio.gather(
                            *(app.set_desired(d, {"setpoint": v}) for d, v in last.items())
                        )
                        desired.update(last)
                        await asyncio.to_thread(broker.stop)
                    made_before = len(spy.puts)
                    await asyncio.sleep(OUTAGE_S)
                    kept = outbox.depth
                    made_during = len(spy.puts) - made_before
                    assert kept > 0
                    assert made_during > units * 20, "the mapper kept reading during the outage"
                    await asyncio.to_thread(broker.start)

                    # Back: the outbox drains and the pending desired values are written.
                    def applied() -> bool:
                        return all(
                            sim.get(u, "setpoint") == desired[ids[u - 1]]
                            for u in range(1, units + 1)
                        )

                    await wait_until(applied, "desired values set before the outage", 20)
                    await wait_until(
                        lambda: outbox.depth == 0 and link.connected,
                        "the outbox to drain",
                        20,
                    )
                    await asyncio.sleep(0.3)
                # The mapper is stopped; the twin catches up with everything it sent.
                for dev in ids:
                    last_count = spy.counts(dev)

                    def caught_up(d: str = dev, v: str = last_count[-1]) -> bool:
                        twin_count = twin.core.devices[d].twins["count"].actual
                        return twin_count is not None and twin_count.text == v

                    await wait_until(caught_up, f"the twin of {dev} to catch up", 20)

                made = spy.event_ids()
                await wait_until(
                    lambda: set(made) <= {m.json["event_id"] for m in recorder.messages},
                    "every message to reach the subscribers",
                    20,
                )
                async with TwinClient(settings_for(broker)) as app:
                    states = {dev: await app.get(dev) for dev in ids}

            # 1. Nothing the mapper accepted was dropped, and the outage was really spanned.
            assert outbox.dropped == 0
            assert outbox.spilled >= kept > 0
            assert spy.max_depth <= options.outbox_max

            # 2. Every message reached the broker's subscribers once at least, in the order
            # the mapper made it (checked per device and across devices: one outbox).
            # (The application's own updates are on the same topics: keep the mapper's.)
            ours = made[0].rsplit("-", 1)[0] + "-"
            delivered = first_occurrences(
                [
                    m.json["event_id"]
                    for m in recorder.messages
                    if m.suffix != topics.TWIN_UPDATE_DOCUMENT
                    and m.json["event_id"].startswith(ours)
                ]
            )
            assert delivered == made

            for dev in ids:
                values = spy.counts(dev)
                assert [int(v) for v in values] == sorted(int(v) for v in values)
                count = states[dev].twins["count"]
                # 3. The twin applied every reading: its actual_version counts each change.
                assert count["actual"]["value"] == values[-1]
                assert count["actual_version"]["edge"] == changes(values)
                # 4. ... in order: every document the twin published moved forward.
                for doc in recorder.on(topics.TWIN_UPDATE_DOCUMENT, dev):
                    moved = doc.json["twin"].get("count")
                    if moved and moved["last"] and moved["last"].get("actual"):
                        before = int(moved["last"]["actual"]["value"])
                        assert int(moved["current"]["actual"]["value"]) > before
                # 5. The last desired value set before the outage is on the device and acked.
                setpoint = states[dev].twins["setpoint"]
                assert setpoint["expected"]["value"] == str(desired[dev])
                assert setpoint["actual"]["value"] == str(desired[dev])
                assert setpoint["ack"]["status"] == "applied"
                assert setpoint["ack"]["expected_version"] == setpoint["expected_version"]["edge"]
    finally:
        broker.close()


@pytest.mark.parametrize("drop_oldest", [True, False], ids=["drop-oldest", "drop-newest"])
async def test_outbox_bound_holds_and_what_it_drops_is_counted(
    tmp_path: Path, drop_oldest: bool
) -> None:
    bound = 40
    broker = start_broker(persistence=True)
    try:
        async with ModbusSimulator(counter_profile(1)) as sim:
            specs = load_devices(counter_devices(sim.port, 1))
            filters = [
                topics.device_filter(topics.TWIN_UPDATE),
                topics.device_filter(topics.STATE_UPDATE),
            ]
            options = MapperOptions(
                mqtt=settings_for(broker),
                outbox_path=tmp_path / "outbox.db",
                outbox_max=bound,
                outbox_drop_oldest=drop_oldest,
                worker=WorkerOptions(backoff_initial=0.05, backoff_max=0.5),
            )
            async with Recorder(broker.port, filters) as recorder:
                mapper = Mapper(specs, MODBUS_DRIVERS, options)
                async with mapper:
                    assert mapper.outbox is not None
                    outbox = mapper.outbox
                    spy = OutboxSpy(outbox)
                    await wait_until(lambda: len(spy.puts) > 5, "reports")
                    await asyncio.to_thread(broker.stop)
                    await wait_until(lambda: outbox.dropped > 20, "the outbox to overflow")
                    # Nothing is sent while the broker is away: the first `acked` messages
                    # made are the ones the broker acknowledged before it went.
                    acked = outbox.sent
                    await asyncio.to_thread(broker.start)
                    await wait_until(lambda: outbox.depth == 0, "the outbox to drain", 20)
                # Stopped: the final offline state was flushed too.
                made = spy.event_ids()
                await wait_until(
                    lambda: (
                        len({m.json["event_id"] for m in recorder.messages})
                        >= len(made) - outbox.dropped
                    ),
                    "every kept message",
                    20,
                )
            delivered = first_occurrences([m.json["event_id"] for m in recorder.messages])
            assert spy.max_depth <= bound
            assert outbox.dropped > 20
            delivered_set = set(delivered)
            lost = [i for i in made if i not in delivered_set]
            # Exactly what was dropped is missing, nothing else, and the rest is in order.
            assert len(lost) == outbox.dropped
            assert delivered == [i for i in made if i not in set(lost)]
            # The first one lost: the oldest waiting, or the first beyond the bound.
            first_lost = made.index(lost[0])
            assert first_lost == (acked if drop_oldest else acked + bound)
    finally:
        broker.close()
