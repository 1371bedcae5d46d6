"""The limits that protect the node, each through the running twin service.

Payload size (413), properties per device (configuration error; 413 for
dynamic twins), devices per service (configuration error; a reload over the
limit keeps the old devices), requests per second per device (429) and the
size of a query answer (a page cut with a cursor, or 413).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from mapper_sdk.driver import Resources
from mapper_sdk.errors import ConfigError
from mapper_sdk.model import DeviceSpec, load_files, load_text
from mapper_sdk.mqtt import MqttSettings
from mapper_sdk.runtime import Mapper, MapperOptions, WorkerOptions
from mapper_sdk.testing import Mosquitto
from tests.sdk.memdriver import MemBus, MemDriver
from twin.cli import command, serve_config
from twin.document import (
    DEFAULT_MAX_DEVICES,
    DEFAULT_MAX_PAYLOAD,
    DEFAULT_MAX_PROPERTIES,
    DEFAULT_MAX_RESULT_BYTES,
    DEFAULT_RATE_BURST,
    DEFAULT_RATE_LIMIT,
    Options,
)
from twin.service import Incoming, TwinCore
from twin.store import Store, StoreError

from .conftest import DEVICES, PREFIX, Msg, Probe, exchange, probe_on, serve

T1 = "default/thermostat-1"
T2 = "default/thermostat-2"
CONFIGS = Path(__file__).parent / "configs"


def devices_yaml(names: list[str], props: int = 2, prop_type: str = "float") -> str:
    lines = ["devices:"]
    for name in names:
        lines += [f"  - name: {name}", "    protocol: mem", f"    connection: {{device: {name}}}"]
        lines.append("    properties:")
        lines += [
            f"      - {{name: p{i}, type: {prop_type}, visitor: {{address: a{i}}}}}"
            for i in range(props)
        ]
    return "\n".join(lines) + "\n"


def body(msg: Msg) -> dict[str, Any]:
    out: dict[str, Any] = msg.body
    return out


async def request(probe: Probe, device: str, suffix: str, payload: dict[str, Any]) -> Msg:
    """Publish one request and wait for its answer on the result topic."""
    eid = payload.setdefault("event_id", f"r-{uuid.uuid4().hex}")
    start = probe.mark()
    await probe.client.publish(f"{PREFIX}{device}/{suffix}", json.dumps(payload), qos=1)
    return await probe.wait_for(
        lambda m: m.topic == f"{PREFIX}{device}/{suffix}/result" and m.body["event_id"] == eid,
        start,
    )


@contextlib.asynccontextmanager
async def probe_all(settings: MqttSettings) -> AsyncIterator[Probe]:
    async with probe_on(
        settings, ["$hw/events/#", "mapperkit/v1/twin/#", "app/badinput/#"]
    ) as probe:
        yield probe


# --------------------------------------------------------------------------- options
def test_options_refuse_limits_that_are_not_positive() -> None:
    assert Options().rate_limit == DEFAULT_RATE_LIMIT
    Options(rate_limit=0)  # off
    for bad in (
        {"max_payload": 0},
        {"max_properties": -1},
        {"max_devices": 1.5},
        {"rate_burst": 0},
        {"max_result_bytes": True},
        {"rate_limit": -1.0},
        {"rate_limit": float("nan")},
        {"rate_limit": float("inf")},
    ):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            Options(**bad)


def test_serve_takes_every_limit_from_the_command_line() -> None:
    parser = argparse.ArgumentParser()
    command(parser.add_subparsers())
    base = ["twin", "serve", "--db", "x.db", "--devices", "d.yaml"]
    defaults = serve_config(parser.parse_args(base)).options
    assert (
        defaults.max_payload,
        defaults.max_properties,
        defaults.max_devices,
        defaults.rate_limit,
        defaults.rate_burst,
        defaults.max_result_bytes,
    ) == (
        DEFAULT_MAX_PAYLOAD,
        DEFAULT_MAX_PROPERTIES,
        DEFAULT_MAX_DEVICES,
        DEFAULT_RATE_LIMIT,
        DEFAULT_RATE_BURST,
        DEFAULT_MAX_RESULT_BYTES,
    )
    args = parser.parse_args(
        [
            *base,
            "--max-payload",
            "1000",
            "--max-properties",
            "7",
            "--max-devices",
            "9",
            "--rate-limit",
            "2.5",
            "--rate-burst",
            "4",
            "--max-result-bytes",
            "5000",
        ]
    )
    assert serve_config(args).options == Options(
        max_payload=1000,
        max_properties=7,
        max_devices=9,
        rate_limit=2.5,
        rate_burst=4,
        max_result_bytes=5000,
    )
    assert serve_config(parser.parse_args([*base, "--rate-limit", "0"])).options.rate_limit == 0
    for bad in (["--rate-limit", "-1"], ["--rate-limit", "fast"], ["--max-devices", "0"]):
        with pytest.raises(SystemExit):
            parser.parse_args([*base, *bad])


# --------------------------------------------------------------------------- payload size
@pytest.mark.parametrize(
    ("topic", "result"),
    [
        (f"{PREFIX}{T1}/twin/update", f"{PREFIX}{T1}/twin/update/result"),
        (f"{PREFIX}{T1}/twin/get", f"{PREFIX}{T1}/twin/get/result"),
        (f"{PREFIX}{T1}/state/update", f"{PREFIX}{T1}/state/update/result"),
        ("$hw/events/node/edge-1/membership/get", "$hw/events/node/edge-1/membership/get/result"),
        ("mapperkit/v1/twin/query", "mapperkit/v1/twin/query/result"),
    ],
)
async def test_payload_over_the_configured_size_is_413_on_every_topic(
    settings: MqttSettings,
    specs: list[DeviceSpec[Any, Any]],
    tmp_path: Path,
    topic: str,
    result: str,
) -> None:
    async with (
        serve(settings, tmp_path / "t.db", specs, max_payload=2000),
        probe_all(settings) as p,
    ):
        big = json.dumps({"event_id": "big", "pad": "x" * 2000}).encode()
        caused, after = await exchange(p, topic, big, T1)
        assert [m.topic for m in caused] == [result]
        answer = body(caused[0])
        assert (answer["code"], answer["event_id"]) == (413, "big")
        assert answer["reason"] == (
            f"payload of {len(big)} bytes is larger than the limit of 2000 bytes"
        )
        assert after["version"] == 0


# --------------------------------------------------------------------------- request rate
async def test_requests_beyond_the_rate_get_429_and_change_nothing(
    settings: MqttSettings, specs: list[DeviceSpec[Any, Any]], tmp_path: Path
) -> None:
    # 3 at once, then one every 2 s: the burst below is used up long before a refill.
    async with (
        serve(settings, tmp_path / "t.db", specs, rate_limit=0.5, rate_burst=3) as service,
        probe_all(settings) as probe,
    ):
        sent: list[tuple[str, dict[str, Any]]] = [
            ("twin/update", {"event_id": "u1", "twin": {"mode": {"expected": {"value": "a"}}}}),
            ("twin/get", {"event_id": "g1"}),
            ("state/update", {"event_id": "s1", "state": "online"}),
            ("twin/update", {"event_id": "u2", "twin": {"mode": {"expected": {"value": "b"}}}}),
            ("twin/get", {"event_id": "g2"}),
            ("state/update", {"event_id": "s2", "state": "offline"}),
        ]
        start = probe.mark()
        for suffix, payload in sent:
            await probe.client.publish(f"{PREFIX}{T1}/{suffix}", json.dumps(payload), qos=1)
        answers = {}
        for suffix, payload in sent:
            eid = payload["event_id"]

            def answer_to(m: Msg, s: str = suffix, e: str = eid) -> bool:
                return m.topic == f"{PREFIX}{T1}/{s}/result" and m.body["event_id"] == e

            msg = await probe.wait_for(
                answer_to,
                start,
            )
            answers[eid] = body(msg)
        assert "code" not in answers["u1"] and answers["u1"]["version"] == 1
        assert "code" not in answers["g1"] and "code" not in answers["s1"]
        for eid in ("u2", "g2", "s2"):
            refused = answers[eid]
            assert refused["code"] == 429, refused
            assert refused["version"] == 1
            assert refused["reason"].startswith(
                "device default/thermostat-1 is over its limit of 0.5 requests/s (burst 3); "
                "nothing was applied, retry in "
            ), refused
        # The refused update caused its 429 and nothing else.
        t1_traffic = [m.kind for m in probe.messages[start:] if m.topic.startswith(PREFIX + T1)]
        assert t1_traffic.count("twin/update/document") == 1
        assert service.core.rate_limited == 3
        # Other devices are not affected.
        other = await request(probe, T2, "twin/get", {})
        assert "code" not in body(other)
        # Tokens come back: the device is served again, and nothing refused was applied.
        async with asyncio.timeout(10):
            while True:
                got = body(await request(probe, T1, "twin/get", {}))
                if "code" not in got:
                    break
                assert got["code"] == 429
                await asyncio.sleep(0.25)
        assert got["version"] == 1 and got["state"] == "online"
        assert got["twin"]["mode"]["expected"]["value"] == "a"


async def test_unknown_devices_take_no_tokens(
    settings: MqttSettings, specs: list[DeviceSpec[Any, Any]], tmp_path: Path
) -> None:
    async with (
        serve(settings, tmp_path / "t.db", specs, rate_limit=0.5, rate_burst=2) as service,
        probe_all(settings) as probe,
    ):
        for _ in range(5):
            assert body(await request(probe, "default/ghost", "twin/get", {}))["code"] == 404
        assert "code" not in body(await request(probe, T1, "twin/get", {}))
        assert "code" not in body(await request(probe, T1, "twin/get", {}))
        assert body(await request(probe, T1, "twin/get", {}))["code"] == 429
        assert service.core.rate_limited == 1


MAPPED = """
devices:
  - name: paced
    protocol: mem
    connection: {device: paced}
    collectCycle: 100
    reportCycle: 100
    properties:
      - {name: temp, type: float, accessMode: ReadOnly, visitor: {address: t}}
      - {name: setpoint, type: float, minimum: 5, maximum: 30, visitor: {address: sp}}
