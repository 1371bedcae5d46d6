"""``TwinClient`` and the ``twin`` commands against the service over a real broker."""

from __future__ import annotations

import argparse
import asyncio
import json
from importlib.metadata import entry_points
from typing import Any

import pytest

from mapper_sdk.errors import TwinRejected
from mapper_sdk.mqtt import LinkDown, MqttSettings
from mapper_sdk.testing import Mosquitto, free_port
from twin.cli import command
from twin.client import TwinClient, TwinUnavailable, split_device, to_text
from twin.service import TwinService

from .conftest import subprocess_env, twin_command

T1 = "default/thermostat-1"


async def test_get_set_and_typed_values(twin: TwinService, settings: MqttSettings) -> None:
    async with TwinClient(settings) as client:
        state = await client.get("thermostat-1")  # a bare name is in namespace default
        assert (state.device, state.version, state.state) == (T1, 0, "unknown")
        assert state.desired("setpoint") == 21.5 and state.reported("setpoint") is None
        result = await client.set_desired(
            T1, {"setpoint": 22, "heating": True, "count": 7, "blob": b"\x00\x01", "mode": "eco"}
        )
        assert result.version == 1 and result.changed
        assert set(result.twins) == {"setpoint", "heating", "count", "blob", "mode"}
        state = await client.get(T1)
        assert state.desired("heating") is True and state.desired("count") == 7
        assert state.desired("blob") == b"\x00\x01" and state.desired("setpoint") == 22.0
        assert state.twins["blob"]["expected"]["value"] == "AAE="
        again = await client.set_desired(T1, {"setpoint": 22.0})
        assert again.version == 1 and not again.changed
        cleared = await client.set_desired(T1, {"mode": None})
        assert cleared.version == 2
        assert (await client.get(T1)).desired("mode") is None


async def test_rejections_are_typed(twin: TwinService, settings: MqttSettings) -> None:
    async with TwinClient(settings) as client:
        with pytest.raises(TwinRejected) as info:
            await client.set_desired(T1, {"setpoint": 99})
        assert info.value.code == 400 and "maximum" in info.value.reason
        assert info.value.version == 0
        with pytest.raises(TwinRejected) as info:
            await client.get("default/ghost")
        assert info.value.code == 404
        await client.set_desired(T1, {"mode": "eco"})
        with pytest.raises(TwinRejected) as info:
            await client.set_desired(T1, {"mode": "away"}, version=0)
        assert (info.value.code, info.value.version) == (409, 1)
        with pytest.raises(TwinRejected) as info:
            await client.query("state = ")
        assert info.value.code == 400 and "expected a value" in info.value.reason


async def test_retry_with_the_same_event_id_is_safe(
    twin: TwinService, settings: MqttSettings
) -> None:
    async with TwinClient(settings) as client:
        first = await client.set_desired(T1, {"count": 1}, event_id="retry-1")
        second = await client.set_desired(T1, {"count": 1}, event_id="retry-1")
        assert first == second and (await client.get(T1)).version == 1


async def test_watch_deltas_and_documents(twin: TwinService, settings: MqttSettings) -> None:
    async with TwinClient(settings) as client:
        async with client.watch(T1) as events, client.watch(kinds=("delta",)) as everything:
            await client.set_desired(T1, {"setpoint": 23})
            document = await anext(events)
            delta = await anext(events)
            assert (document.kind, delta.kind) == ("document", "delta")
            assert document.version == delta.version == 1
            assert delta.delta == {"setpoint": "23"}
            await client.set_desired("plant/boiler-7", {"valve": 55})
            first = await anext(everything)
            second = await anext(everything)
            assert [first.device, second.device] == [T1, "plant/boiler-7"], (first, second)
            assert second.delta == {"valve": "55"}


async def test_odd_messages_on_watched_topics_do_not_stop_the_client(
    twin: TwinService, settings: MqttSettings
) -> None:
    """Anyone may publish on twin topics; the client skips what it cannot use."""
    delta_topic = "$hw/events/device/default/thermostat-2/twin/update/delta"
    async with TwinClient(settings) as client, settings.client() as other:
        async with client.watch("default/thermostat-2") as events:
            for odd in (
                {"event_id": ["not", "hashable"], "delta": {"setpoint": "1"}},
                {"event_id": "x", "version": "seven", "delta": {}},
                {"event_id": {"a": 1}, "version": None},
            ):
                await other.publish(delta_topic, json.dumps(odd).encode(), qos=1)
            await client.set_desired("default/thermostat-2", {"setpoint": 24})
            async with asyncio.timeout(10):
                while True:
                    event = await anext(events)
                    if event.kind == "delta" and event.delta.get("setpoint") == "24":
                        break
            assert (await client.get("default/thermostat-2")).desired("setpoint") == 24


