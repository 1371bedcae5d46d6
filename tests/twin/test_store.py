"""The store and start-up reconciliation, in process."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from mapper_sdk.model import DeviceSpec, load_text
from twin.document import Options
from twin.service import DedupIndex, Incoming, TwinCore
from twin.store import Store, StoreError

from .conftest import DEVICES

T1 = "default/thermostat-1"


def core_for(db: Path, specs: list[DeviceSpec[Any, Any]]) -> TwinCore:
    core = TwinCore(Store.open(db), Options(), "edge-0")
    core.load(specs)
    return core


def send(core: TwinCore, topic: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    batch = core.prepare([Incoming(topic, json.dumps(body).encode())])
    if batch.writes:
        core.store.write(batch.writes)
    return [json.loads(o.payload) for o in core.finish(batch)]


def update(core: TwinCore, device: str, twin: dict[str, Any], eid: str = "") -> dict[str, Any]:
    body: dict[str, Any] = {"twin": twin}
    if eid:
        body["event_id"] = eid
    return send(core, f"$hw/events/device/{device}/twin/update", body)[0]


@pytest.fixture
def specs() -> list[DeviceSpec[Any, Any]]:
    return load_text(DEVICES.read_text(), str(DEVICES)).devices


def test_a_damaged_row_stops_the_start(tmp_path: Path, specs: list[DeviceSpec[Any, Any]]) -> None:
    db = tmp_path / "t.db"
    core_for(db, specs).store.close()
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("UPDATE devices SET twins = '{\"mode\": [1, 2' WHERE id = ?", (T1,))
        conn.commit()
    with pytest.raises(StoreError, match=r"is corrupt: the stored twin of default/thermostat-1"):
        core_for(db, specs)


def test_schema_of_another_version_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    Store.open(db).close()
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema'")
        conn.commit()
    with pytest.raises(StoreError, match="has schema '99'"):
        Store.open(db)


def test_a_changed_model_keeps_what_still_fits(
    tmp_path: Path, specs: list[DeviceSpec[Any, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "t.db"
    core = core_for(db, specs)
    update(core, T1, {"mode": {"expected": {"value": "eco"}}, "count": {"actual": {"value": "7"}}})
    core.store.close()
    # mode becomes an INT, count a STRING, ratio disappears, a new property appears.
    text = (
        DEVICES.read_text()
        .replace("{name: mode, type: STRING", "{name: mode, type: INT")
        .replace(
            "{name: count, type: INT, accessMode: ReadWrite, minimum: 0, maximum: 100}",
            "{name: count, type: STRING, accessMode: ReadWrite}",
        )
        .replace("    - {name: ratio}\n", "    - {name: fresh}\n")
        .replace(
            "    - {name: ratio, type: DOUBLE, accessMode: ReadWrite}\n",
            "    - {name: ratio, type: DOUBLE, accessMode: ReadWrite}\n"
            "    - {name: fresh, type: BOOLEAN, accessMode: ReadWrite}\n",
        )
    )
    core = core_for(db, load_text(text, "changed.yaml").devices)
    got = send(core, f"$hw/events/device/{T1}/twin/get", {"event_id": "g"})[0]
    assert got["version"] == 1  # reconciliation is not a change of the document
    assert "expected" not in got["twin"]["mode"]  # "eco" is not an int
    assert got["twin"]["count"]["actual"]["value"] == "7"  # "7" is a fine string
    assert got["twin"]["count"]["metadata"] == {"type": "string"}
    assert "ratio" not in got["twin"] and "fresh" in got["twin"]
    assert "event=twin-adjusted" in caplog.text
    core.store.close()


def test_remembered_requests_expire(tmp_path: Path, specs: list[DeviceSpec[Any, Any]]) -> None:
    index = DedupIndex()
    index.load([(1, "d", "a", 100), (2, "d", "b", 200)])
    index.commit([(DedupIndex.key("d", "c"), 3)], 300)
    assert index.find("d", "a") == 1 and len(index) == 3
    assert index.expire(50) is None  # nothing old enough
    assert index.expire(250) == 3  # the loaded chunk (newest 200) goes; ids below 3 deleted
    assert index.find("d", "a") is None and index.find("d", "c") == 3
    # In the service: an expired entry no longer de-duplicates, also after a restart.
    db = tmp_path / "t.db"
    core = core_for(db, specs)
    first = update(core, T1, {"count": {"expected": {"value": "1"}}}, eid="x-1")
    assert update(core, T1, {"count": {"expected": {"value": "2"}}}, eid="x-1") == first
    batch = core.prepare([])
    batch.writes.prune_below = core.dedup.expire(first["timestamp"] + 1)
    core.store.write(batch.writes)
    core.finish(batch)
    core.store.close()
    core = core_for(db, specs)
    again = update(core, T1, {"count": {"expected": {"value": "2"}}}, eid="x-1")
    assert again["version"] == 2
    core.store.close()


def test_last_seen_of_no_op_reports_is_flushed(
    tmp_path: Path, specs: list[DeviceSpec[Any, Any]]
) -> None:
    db = tmp_path / "t.db"
    core = core_for(db, specs)
    update(core, T1, {"temperature": {"actual": {"value": "20"}}})
    seen = core.devices[T1].seen["temperature"]
    core.devices[T1].seen["temperature"] = seen - 5000  # make the refresh visible
    core.store.write(core.flush_seen())
    update(core, T1, {"temperature": {"actual": {"value": "20.0"}}})  # a no-op
    refreshed = core.devices[T1].seen["temperature"]
    core.store.write(core.flush_seen())  # what the service does at shutdown
    core.store.close()
    core = core_for(db, specs)
    assert core.devices[T1].seen["temperature"] == refreshed
    core.store.close()