"""


async def test_a_mapper_reporting_at_its_cycle_stays_within_the_default_rate(
    settings: MqttSettings, tmp_path: Path
) -> None:
    """A mapper at a 100 ms cycle, against the default rate with a burst too small to hide
    anything: none of its reports or state updates is refused."""
    twin_specs = load_text(MAPPED).devices
    mapper_specs = load_text(MAPPED, drivers={"mem": MemDriver}).devices
    bus = MemBus()
    bus.device("paced").values.update({"t": 20.0, "sp": 21.0})
    resources = Resources()
    resources.extras["mem.bus"] = bus
    options = MapperOptions(mqtt=settings, worker=WorkerOptions(backoff_initial=0.05))
    async with serve(
        settings, tmp_path / "t.db", twin_specs, rate_limit=DEFAULT_RATE_LIMIT, rate_burst=20
    ) as service:
        async with Mapper(mapper_specs, {"mem": MemDriver}, options, resources=resources):
            async with asyncio.timeout(15):
                while service.core.devices["default/paced"].seen.get("temp") is None:
                    await asyncio.sleep(0.05)
                first = service.core.devices["default/paced"].seen["temp"]
                # 20 report cycles later
                for step in range(1, 1_000_000):
                    if service.core.devices["default/paced"].seen["temp"] >= first + 2000:
                        break
                    bus.device("paced").values["t"] = 20.0 + step / 2
                    await asyncio.sleep(0.05)
        assert service.core.rate_limited == 0
        assert service.core.devices["default/paced"].version >= 10


# --------------------------------------------------------------------------- properties per device
async def test_a_device_with_more_properties_than_the_limit_is_a_config_error(
    settings: MqttSettings, specs: list[DeviceSpec[Any, Any]], tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as info:
        async with serve(settings, tmp_path / "t.db", specs, max_properties=6):
            pass
    assert info.value.message == (
        "device default/thermostat-1 has 7 properties, more than the limit of 6 (--max-properties)"
    )
    assert info.value.location is not None and "document 2 (Device thermostat-1)" in (
        info.value.location
    )


async def test_dynamic_twins_beyond_the_limit_get_413(
    settings: MqttSettings, specs: list[DeviceSpec[Any, Any]], tmp_path: Path
) -> None:
    async with (
        serve(
            settings, tmp_path / "t.db", specs, allow_dynamic_twins=True, max_properties=9
        ) as service,
        probe_all(settings) as probe,
    ):
        add = {"x1": {"actual": {"value": "1"}}, "x2": {"actual": {"value": "2"}}}
        assert body(await request(probe, T1, "twin/update", {"twin": add}))["version"] == 1
        one_more = {"twin": {"x3": {"actual": {"value": "3"}}, "mode": {"actual": {"value": "m"}}}}
        refused = body(await request(probe, T1, "twin/update", one_more))
        assert refused["code"] == 413
        assert refused["reason"] == (
            "device default/thermostat-1 would have 10 twins, more than the limit of 9 "
            "(the request creates 1); nothing was applied"
        )
        got = body(await request(probe, T1, "twin/get", {}))
        assert got["version"] == 1 and "x3" not in got["twin"]
        assert "actual" not in got["twin"]["mode"]
        documents = [m.body["version"] for m in probe.messages if m.kind == "twin/update/document"]
        assert documents == [1]  # the first update's; none for the refused one
        # Deleting one makes room for another in the same request; existing twins update.
        swap = {"twin": {"x1": None, "x3": {"actual": {"value": "3"}}}}
        assert body(await request(probe, T1, "twin/update", swap))["version"] == 2
        update = {"twin": {"x2": {"actual": {"value": "22"}}}}
        assert body(await request(probe, T1, "twin/update", update))["version"] == 3
        assert len(service.core.devices[T1].twins) == 9


# --------------------------------------------------------------------------- devices per service
async def test_more_devices_than_the_limit_is_a_config_error(
    settings: MqttSettings, specs: list[DeviceSpec[Any, Any]], tmp_path: Path
) -> None:
    with pytest.raises(
        ConfigError,
        match=r"^the device files define 3 devices, more than the "
        r"limit of 2 \(--max-devices\)$",
    ):
        async with serve(settings, tmp_path / "t.db", specs, max_devices=2):
            pass


async def test_a_reload_over_the_device_limit_keeps_the_old_devices(
    settings: MqttSettings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    files = tmp_path / "devices.yaml"
    files.write_text(devices_yaml(["a", "b"]))
    async with (
        serve(settings, tmp_path / "t.db", device_files=[files], max_devices=2) as service,
        probe_all(settings) as probe,
    ):
        start = probe.mark()
        files.write_text(devices_yaml(["a", "b", "c"]))
        with caplog.at_level(logging.ERROR, logger="twin.service"):
            service.request_reload()
            # Requests are handled after the reload, in order.
            assert "code" not in body(await request(probe, "default/a", "twin/get", {}))
        assert "the device files define 3 devices, more than the limit of 2" in caplog.text
        assert "event=reload-failed" in caplog.text
        assert body(await request(probe, "default/b", "twin/get", {}))["version"] == 0
        assert body(await request(probe, "default/c", "twin/get", {}))["code"] == 404
        assert not [m for m in probe.messages[start:] if m.topic.endswith("membership/updated")]
        # Within the limit, a reload goes through.
        files.write_text(devices_yaml(["a", "c"]))
        service.request_reload()
        assert "code" not in body(await request(probe, "default/c", "twin/get", {}))
        assert body(await request(probe, "default/b", "twin/get", {}))["code"] == 404


async def test_cli_refuses_too_many_devices_and_a_sighup_over_the_limit(
    broker: Mosquitto, settings: MqttSettings, tmp_path: Path
) -> None:
    files = tmp_path / "devices.yaml"
    files.write_text(devices_yaml(["a", "b", "c"]))
    serve_args = [
        sys.executable,
        "-m",
        "twin",
        "serve",
        "--broker",
        broker.url,
        "--db",
        str(tmp_path / "t.db"),
        "--devices",
        str(files),
        "--node",
        "edge-9",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = await asyncio.create_subprocess_exec(
        *serve_args, "--max-devices", "2", stderr=asyncio.subprocess.PIPE, env=env
    )
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert (
        err.decode()
        .strip()
        .endswith(
            "mapperkit: configuration error: the device files define 3 devices, more than the "
            "limit of 2 (--max-devices)"
        )
    )
    # Two devices run; a SIGHUP with three keeps the two.
    files.write_text(devices_yaml(["a", "b"]))
    proc = await asyncio.create_subprocess_exec(
        *serve_args, "--max-devices", "2", stderr=asyncio.subprocess.PIPE, env=env
    )
    assert proc.stderr is not None
    try:
        async with probe_all(settings) as probe:
            async with asyncio.timeout(30):
                while b"event=ready" not in await proc.stderr.readline():
                    pass
            files.write_text(devices_yaml(["a", "b", "c"]))
            proc.send_signal(signal.SIGHUP)
            async with asyncio.timeout(30):
                while b"event=reload-failed" not in (line := await proc.stderr.readline()):
                    assert line, "the service ended"
            assert b"more than the limit of 2 (--max-devices)" in line
            assert "code" not in body(await request(probe, "default/b", "twin/get", {}))
            assert body(await request(probe, "default/c", "twin/get", {}))["code"] == 404
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0


# --------------------------------------------------------------------------- query answers
async def query(probe: Probe, request_body: dict[str, Any]) -> Msg:
    eid = f"q-{uuid.uuid4().hex}"
    start = probe.mark()
    payload = {"event_id": eid, "reply_to": "app/badinput/answers", **request_body}
    await probe.client.publish("mapperkit/v1/twin/query", json.dumps(payload), qos=1)
    return await probe.wait_for(
        lambda m: m.topic == "app/badinput/answers" and m.body["event_id"] == eid, start
    )


async def test_query_pages_end_before_the_byte_limit_and_page_on(
    settings: MqttSettings, tmp_path: Path
) -> None:
    names = [f"dev-{i:02d}" for i in range(30)]
    specs = load_text(devices_yaml(names, props=4)).devices
    limit = 1500
    async with (
        serve(settings, tmp_path / "t.db", specs, max_result_bytes=limit),
        probe_all(settings) as probe,
    ):
        for order in (None, "id DESC"):
            seen: list[str] = []
            cursor = None
            pages = 0
            while True:
                msg = await query(probe, {"order_by": order, "cursor": cursor, "limit": 1000})
                assert len(msg.raw) <= limit
                page = body(msg)
                assert page["count"] == len(page["items"]) >= 1
                seen += [item["id"] for item in page["items"]]
                pages += 1
                cursor = page["cursor"]
                if cursor is None:
                    break
            expected = [f"default/{n}" for n in names]
            assert seen == (expected if order is None else expected[::-1])
            assert pages > 5  # the bytes, not the item limit, ended the pages
        # Small items still fill a page up to the item limit.
        page = body(await query(probe, {"select": ["id"], "limit": 10}))
        assert page["count"] == 10 and page["cursor"] is not None


async def test_answers_that_cannot_be_cut_get_413(settings: MqttSettings, tmp_path: Path) -> None:
    names = [f"dev-{i:02d}" for i in range(30)]
    specs = load_text(devices_yaml(names, props=3, prop_type="string")).devices
    async with (
        serve(settings, tmp_path / "t.db", specs, max_result_bytes=1000),
        probe_all(settings) as probe,
    ):
        grouped = body(await query(probe, {"group_by": "id"}))
        assert grouped["code"] == 413
        assert grouped["reason"].startswith("the answer of 30 groups is ")
        assert grouped["reason"].endswith(
            "bytes, more than the limit of 1000 bytes; group by a path with fewer values or "
            "narrow the where"
        )
        long = {f"p{i}": {"actual": {"value": "v" * 400}} for i in range(3)}
        assert (
            body(await request(probe, "default/dev-07", "twin/update", {"twin": long}))["version"]
            == 1
        )
        single = body(await query(probe, {"where": "id = 'default/dev-07'"}))
        assert single["code"] == 413
        assert single["reason"].startswith("the first item of the page is ")
        assert single["reason"].endswith(
            "bytes, more than the limit of 1000 bytes for an answer; select fewer paths"
        )
        narrowed = body(await query(probe, {"where": "id = 'default/dev-07'", "select": ["id"]}))
        assert narrowed["items"] == [{"id": "default/dev-07"}]


def test_a_failed_commit_answers_refused_requests_with_429_again(tmp_path: Path) -> None:
    """When the store fails, accepted requests get 500 and the refused ones their 429
    again, without taking more tokens."""
    store = Store.open(tmp_path / "t.db")
    try:
        core = TwinCore(store, Options(rate_limit=0.5, rate_burst=2), "edge-0")
        core.load(load_files([DEVICES]).devices)
        messages = [
            Incoming(
                f"{PREFIX}{T1}/twin/update",
                json.dumps(
                    {"event_id": f"u{i}", "twin": {"mode": {"actual": {"value": str(i)}}}}
                ).encode(),
            )
            for i in range(3)
        ]
        batch = core.prepare(messages)
        assert batch.limited == {2}
        out = core.finish(batch, StoreError("disk full"))
        codes = [json.loads(o.payload)["code"] for o in out]
        assert codes == [500, 500, 429]
        assert core.rate_limited == 1
        assert core.devices[T1].version == 0
    finally:
        store.close()