async def test_queries_and_membership(twin: TwinService, settings: MqttSettings) -> None:
    async with TwinClient(settings) as client:
        page = await client.query("", select=["id"], limit=2, order_by="id DESC")
        assert [i["id"] for i in page.items] == ["plant/boiler-7", "default/thermostat-2"]
        assert page.count == 2 and page.cursor is not None
        rest = await client.query(
            "", select=["id"], limit=2, order_by="id DESC", cursor=page.cursor
        )
        assert [i["id"] for i in rest.items] == [T1] and rest.cursor is None
        every = [i["id"] async for i in client.query_all(select=["id"], page_size=1)]
        assert every == [T1, "default/thermostat-2", "plant/boiler-7"]
        groups = await client.query(group_by="node")
        assert groups.items == [{"node": "edge-1", "count": 2}, {"node": "edge-2", "count": 1}]
        members = await client.membership("edge-2")
        assert [m["id"] for m in members] == ["plant/boiler-7"]


async def test_no_service_and_no_broker(broker: Mosquitto, settings: MqttSettings) -> None:
    async with TwinClient(settings, timeout=0.2) as client:
        with pytest.raises(TwinUnavailable, match="no answer to get"):
            await client.get(T1)
    closed = MqttSettings.from_url(f"mqtt://127.0.0.1:{free_port()}")
    with pytest.raises(LinkDown, match="cannot connect"):
        async with TwinClient(closed):
            pass


def test_device_names_and_wire_text() -> None:
    assert split_device("boiler") == ("default", "boiler")
    assert split_device("plant/boiler-7") == ("plant", "boiler-7")
    for bad in ("", "a/b/c", "/x", "x/", "a/+"):
        with pytest.raises(ValueError, match="namespace/name"):
            split_device(bad)
    assert [to_text(v) for v in (True, 3, 2.5, b"\xff", "x")] == ["true", "3", "2.5", "/w==", "x"]


def test_twin_command_is_registered() -> None:
    (ep,) = entry_points(group="mapperkit.commands", name="twin")
    assert ep.value == "twin.cli:command"
    parser = argparse.ArgumentParser()
    command(parser.add_subparsers())
    args = parser.parse_args(["twin", "serve", "--db", "x.db", "--devices", "d.yaml"])
    assert (args.durability, args.max_payload, args.kubeedge_strict) == ("process", 65536, False)
    args = parser.parse_args(["twin", "set", "boiler", "a=1", "--clear", "b", "--version", "4"])
    assert (args.values, args.clear, args.version) == (["a=1"], ["b"], 4)


# --------------------------------------------------------------------------- the commands
async def cli(broker: Mosquitto, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *twin_command(*args, "--broker", broker.url),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=subprocess_env(),
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_commands(twin: TwinService, broker: Mosquitto, settings: MqttSettings) -> None:
    watch = await asyncio.create_subprocess_exec(
        *twin_command("watch", "thermostat-1", "--json", "--count", "2", "--broker", broker.url),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=subprocess_env(),
    )
    assert watch.stderr is not None
    assert b"watching" in await asyncio.wait_for(watch.stderr.readline(), 30)
    code, out, err = await cli(broker, "set", "thermostat-1", "setpoint=24.5", "mode=eco")
    assert code == 0, err
    assert out.strip() == "default/thermostat-1: version 1, changed mode, setpoint"
    wout, _ = await asyncio.wait_for(watch.communicate(), 30)
    assert watch.returncode == 0
    events = [json.loads(line) for line in wout.decode().splitlines()]
    assert [e["kind"] for e in events] == ["document", "delta"]
    assert events[1]["delta"] == {"setpoint": "24.5", "mode": "eco"}

    results = await asyncio.gather(
        cli(broker, "get", "default/thermostat-1", "--json"),
        cli(broker, "get", "thermostat-1"),
        cli(broker, "query", "desired.setpoint > 20", "--select", "id,desired.setpoint", "--json"),
        cli(broker, "query", "", "--group-by", "state"),
        cli(broker, "devices"),
        cli(broker, "set", "thermostat-1", "setpoint=99"),
        cli(broker, "get", "ghost"),
    )
    (c1, get_json, _), (c2, table, _), (c3, query, _), (c4, groups, _) = results[:4]
    (c5, devices, _), (c6, _, bad_err), (c7, _, ghost_err) = results[4:]
    assert (c1, c2, c3, c4, c5) == (0, 0, 0, 0, 0)
    body: dict[str, Any] = json.loads(get_json)
    assert body["version"] == 1 and body["twin"]["mode"]["expected"]["value"] == "eco"
    assert table.splitlines()[0] == "default/thermostat-1  version 1  state unknown"
    header = table.splitlines()[1].split()
    assert header[:4] == ["PROPERTY", "TYPE", "DESIRED", "REPORTED"]
    assert any(line.split()[:3] == ["setpoint", "float", "24.5"] for line in table.splitlines())
    assert json.loads(query)["items"] == [{"id": "default/thermostat-1", "desired.setpoint": 24.5}]
    assert groups.split() == ["STATE", "COUNT", "unknown", "3"]
    lines = devices.splitlines()
    assert lines[0].split()[:3] == ["ID", "MODEL", "NODE"] and len(lines) == 4
    assert "default/thermostat-1" in lines[1] and "yes" in lines[1]  # a pending delta
    assert c6 == 1 and "400" in bad_err and "maximum" in bad_err
    assert c7 == 1 and "404" in ghost_err
