"""Twin queries: the WHERE language, ordering, paging, GROUP BY, and replies over MQTT."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from mapper_sdk.model import DeviceSpec, load_text
from mapper_sdk.mqtt import MqttSettings
from twin.document import DeviceTwin, Options, apply_plan, device_from_spec, plan_update
from twin.query import QueryError, compile_where, parse_query
from twin.service import TwinService

from .conftest import Probe, probe_for, running

FLEET_YAML = """
devices:
""" + "".join(
    f"""
  - name: t-{i:02d}
    model: {"thermo" if i % 5 else "legacy"}
    protocol: modbus
    nodeName: {"edge-a" if i % 2 else "edge-b"}
    properties:
      - {{name: temperature, type: float}}
      - {{name: level, type: {"int" if i % 5 else "string"}}}
      - {{name: setpoint, type: float}}
      - {{name: label, type: string}}
      - {{name: power, type: boolean}}
"""
    for i in range(40)
)


def fleet() -> list[DeviceTwin]:
    """40 devices: temperatures 0..39 on most, levels typed int or (every 5th) string."""
    out = []
    for spec in load_text(FLEET_YAML).devices:
        dev, _, _ = device_from_spec(spec, Options(), now=1)
        i = int(spec.name[2:])
        twin: dict[str, Any] = {
            "level": {"actual": {"value": str(i % 7)}},
            "label": {"actual": {"value": f"Room {i:02d}_x"}},
        }
        if i % 10 != 9:  # every tenth has no temperature
            twin["temperature"] = {"actual": {"value": f"{i}.5"}}
        if i % 3 == 0:
            twin["setpoint"] = {"expected": {"value": "20"}, "actual": {"value": "20.0"}}
        elif i % 3 == 1:
            twin["setpoint"] = {"expected": {"value": "21"}}
        if i % 4 == 0:
            twin["power"] = {"actual": {"value": "true"}, "ack": ack("applied")}
        elif i % 4 == 1:
            twin["power"] = {"actual": {"value": "false"}, "ack": ack("failed")}
        apply_plan(dev, plan_update(dev, {"twin": twin}, Options(), 1), 1)
        dev.state = "online" if i % 3 else "offline"
        out.append(dev)
    return out


def ack(status: str) -> dict[str, Any]:
    return {"expected_version": 0, "status": status}


FLEET = fleet()


def ids(where: str) -> list[int]:
    pred = compile_where(where)
    return sorted(int(d.name[2:]) for d in FLEET if pred(d))


def run(**body: Any) -> dict[str, Any]:
    return parse_query(body).run(FLEET)


ALL = list(range(40))
WITH_TEMP = [i for i in ALL if i % 10 != 9]


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("", ALL),
        ("reported.temperature > 30", [30, 31, 32, 33, 34, 35, 36, 37, 38]),
        ("reported.temperature >= 38.5", [38]),
        ("reported.temperature < 2", [0, 1]),
        ("reported.temperature = 3.5", [3]),
        ("reported.temperature != 3.5", [i for i in WITH_TEMP if i != 3]),
        ("reported.temperature <> 3.5", [i for i in WITH_TEMP if i != 3]),
        # Typed: an int level compares with a number, a string level with a string.
        ("reported.level = 3", [i for i in ALL if i % 7 == 3 and i % 5]),
        ("reported.level = '3'", [i for i in ALL if i % 7 == 3 and i % 5 == 0]),
        ("reported.level > 5", [i for i in ALL if i % 7 == 6 and i % 5]),
        ("reported.temperature > 'a'", []),  # across types: false
        ("reported.power = true", [i for i in ALL if i % 4 == 0]),
        ("reported.power = FALSE", [i for i in ALL if i % 4 == 1]),
        ("reported.power = 1", []),  # a number is not a boolean
        ("NOT reported.power = true", [i for i in ALL if i % 4 != 0]),  # undefined → NOT true
        ("NOT reported.temperature > 100", ALL),
        ("state = 'offline'", [i for i in ALL if i % 3 == 0]),
        ("state = 'online' AND reported.temperature < 5", [1, 2, 4]),
        ("reported.temperature < 2 OR reported.temperature > 37", [0, 1, 37, 38]),
        ("reported.temperature < 2 OR reported.temperature > 37 AND state = 'offline'", [0, 1]),
        (
            "(reported.temperature < 2 OR reported.temperature > 37) AND state = 'online'",
            [1, 37, 38],
        ),
        ("NOT (state = 'online' OR reported.temperature > 1)", [0, 9, 39]),
        ("name IN ('t-01', 't-07', 'nope')", [1, 7]),
        (
            "reported.level IN (1, '0', 2.0)",
            [i for i in ALL if (i % 5 and i % 7 in (1, 2)) or (i % 5 == 0 and i % 7 == 0)],
        ),
        ("name NOT IN ('t-01')", [i for i in ALL if i != 1]),
        ("reported.label LIKE 'Room 1%'", list(range(10, 20))),
        ("reported.label LIKE '%_x'", ALL),
        ("reported.label LIKE 'Room 1_%'", []),  # '_' has no special meaning
        ("reported.label LIKE 'room%'", []),  # case-sensitive
        ("reported.label NOT LIKE '%0_x'", [i for i in ALL if i % 10]),
        ("reported.temperature IS DEFINED", WITH_TEMP),
        ("reported.temperature IS NULL", [9, 19, 29, 39]),
        ("reported.temperature IS NOT DEFINED", [9, 19, 29, 39]),
        ("reported.temperature IS NOT NULL", WITH_TEMP),
        ("desired.setpoint = 21", [i for i in ALL if i % 3 == 1]),
        ("has_delta = true", [i for i in ALL if i % 3 == 1]),
        ("ack.power.status = 'failed'", [i for i in ALL if i % 4 == 1]),
        ("ack.power.status IS NULL", [i for i in ALL if i % 4 > 1]),
        ("model = 'legacy'", [i for i in ALL if i % 5 == 0]),
        ("node = 'edge-a' and version = 1", [i for i in ALL if i % 2]),
        ("id = 'default/t-03' or namespace = 'other'", [3]),
        ("last_online IS NULL", ALL),
        ("reported.\"label\" LIKE '%39%'", [39]),
    ],
)
def test_where(where: str, expected: list[int]) -> None:
    assert ids(where) == expected


@pytest.mark.parametrize(
    ("where", "position", "fragment"),
    [
        ("reported.temperature >", 22, "expected a value"),
        ("foo = 1", 0, "unknown path 'foo'"),
        ("reported = 1", 0, "unknown path"),
        ("state = 'online' AND", 20, "expected a path"),
        ("state = 'online", 8, "unterminated"),
        ("state == 'x'", 7, "expected a value"),
        ("(state = 'x'", 12, "expected ')'"),
        ("state = 'x')", 11, "AND, OR or the end"),
        ("state 'x'", 6, "expected a comparison"),
        ("state = NULL", 8, "IS NULL"),
        ("reported.temperature IS 3", 24, "DEFINED or NULL"),
        ("reported.x ! 3", 11, "'!' must be followed"),
        ("reported. = 1", 9, "expected a name"),
        ("state = 'a' ; drop", 12, "unexpected character"),
        ("version > 3x", 10, "malformed number"),
        ("name LIKE 5", 10, "'pattern'"),
        ("name IN 'a'", 8, "'(' after IN"),
        ("name NOT = 'a'", 9, "IN or LIKE after NOT"),
    ],
)
def test_parse_errors_carry_the_position(where: str, position: int, fragment: str) -> None:
    with pytest.raises(QueryError) as info:
        compile_where(where)
    assert info.value.position == position, info.value.reason
    assert fragment in info.value.reason


def test_order_by_with_undefined_values_last_and_ties_by_id() -> None:
    items = run(where="", order_by="reported.temperature DESC", limit=1000, select=["id"])["items"]
    got = [int(i["id"].split("-")[1]) for i in items]
    assert got == [*sorted(WITH_TEMP, reverse=True), 9, 19, 29, 39]
    items = run(order_by="reported.temperature", limit=1000, select=["id"])["items"]
    got = [int(i["id"].split("-")[1]) for i in items]
    assert got == [*WITH_TEMP, 9, 19, 29, 39]
    items = run(order_by="state DESC, reported.level ASC", limit=5, select=["id", "state"])
    rows = items["items"]
    assert [r["state"] for r in rows] == ["online"] * 5
    # Mixed types in one path sort by type (numbers before strings), then value.
    levels = run(order_by="reported.level, id", limit=1000, select=["reported.level"])["items"]
    values = [r["reported.level"] for r in levels]
    numbers = [v for v in values if isinstance(v, int)]
    assert values == sorted(numbers) + sorted(v for v in values if isinstance(v, str))


def test_default_order_is_by_id_and_default_items_are_whole_twins() -> None:
    page = run(where="reported.temperature < 2")
    assert [i["id"] for i in page["items"]] == ["default/t-00", "default/t-01"]
    item = page["items"][0]
    assert set(item) == {
        "id",
        "namespace",
        "name",
        "model",
        "node",
        "state",
        "last_online",
        "version",
        "twin",
    }
    assert item["twin"]["temperature"]["actual"]["value"] == "0.5"
    assert page["count"] == 2 and page["cursor"] is None


def test_select_gives_typed_values_and_null_when_undefined() -> None:
    page = run(
        where="name = 't-19'",
        select=[
            "id",
            "reported.temperature",
            "reported.power",
            "desired.setpoint",
            "version",
            "has_delta",
        ],
    )
    assert page["items"] == [
        {
            "id": "default/t-19",
            "reported.temperature": None,
            "reported.power": None,
            "desired.setpoint": 21.0,
            "version": 1,
            "has_delta": True,
        }
    ]


@pytest.mark.parametrize("order_by", [None, "reported.temperature DESC", "state, reported.level"])
def test_paging_is_stable_and_complete(order_by: str | None) -> None:
    body: dict[str, Any] = {"where": "reported.label LIKE 'Room%'", "select": ["id"]}
    if order_by:
        body["order_by"] = order_by
    whole = [i["id"] for i in run(**body, limit=1000)["items"]]
    assert len(whole) == 40
    pages: list[str] = []
    cursor = None
    for _ in range(20):
        page = run(**body, limit=7, cursor=cursor)
        assert page["count"] == len(page["items"]) <= 7
        pages += [i["id"] for i in page["items"]]
        cursor = page["cursor"]
        if cursor is None:
            break
    assert pages == whole


def test_cursor_belongs_to_its_query() -> None:
    page = run(where="", limit=5, order_by="id")
    with pytest.raises(QueryError, match="different where or order_by"):
        run(where="state = 'online'", limit=5, order_by="id", cursor=page["cursor"])
    with pytest.raises(QueryError, match="different where or order_by"):
        run(where="", limit=5, cursor=page["cursor"])
    with pytest.raises(QueryError, match="cursor is not valid"):
        run(where="", cursor="not-a-cursor!")


def test_limit_rules() -> None:
    with pytest.raises(QueryError, match="at least 1"):
        run(limit=0)
    with pytest.raises(QueryError, match="integer"):
        run(limit="5")
    assert run()["count"] == 40  # default 100
    assert parse_query({"limit": 5000}).limit == 1000  # clamped


def test_group_by_counts() -> None:
    page = run(group_by="state")
    assert page["items"] == [
        {"state": "offline", "count": 14},
        {"state": "online", "count": 26},
    ]
    page = run(where="reported.temperature < 10", group_by="reported.power")
    assert page["items"] == [
        {"reported.power": False, "count": 2},
        {"reported.power": True, "count": 3},
        {"reported.power": None, "count": 4},
    ]
    page = run(group_by="reported.level", where="name LIKE 't-0%'")
    assert page["items"][-1] == {"reported.level": "5", "count": 1}
    with pytest.raises(QueryError, match="cannot be combined"):
        run(group_by="state", order_by="id")


def test_request_validation() -> None:
    for body, fragment in (
        ({"wher": "x"}, "unknown field 'wher'"),
        ({"where": 5}, "where must be a string"),
        ({"select": "id"}, "select must be a non-empty list"),
        ({"select": ["id", "nope"]}, "select: unknown path"),
        ({"order_by": "id sideways"}, "order_by: expected ASC, DESC"),
        ({"group_by": "reported"}, "group_by: unknown path"),
    ):
        with pytest.raises(QueryError, match=fragment):
            parse_query(body)


# --------------------------------------------------------------------------- over MQTT
async def test_query_replies_over_mqtt(twin: TwinService, probe: Probe) -> None:
    start = probe.mark()
    await probe.publish(
        "mapperkit/v1/twin/query",
        {
            "event_id": "q1",
            "reply_to": "app/42/replies",
            "where": "desired.valve = 40",
            "select": ["id", "desired.valve", "node"],
        },
    )
    reply = await probe.wait_for(lambda m: m.topic == "app/42/replies", start)
    assert reply.body == {
        "event_id": "q1",
        "items": [{"id": "plant/boiler-7", "desired.valve": 40, "node": "edge-2"}],
        "count": 1,
        "cursor": None,
    }
    # No reply_to: the default result topic. Quoted property names work.
    await probe.publish(
        "mapperkit/v1/twin/query",
        {
            "event_id": "q2",
            "where": "reported.\"a,b\" IS NULL AND namespace = 'plant'",
            "select": ["id"],
        },
    )
    reply = await probe.wait_for(lambda m: m.body.get("event_id") == "q2", start)
    assert reply.topic == "mapperkit/v1/twin/query/result"
    assert reply.body["items"] == [{"id": "plant/boiler-7"}]
    # A query that does not parse: 400 with the position.
    await probe.publish("mapperkit/v1/twin/query", {"event_id": "q3", "where": "state = "})
    reply = await probe.wait_for(lambda m: m.body.get("event_id") == "q3", start)
    assert reply.body["code"] == 400 and reply.body["position"] == 8
    await probe.publish("mapperkit/v1/twin/query", b"{broken")
    reply = await probe.wait_for(
        lambda m: m.topic == "mapperkit/v1/twin/query/result" and m.body.get("event_id") == "",
        start,
    )
    assert reply.body["code"] == 400 and "not JSON" in reply.body["reason"]
    await probe.publish("mapperkit/v1/twin/query", {"event_id": "q4", "reply_to": "app/#"})
    reply = await probe.wait_for(lambda m: m.body.get("event_id") == "q4", start)
    assert reply.body["code"] == 400 and reply.topic == "mapperkit/v1/twin/query/result"


async def test_query_reply_to_the_mqtt5_response_topic(
    settings: MqttSettings, specs: list[DeviceSpec[Any, Any]], tmp_path: Path
) -> None:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    v5 = dataclasses.replace(settings, protocol="5")
    async with running(v5, tmp_path / "t.db", specs), probe_for(settings, protocol5=True) as probe:
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = "app/v5/answers"
        props.CorrelationData = b"\x01\x02"
        start = probe.mark()
        await probe.publish(
            "mapperkit/v1/twin/query",
            {"event_id": "q5", "reply_to": "app/ignored", "group_by": "node"},
            properties=props,
        )
        reply = await probe.wait_for(lambda m: m.body.get("event_id") == "q5", start)
        assert reply.topic == "app/v5/answers" and reply.correlation == b"\x01\x02"
        assert reply.body["items"] == [
            {"node": "edge-1", "count": 2},
            {"node": "edge-2", "count": 1},
        ]
