"""The processing rules of the twin protocol, black-box over a real broker."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import pytest

from mapper_sdk.model import DeviceSpec
from mapper_sdk.mqtt import MqttSettings
from twin.service import TwinService

from .conftest import PREFIX, Msg, Probe, probe_for, running

T1 = "default/thermostat-1"
T2 = "default/thermostat-2"
B7 = "plant/boiler-7"


def kinds(msgs: list[Msg]) -> list[str]:
    return [m.kind for m in msgs]


def only(msgs: list[Msg], kind: str) -> dict[str, Any]:
    found = [m for m in msgs if m.kind == kind]
    assert len(found) == 1, kinds(msgs)
    body: dict[str, Any] = found[0].body
    return body


def expected(value: str) -> dict[str, Any]:
    return {"expected": {"value": value}}


def actual(value: str, **meta: Any) -> dict[str, Any]:
    side: dict[str, Any] = {"value": value}
    if meta:
        side["metadata"] = meta
    return {"actual": side}


# --------------------------------------------------------------------------- start and get
async def test_start_publishes_nothing_and_get_shows_declared_twins(
    twin: TwinService, probe: Probe
) -> None:
    msgs = await probe.exchange(T1, {"event_id": "g1"}, suffix="twin/get")
    # Nothing from start-up, and a get causes only its answer.
    assert [(m.kind, m.body["event_id"]) for m in msgs] == [("twin/get/result", "g1")]
    got = await probe.get(T1)
    assert got["version"] == 0 and got["state"] == "unknown"
    assert set(got["twin"]) == {
        "temperature",
        "setpoint",
        "heating",
        "mode",
        "count",
        "blob",
        "ratio",
    }
    setpoint = got["twin"]["setpoint"]
    assert setpoint["expected"]["value"] == "21.5"  # seeded from spec.properties[].desired
    assert setpoint["expected_version"] == {"cloud": 0, "edge": 1}
    assert setpoint["actual_version"] == {"cloud": 0, "edge": 0}
    assert setpoint["optional"] is False
    assert setpoint["metadata"] == {"type": "float"}
    temp = got["twin"]["temperature"]
    assert "expected" not in temp and "actual" not in temp
    assert got["twin"]["ratio"]["metadata"] == {"type": "double"}


# --------------------------------------------------------------------------- accepted updates
async def test_desired_change_publishes_result_document_delta_in_order(
    twin: TwinService, probe: Probe
) -> None:
    msgs = await probe.update(T1, {"setpoint": expected("23.5")})
    assert kinds(msgs) == ["twin/update/result", "twin/update/document", "twin/update/delta"]
    result, document, delta = (m.body for m in msgs)
    assert result["version"] == 1 and result["event_id"].startswith("e-")
    assert result["twin"]["setpoint"]["expected"]["value"] == "23.5"
    assert "expected_version" not in result["twin"]["setpoint"]  # results carry no versions
    doc = document["twin"]["setpoint"]
    assert doc["last"]["expected"]["value"] == "21.5"
    assert doc["current"]["expected"]["value"] == "23.5"
    assert doc["current"]["expected_version"] == {"cloud": 0, "edge": 2}
    assert document["version"] == 1 and document["event_id"] != result["event_id"]
    assert delta["delta"] == {"setpoint": "23.5"}
    assert delta["version"] == 1
    assert delta["twin"]["setpoint"]["expected_version"]["edge"] == 2
    assert set(delta["twin"]) == {"setpoint"}  # every twin with an expected value


async def test_report_matching_desired_clears_the_delta(twin: TwinService, probe: Probe) -> None:
    msgs = await probe.update(T1, {"setpoint": actual("21.5", timestamp=1700000000000)})
    assert kinds(msgs) == ["twin/update/result", "twin/update/document"]  # no delta left
    current = only(msgs, "twin/update/document")["twin"]["setpoint"]["current"]
    assert current["actual"]["metadata"]["source_timestamp"] == 1700000000000
    assert current["actual_version"] == {"cloud": 0, "edge": 1}
    # A report of another property while a desired value is pending repeats the delta.
    await probe.update(T1, {"setpoint": expected("25")})
    msgs = await probe.update(T1, {"temperature": actual("19.5")})
    assert kinds(msgs) == ["twin/update/result", "twin/update/document", "twin/update/delta"]
    assert only(msgs, "twin/update/delta")["delta"] == {"setpoint": "25"}


async def test_first_value_has_no_last_state(twin: TwinService, probe: Probe) -> None:
    msgs = await probe.update(T1, {"temperature": actual("20.9")})
    doc = only(msgs, "twin/update/document")["twin"]["temperature"]
    assert doc["last"] is None
    assert doc["current"]["actual"]["value"] == "20.9"


async def test_no_op_report_gets_only_its_result(twin: TwinService, probe: Probe) -> None:
    await probe.update(T1, {"temperature": actual("20.5"), "heating": actual("true")})
    before = await probe.get(T1)
    seen_before = before["twin"]["temperature"]["last_seen"]
    await asyncio.sleep(0.01)
    msgs = await probe.update(
        T1, {"temperature": actual("20.50", timestamp=5), "heating": actual("true")}
    )
    assert kinds(msgs) == ["twin/update/result"]
    result = msgs[0].body
    assert result["twin"] == {} and result["version"] == before["version"]
    after = await probe.get(T1)
    assert after["version"] == before["version"]
    temp = after["twin"]["temperature"]
    assert temp["actual"] == before["twin"]["temperature"]["actual"]  # value and stamps kept
    assert temp["last_seen"] > seen_before  # ... but last_seen refreshed


async def test_values_compare_typed(twin: TwinService, probe: Probe) -> None:
    await probe.update(
        T1,
        {
            "setpoint": expected("23"),
            "count": expected("7"),
            "heating": expected("true"),
            "blob": expected("AAE="),
        },
    )
    msgs = await probe.update(
        T1,
        {
            "setpoint": expected("23.0"),
            "count": expected("+7"),
            "heating": expected("true"),
            "blob": expected("AAE="),
        },
    )
    assert kinds(msgs) == ["twin/update/result"]  # a no-op: 23 == 23.0, 7 == +7
    got = await probe.get(T1)
    assert got["twin"]["setpoint"]["expected"]["value"] == "23"  # the stored text is kept


async def test_reported_value_outside_the_range_is_accepted(
    twin: TwinService, probe: Probe
) -> None:
    msgs = await probe.update(T1, {"temperature": actual("120.5"), "count": actual("-5")})
    assert only(msgs, "twin/update/result")["version"] == 1


async def test_clearing_a_desired_value_removes_the_delta(twin: TwinService, probe: Probe) -> None:
    msgs = await probe.update(T1, {"setpoint": {"expected": None}})
    assert kinds(msgs) == ["twin/update/result", "twin/update/document"]
    current = only(msgs, "twin/update/document")["twin"]["setpoint"]["current"]
    assert "expected" not in current and current["expected_version"]["edge"] == 2
    assert only(msgs, "twin/update/result")["twin"]["setpoint"].get("expected") is None


async def test_ack_is_stored_and_a_change(twin: TwinService, probe: Probe) -> None:
    ack = {"expected_version": 1, "status": "applied"}
    msgs = await probe.update(T1, {"setpoint": {**actual("21.5"), "ack": ack}})
    assert "twin/update/document" in kinds(msgs)
    got = await probe.get(T1)
    stored = got["twin"]["setpoint"]["ack"]
    assert stored["status"] == "applied" and stored["expected_version"] == 1
    assert stored["reason"] == ""
    msgs = await probe.update(T1, {"setpoint": {**actual("21.5"), "ack": ack}})
    assert kinds(msgs) == ["twin/update/result"]  # the same ack again changes nothing
    failed = {"expected_version": 1, "status": "failed", "reason": "timeout"}
    msgs = await probe.update(T1, {"setpoint": {"ack": failed}})
    doc = only(msgs, "twin/update/document")["twin"]["setpoint"]
    assert doc["current"]["ack"]["reason"] == "timeout"
    assert doc["last"]["ack"]["status"] == "applied"


async def test_metadata_type_of_the_model_or_its_family_is_accepted(
    twin: TwinService, probe: Probe
) -> None:
    msgs = await probe.update(
        T1,
        {
            "setpoint": {**expected("22"), "metadata": {"type": "DOUBLE"}},
            "count": {**expected("3"), "metadata": {"type": "integer"}},
            "ratio": {**expected("0.5"), "metadata": {"type": "float"}},
            # Versions echoed by a KubeEdge client are accepted and ignored.
            "mode": {**expected("eco"), "expected_version": {"cloud": 4, "edge": 9}},
        },
    )
    result = only(msgs, "twin/update/result")
    assert result["version"] == 1
    got = await probe.get(T1)
    assert got["twin"]["mode"]["expected_version"] == {"cloud": 0, "edge": 1}


# --------------------------------------------------------------------------- rejections
BAD_UPDATES: list[tuple[str, Any, str]] = [
    ("not-utf8", b"\xff\xfe{}", "not UTF-8"),
    ("not-json", b"{not json", "not JSON"),
    ("not-object", b"[1, 2]", "must be a JSON object"),
    ("no-twin", {"event_id": "x"}, "no twin object"),
    ("twin-not-object", {"event_id": "x", "twin": [1]}, "twin must be an object"),
    ("bad-key", {"event_id": "x", "twin": {"a b": expected("1")}}, "not a property name"),
    ("unknown-property", {"event_id": "x", "twin": {"nope": expected("1")}}, "no property"),
    (
        "number-value",
        {"event_id": "x", "twin": {"setpoint": {"expected": {"value": 22}}}},
        "JSON string",
    ),
    (
        "bool-value",
        {"event_id": "x", "twin": {"heating": {"expected": {"value": True}}}},
        "JSON string",
    ),
    (
        "null-value",
        {"event_id": "x", "twin": {"mode": {"expected": {"value": None}}}},
        "JSON string",
    ),
    ("missing-value", {"event_id": "x", "twin": {"mode": {"expected": {}}}}, "missing"),
    ("bad-float", {"event_id": "x", "twin": {"setpoint": expected("abc")}}, "not a decimal"),
    ("nan", {"event_id": "x", "twin": {"ratio": expected("NaN")}}, "not a decimal"),
    ("bad-int", {"event_id": "x", "twin": {"count": expected("1.5")}}, "not an integer"),
    ("int64", {"event_id": "x", "twin": {"count": actual("9223372036854775808")}}, "int64"),
    ("bad-bool", {"event_id": "x", "twin": {"heating": expected("True")}}, "not a boolean"),
    ("long-string", {"event_id": "x", "twin": {"mode": expected("x" * 513)}}, "longer than 512"),
    ("control-char", {"event_id": "x", "twin": {"mode": expected("a\nb")}}, "control"),
    ("bad-base64", {"event_id": "x", "twin": {"blob": expected("AAE")}}, "base64"),
    ("above-max", {"event_id": "x", "twin": {"setpoint": expected("30.5")}}, "above the maximum"),
    ("below-min", {"event_id": "x", "twin": {"count": expected("-1")}}, "below the minimum"),
    ("read-only", {"event_id": "x", "twin": {"temperature": expected("20")}}, "ReadOnly"),
    (
        "type-change",
        {"event_id": "x", "twin": {"setpoint": {**expected("1"), "metadata": {"type": "int"}}}},
        "change the type",
    ),
    (
        "unknown-type",
        {"event_id": "x", "twin": {"setpoint": {**expected("1"), "metadata": {"type": "decimal"}}}},
        "unknown property type",
    ),
    ("unknown-field", {"event_id": "x", "twin": {"setpoint": {"desired": "1"}}}, "unknown field"),
    ("unknown-top-field", {"event_id": "x", "twin": {}, "verison": 3}, "unknown field 'verison'"),
    ("bad-version", {"event_id": "x", "twin": {}, "version": "3"}, "version must be"),
    ("negative-version", {"event_id": "x", "twin": {}, "version": -1}, "version must be"),
    ("bad-event-id", {"event_id": 7, "twin": {}}, "event_id must be a string"),
    ("bad-timestamp", {"event_id": "x", "twin": {}, "timestamp": "now"}, "timestamp"),
    ("delete-declared", {"event_id": "x", "twin": {"mode": None}}, "cannot be deleted"),
    (
        "bad-ack",
        {"event_id": "x", "twin": {"setpoint": {"ack": {"expected_version": 1, "status": "ok"}}}},
        "ack.status",
    ),
    ("entry-not-object", {"event_id": "x", "twin": {"mode": "eco"}}, "object or null"),
    ("duplicate-key", b'{"event_id": "x", "twin": {}, "twin": {}}', "duplicate key"),
]


@pytest.mark.parametrize(
    ("payload", "reason"), [(p, r) for _, p, r in BAD_UPDATES], ids=[i for i, _, _ in BAD_UPDATES]
)
async def test_malformed_update_is_400_and_changes_nothing(
    twin: TwinService, probe: Probe, payload: Any, reason: str
) -> None:
    msgs = await probe.exchange(T1, payload)
    assert kinds(msgs) == ["twin/update/result"]  # no document, no delta
    body = msgs[0].body
    assert body["code"] == 400, body
    assert reason in body["reason"], body["reason"]
    assert body["version"] == 0
    expected_eid = payload.get("event_id") if isinstance(payload, dict) else ""
    assert body["event_id"] == (expected_eid if isinstance(expected_eid, str) else "")
    got = await probe.get(T1)
    assert got["version"] == 0


async def test_all_or_nothing(twin: TwinService, probe: Probe) -> None:
    msgs = await probe.update(T1, {"mode": expected("eco"), "count": expected("500")})
    assert only(msgs, "twin/update/result")["code"] == 400
    got = await probe.get(T1)
    assert "expected" not in got["twin"]["mode"] and got["version"] == 0


async def test_unknown_device_is_404_on_every_request_topic(
    twin: TwinService, probe: Probe
) -> None:
    for suffix, body in (
        ("twin/update", {"event_id": "u1", "twin": {"x": expected("1")}}),
        ("twin/get", {"event_id": "u2"}),
        ("state/update", {"event_id": "u3", "state": "online"}),
    ):
        start = probe.mark()
        await probe.publish(f"{PREFIX}default/ghost/{suffix}", body)
        msg = await probe.wait_for(lambda m: m.topic.startswith(f"{PREFIX}default/ghost/"), start)
        assert msg.kind == f"{suffix}/result"
        assert msg.body["code"] == 404 and msg.body["event_id"] == body["event_id"]
        assert "ghost" in msg.body["reason"]


async def test_version_mismatch_is_409_with_the_current_version(
    twin: TwinService, probe: Probe
) -> None:
    await probe.update(T1, {"mode": expected("eco")})
    msgs = await probe.update(T1, {"mode": expected("away")}, version=0)
    body = only(msgs, "twin/update/result")
    assert (body["code"], body["version"]) == (409, 1)
    msgs = await probe.update(T1, {"mode": expected("away")}, version=1)
    assert only(msgs, "twin/update/result")["version"] == 2
    # Error precedence: a stale version with a bad entry is 400.
    msgs = await probe.update(T1, {"count": expected("x")}, version=0)
    assert only(msgs, "twin/update/result")["code"] == 400


async def test_payload_over_the_limit_is_413(
    settings: MqttSettings, specs: list[DeviceSpec[Any, Any]], tmp_path: Path, probe: Probe
) -> None:
    async with running(settings, tmp_path / "t.db", specs, max_payload=1000):
        big = {"event_id": "big-1", "twin": {"mode": expected("x" * 2000)}}
        msgs = await probe.exchange(T1, big)
        body = only(msgs, "twin/update/result")
        assert (body["code"], body["event_id"]) == (413, "big-1")
        msgs = await probe.exchange(T1, b"x" * 2000)
        assert only(msgs, "twin/update/result")["event_id"] == ""
        # Over 1 MiB the event_id is not looked for.
        huge = json.dumps({"event_id": "big-2", "pad": "x" * (1024 * 1024)}).encode()
        msgs = await probe.exchange(T1, huge)
        assert only(msgs, "twin/update/result")["event_id"] == ""
        # 413 comes before 404.
        start = probe.mark()
        await probe.publish(f"{PREFIX}default/ghost/twin/update", big)
        msg = await probe.wait_for(lambda m: "ghost" in m.topic, start)
        assert msg.body["code"] == 413
        got = await probe.get(T1)
        assert got["version"] == 0


async def test_kubeedge_strict_values(
    settings: MqttSettings, specs: list[DeviceSpec[Any, Any]], tmp_path: Path, probe: Probe
) -> None:
    async with running(settings, tmp_path / "t.db", specs, kubeedge_strict=True):
        for value in ("two words", "", "é"):
            msgs = await probe.update(T1, {"mode": expected(value)})
            body = only(msgs, "twin/update/result")
            assert body["code"] == 400 and "character set" in body["reason"]
        msgs = await probe.update(T1, {"mode": expected("eco-2,a:b/c@d#e")})
        assert only(msgs, "twin/update/result")["version"] == 1


async def test_dynamic_twins(
    settings: MqttSettings, specs: list[DeviceSpec[Any, Any]], tmp_path: Path, probe: Probe
) -> None:
    async with running(settings, tmp_path / "t.db", specs, allow_dynamic_twins=True):
        msgs = await probe.update(
            T2, {"note": actual("hello"), "level": {**actual("3"), "metadata": {"type": "int"}}}
        )
        assert kinds(msgs) == ["twin/update/result", "twin/update/document"]
        got = await probe.get(T2)
        assert got["twin"]["note"]["optional"] is True
        assert got["twin"]["note"]["metadata"] == {"type": "string"}
        assert got["twin"]["level"]["metadata"] == {"type": "int"}
        msgs = await probe.update(T2, {"level": actual("x")})
        assert only(msgs, "twin/update/result")["code"] == 400  # typed from its creation
        msgs = await probe.update(T2, {"note": None})
        result = only(msgs, "twin/update/result")
        assert result["twin"] == {"note": None}
        doc = only(msgs, "twin/update/document")["twin"]["note"]
        assert doc["current"] is None and doc["last"]["actual"]["value"] == "hello"
        msgs = await probe.update(T2, {"note": None})
        assert only(msgs, "twin/update/result")["code"] == 404  # nothing to delete
        msgs = await probe.update(T2, {"heating": None})
        assert only(msgs, "twin/update/result")["code"] == 400  # declared twins stay
        got = await probe.get(T2)
        assert "note" not in got["twin"] and got["version"] == 2


# --------------------------------------------------------------------------- de-duplication
async def test_duplicate_event_id_resends_the_original_result(
    twin: TwinService, probe: Probe
) -> None:
    body = {"event_id": "dup-1", "twin": {"mode": expected("eco")}}
    first = await probe.exchange(T1, body)
    assert len(first) == 3 or kinds(first) == [
        "twin/update/result",
        "twin/update/document",
    ]
    await probe.update(T1, {"mode": expected("away")})
    # The same event_id again, even with another body: the original result, nothing applied.
    again = await probe.exchange(T1, {"event_id": "dup-1", "twin": {"mode": expected("off")}})
    assert kinds(again) == ["twin/update/result"]
    assert again[0].raw == first[0].raw
    got = await probe.get(T1)
    assert got["twin"]["mode"]["expected"]["value"] == "away" and got["version"] == 2
    # A rejected request is not remembered: a corrected retry may reuse its event_id.
    bad = await probe.exchange(T1, {"event_id": "dup-2", "twin": {"count": expected("x")}})
    assert bad[0].body["code"] == 400
    good = await probe.exchange(T1, {"event_id": "dup-2", "twin": {"count": expected("4")}})
    assert only(good, "twin/update/result")["version"] == 3
    # No-op requests are remembered too.
    noop = await probe.exchange(T1, {"event_id": "dup-3", "twin": {"count": expected("4")}})
    await probe.update(T1, {"count": expected("5")})
    again = await probe.exchange(T1, {"event_id": "dup-3", "twin": {"count": expected("4")}})
    assert again[0].raw == noop[0].raw
    assert (await probe.get(T1))["twin"]["count"]["expected"]["value"] == "5"


async def test_duplicates_within_one_batch(twin: TwinService, probe: Probe) -> None:
    body = json.dumps({"event_id": "same", "twin": {"count": expected("9")}}).encode()
    start = probe.mark()
    await asyncio.gather(*(probe.publish(f"{PREFIX}{T1}/twin/update", body) for _ in range(5)))
    msgs = await probe.exchange(T1, {"event_id": "g"}, suffix="twin/get")
    msgs = probe.messages[start:]
    results = [m for m in msgs if m.kind == "twin/update/result"]
    assert len(results) == 5 and len({m.raw for m in results}) == 1
    assert len([m for m in msgs if m.kind == "twin/update/document"]) == 1


# --------------------------------------------------------------------------- concurrency
async def test_concurrent_writers_with_the_same_version(
    twin: TwinService, probe: Probe, settings: MqttSettings
) -> None:
    await probe.update(T1, {"mode": expected("start")})
    async with probe_for(settings) as other:
        start = probe.mark()
        await asyncio.gather(
            probe.publish(
                f"{PREFIX}{T1}/twin/update",
                {"event_id": "w1", "version": 1, "twin": {"mode": expected("one")}},
            ),
            other.publish(
                f"{PREFIX}{T1}/twin/update",
                {"event_id": "w2", "version": 1, "twin": {"mode": expected("two")}},
            ),
        )
        results = []
        for eid in ("w1", "w2"):

            def answers(m: Msg, e: str = eid) -> bool:
                return m.kind == "twin/update/result" and bool(m.body["event_id"] == e)

            msg = await probe.wait_for(answers, start)
            results.append(msg.body)
    codes = sorted(r.get("code", 200) for r in results)
    assert codes == [200, 409]
    winner = next(r for r in results if "code" not in r)
    loser = next(r for r in results if "code" in r)
    assert winner["version"] == 2 and loser["version"] == 2
    got = await probe.get(T1)
    assert got["twin"]["mode"]["expected"]["value"] == winner["twin"]["mode"]["expected"]["value"]


async def test_updates_of_one_device_apply_in_arrival_order(
    twin: TwinService, probe: Probe
) -> None:
    start = probe.mark()
    for i in range(30):
        await probe.publish(
            f"{PREFIX}{T1}/twin/update", {"event_id": f"o{i}", "twin": {"count": expected(str(i))}}
        )
    await probe.exchange(T1, {"event_id": "end"}, suffix="twin/get")
    results = [m.body for m in probe.messages[start:] if m.kind == "twin/update/result"]
    assert [r["event_id"] for r in results] == [f"o{i}" for i in range(30)]
    assert [r["version"] for r in results] == list(range(1, 31))
    deltas = [m.body for m in probe.messages[start:] if m.kind == "twin/update/delta"]
    assert [d["version"] for d in deltas] == sorted(d["version"] for d in deltas)
    assert (await probe.get(T1))["twin"]["count"]["expected"]["value"] == "29"


# --------------------------------------------------------------------------- store failure
async def test_store_failure_is_500_and_changes_nothing(
    settings: MqttSettings, specs: list[DeviceSpec[Any, Any]], tmp_path: Path, probe: Probe
) -> None:
    db = tmp_path / "t.db"
    async with running(settings, db, specs, busy_timeout=0.05):
        await probe.update(T1, {"mode": expected("eco")})
        # Another process holds the write lock: the service's transaction cannot commit.
        blocker = sqlite3.connect(db, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            body = {"event_id": "f-1", "twin": {"mode": expected("away")}}
            msgs = await probe.exchange(T1, body)
            result = only(msgs, "twin/update/result")
            assert result["code"] == 500 and result["version"] == 1
            assert "store" in result["reason"]
            assert kinds(msgs) == ["twin/update/result"]
            got = await probe.get(T1)
            assert got["twin"]["mode"]["expected"]["value"] == "eco" and got["version"] == 1
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        # Not remembered: the retry with the same event_id is applied.
        msgs = await probe.exchange(T1, body)
        assert only(msgs, "twin/update/result")["version"] == 2


# --------------------------------------------------------------------------- state, membership
async def test_state_updates(twin: TwinService, probe: Probe) -> None:
    msgs = await probe.exchange(T1, {"event_id": "s1", "state": "ONLINE"}, suffix="state/update")
    body = only(msgs, "state/update/result")
    assert body["event_id"] == "s1"
    device = body["device"]
    assert device["name"] == "thermostat-1" and device["state"] == "online"
    first_online = device["lastOnlineTime"]
    assert first_online.endswith("Z") and "T" in first_online
    msgs = await probe.exchange(T1, {"state": "offline"}, suffix="state/update")
    device = only(msgs, "state/update/result")["device"]
    assert device["state"] == "offline" and device["lastOnlineTime"] == first_online
    msgs = await probe.exchange(T1, {"event_id": "s3", "state": "broken"}, suffix="state/update")
    assert only(msgs, "state/update/result")["code"] == 400
    got = await probe.get(T1)
    assert got["state"] == "offline" and got["version"] == 0  # state changes no version
    fresh = await probe.exchange(T2, {"state": "unhealthy"}, suffix="state/update")
    assert only(fresh, "state/update/result")["device"]["lastOnlineTime"] == ""


async def test_membership(twin: TwinService, probe: Probe) -> None:
    await probe.exchange(T1, {"state": "online"}, suffix="state/update")
    start = probe.mark()
    await probe.publish("$hw/events/node/edge-1/membership/get", {"event_id": "m1"})
    msg = await probe.wait_for(lambda m: m.topic.endswith("edge-1/membership/get/result"), start)
    body = msg.body
    assert body["event_id"] == "m1"
    ids = [d["id"] for d in body["devices"]]
    assert ids == ["default/thermostat-1", "default/thermostat-2"]
    entry = body["devices"][0]
    assert entry["name"] == "thermostat-1" and entry["state"] == "online"
    assert entry["last_online"] and set(entry["twin"]) >= {"setpoint", "temperature"}
    assert {"description", "attributes"} <= set(entry)
    start = probe.mark()
    await probe.publish("$hw/events/node/nowhere/membership/get", {"event_id": "m2"})
    msg = await probe.wait_for(lambda m: m.topic.endswith("nowhere/membership/get/result"), start)
    assert msg.body["devices"] == []


# --------------------------------------------------------------------------- MQTT 5 replies
async def test_mqtt5_response_topic_gets_the_reply_too(
    settings: MqttSettings, specs: list[DeviceSpec[Any, Any]], tmp_path: Path
) -> None:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    # Response topics reach the service only over an MQTT 5 connection.
    v5 = dataclasses.replace(settings, protocol="5")
    async with running(v5, tmp_path / "t.db", specs), probe_for(settings, protocol5=True) as probe:
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = "app/7/replies"
        props.CorrelationData = b"corr-1"
        start = probe.mark()
        await probe.publish(
            f"{PREFIX}{T1}/twin/update",
            {"event_id": "r5", "twin": {"mode": expected("eco")}},
            properties=props,
        )
        reply = await probe.wait_for(lambda m: m.topic == "app/7/replies", start)
        assert reply.correlation == b"corr-1"
        assert reply.body["event_id"] == "r5" and reply.body["version"] == 1
        device = await probe.wait_for(lambda m: m.kind == "twin/update/result", start)
        assert device.raw == reply.raw


async def test_read_your_writes(twin: TwinService, probe: Probe) -> None:
    eid = uuid.uuid4().hex
    start = probe.mark()
    await probe.publish(
        f"{PREFIX}{T1}/twin/update", {"event_id": eid, "twin": {"count": expected("42")}}
    )
    await probe.publish(
        "mapperkit/v1/twin/query",
        {"event_id": "q", "where": "desired.count = 42", "select": ["id"]},
    )
    reply = await probe.wait_for(lambda m: m.topic == "mapperkit/v1/twin/query/result", start)
    assert reply.body["items"] == [{"id": T1}]
