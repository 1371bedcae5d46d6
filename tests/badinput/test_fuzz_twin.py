"""Bad requests of every class on every twin topic, through a real broker.

The twin service runs in this process against Mosquitto; a probe publishes each
bad request and then a ``twin/get`` of the fuzzed device, and checks that

* the request got exactly one answer, on its result topic, with the precise
  code and reason (``payloads.Bad``), and caused nothing else (no document, no
  delta);
* the device's twin (the sentinel get) is what it was before, and so is its
  row in the store and the requests remembered for it;
* another device, reporting all along (:class:`~.conftest.Witness`), keeps
  getting every report answered.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mapper_sdk.model import DeviceSpec
from mapper_sdk.mqtt import MqttSettings
from twin.service import TwinService

from .conftest import PREFIX, Probe, Witness, exchange, probe_on, serve, stored_row
from .payloads import DEVICE, GHOST_NS, KINDS, MAX_PAYLOAD, NODE, bad_requests

WITNESS = "default/thermostat-2"
SETTINGS = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)


@dataclass
class Rig:
    service: TwinService
    probe: Probe
    witness: Witness
    db: Path
    baseline: dict[str, Any]
    stored: tuple[Any, ...] = ()
    witnessed: int = 0

    def snapshot(self) -> tuple[Any, ...]:
        con = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)
        try:
            (remembered,) = con.execute(
                "SELECT count(*) FROM dedup WHERE device = ?", (DEVICE,)
            ).fetchone()
        finally:
            con.close()
        return stored_row(self.db, DEVICE), remembered


def twin_state(get_result: dict[str, Any]) -> tuple[Any, ...]:
    """What a get shows of the device's state (not the get's own event_id and time)."""
    return get_result["version"], get_result["state"], get_result["twin"]


@pytest.fixture(scope="module")
async def rig(
    settings: MqttSettings,
    specs: list[DeviceSpec[Any, Any]],
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Rig]:
    db = tmp_path_factory.mktemp("fuzz") / "twin.db"
    filters = [
        f"{PREFIX}{DEVICE}/#",
        f"{PREFIX}{GHOST_NS}/#",
        f"$hw/events/node/{NODE}/#",
        "mapperkit/v1/twin/#",
    ]
    async with (
        serve(settings, db, specs, max_payload=MAX_PAYLOAD, rate_limit=0) as service,
        probe_on(settings, filters) as probe,
        Witness(settings, WITNESS) as witness,
    ):
        _, baseline = await exchange(probe, f"{PREFIX}{DEVICE}/twin/get", b"{}", DEVICE)
        rig = Rig(service, probe, witness, db, baseline)
        rig.stored = rig.snapshot()
        rig.witnessed = witness.answered
        yield rig


@pytest.mark.parametrize("kind", KINDS)
@SETTINGS
@given(data=st.data())
async def test_bad_requests_through_the_broker(rig: Rig, kind: str, data: st.DataObject) -> None:
    bad = data.draw(bad_requests(kind), label="bad")
    caused, after = await exchange(rig.probe, bad.topic, bad.payload, DEVICE)
    assert [m.topic for m in caused] == [bad.result], bad
    bad.check(caused[0].topic, caused[0].raw)
    assert twin_state(after) == twin_state(rig.baseline)
    assert rig.snapshot() == rig.stored
    assert rig.witness.failures == []


async def test_the_other_device_was_served_all_along(rig: Rig) -> None:
    """Runs after the fuzz of this module: the witness's reports were all answered."""
    await rig.witness.answered_after(rig.witnessed)
    assert rig.witness.failures == []
    assert rig.service.core.devices[WITNESS].version >= rig.witness.answered
    assert rig.snapshot() == rig.stored
