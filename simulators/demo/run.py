"""The demo's orchestration: broker, simulators, twin, mapper, scenario and view."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import math
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mapper_sdk.codec import parse_text
from mapper_sdk.driver import Resources
from mapper_sdk.errors import ConfigError, MapperError, TwinRejected
from mapper_sdk.model import PropertyType, load_objects
from mapper_sdk.mqtt import MqttSettings
from mapper_sdk.registry import Registry
from mapper_sdk.runtime import Mapper, MapperOptions
from mapper_sdk.testing.mosquitto import Mosquitto, MosquittoMissing, free_port

from .view import DemoView, Event

log = logging.getLogger("simulators.demo")

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
OPCUA_PROFILE = ROOT / "simulators" / "opcua" / "profiles" / "thermostat.yaml"
EXAMPLE_FILES = (
    "modbus/energy-meter.yaml",
    "modbus/thermostat.yaml",
    "opcua/thermostat.yaml",
    "ble/env-sensor.yaml",
    "ble/led-actuator.yaml",
)


@dataclass(frozen=True, slots=True)
class Write:
    """A desired value the scenario sets."""

    device: str
    prop: str
    value: Any
    type: PropertyType


WRITES = (
    Write("default/thermostat-living-room", "setpoint", 23.5, PropertyType.FLOAT),
    Write("default/opcua-thermostat-hall", "setpoint", 22.5, PropertyType.DOUBLE),
    Write("default/led-actuator-1", "brightness", 35, PropertyType.INT),
)
INVALID = Write("default/thermostat-living-room", "setpoint", 99, PropertyType.FLOAT)


@dataclass(slots=True)
class DemoOptions:
    duration: float | None = None
    check: bool = False
    broker: str = "auto"
    view: bool = True
    scenario_after: float = 3.0


@dataclass(slots=True)
class Outcome:
    """What ``--check`` verifies."""

    online: dict[str, bool] = field(default_factory=dict)
    converged: dict[Write, bool] = field(default_factory=dict)
    rejected: str | None = None

    @property
    def ok(self) -> bool:
        return (
            bool(self.online)
            and all(self.online.values())
            and len(self.converged) == len(WRITES)
            and all(self.converged.values())
            and self.rejected is not None
        )


# --------------------------------------------------------------------------- broker
@contextlib.contextmanager
def _broker(choice: str) -> Iterator[tuple[str, str]]:
    """Yield ``(url, description)`` of the broker the demo uses."""
    if "://" in choice:
        yield choice, f"the broker at {choice}"
        return
    if choice in ("auto", "mosquitto"):
        try:
            mosquitto = Mosquitto()
        except MosquittoMissing:
            if choice == "mosquitto":
                raise ConfigError(
                    "--broker mosquitto: the mosquitto binary is not installed"
                ) from None
        else:
            with mosquitto:
                yield mosquitto.url, f"Mosquitto ({mosquitto.binary}) on port {mosquitto.port}"
            return
    elif choice != "embedded":
        raise ConfigError(f"--broker must be auto, mosquitto, embedded or a URL, got {choice!r}")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulators.demo.embedded_broker", "--port", str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise MapperError("the embedded broker did not start (is amqtt installed?)")
        yield f"mqtt://127.0.0.1:{port}", f"embedded broker (amqtt, no Mosquitto) on port {port}"
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()


# --------------------------------------------------------------------------- devices
def example_documents(ports: dict[str, Any]) -> list[dict[str, Any]]:
    """The example YAML, with the simulators' addresses put in."""
    if not EXAMPLES.is_dir():
        raise ConfigError(
            f"the demo reads its devices from {EXAMPLES}; run it from a Mapperkit source checkout"
        )
    docs: list[dict[str, Any]] = []
    for name in EXAMPLE_FILES:
        for doc in yaml.safe_load_all((EXAMPLES / name).read_text()):
            if not isinstance(doc, dict):
                continue
            doc = copy.deepcopy(doc)
            if doc.get("kind") == "Device":
                config = doc["spec"]["protocol"].setdefault("configData", {})
                device = doc["metadata"]["name"]
                if device in ports:
                    config.update(ports[device])
            docs.append(doc)
    return docs


# --------------------------------------------------------------------------- run
async def run_demo(options: DemoOptions) -> int:
    from simulators.ble.profile import load_profile as load_ble_profile
    from simulators.ble.radio import VirtualRadio
    from simulators.modbus import ModbusSimulator
    from simulators.opcua.profile import load_profile as load_opcua_profile
    from simulators.opcua.server import OpcUaSimulator
    from twin.client import TwinClient
    from twin.service import ServiceConfig, TwinService

    # Protocol libraries log their own complaints when connections close under them
    # at shutdown; the demo shows its own events instead.
    for noisy in ("pymodbus", "pymodbus.logging", "bumble", "asyncua"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    view = DemoView(live=options.view)
    outcome = Outcome()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    workdir = Path(tempfile.mkdtemp(prefix="mapperkit-demo-"))
    try:
        with _broker(options.broker) as (url, description):
            view.note(f"broker: {description}")
            settings = MqttSettings.from_url(url)
            async with contextlib.AsyncExitStack() as stack:
                meter = ModbusSimulator("energy_meter")
                await meter.start()
                stack.push_async_callback(meter.stop)
                thermostat = ModbusSimulator("thermostat", framing="rtu")
                await thermostat.start()
                stack.push_async_callback(thermostat.stop)
                view.note(
                    f"modbus simulators: energy meter on :{meter.port} (TCP), thermostat on "
                    f":{thermostat.port} (RTU over TCP)"
                )
                opcua = OpcUaSimulator(load_opcua_profile(OPCUA_PROFILE), port=0)
                await stack.enter_async_context(opcua)
                view.note(f"opcua simulator: {opcua.url}")
                radio = await stack.enter_async_context(VirtualRadio())
                peripherals = await radio.add_profile(load_ble_profile("demo"))
                view.note(
                    "ble simulator: "
                    + ", ".join(f"{p.name} ({p.address})" for p in peripherals)
                    + " on a virtual radio"
                )
                docs = example_documents(
                    {
                        "energy-meter-1": {"port": meter.port},
                        "thermostat-living-room": {"port": thermostat.port},
                        "opcua-thermostat-hall": {"url": opcua.url},
                    }
                )
                registry = Registry()
                devices = load_objects(docs, "examples", registry, missing_driver="error").devices
                twin_devices = load_objects(docs, "examples").devices
                service = TwinService(
                    ServiceConfig(mqtt=settings, db_path=workdir / "twin.db", node="edge-node-1"),
                    devices=twin_devices,
                )
                await stack.enter_async_context(service)
                async with asyncio.timeout(30):
                    await service.wait_ready()  # subscribed before the first request
                resources = Resources()
                radio.install(resources)
                mapper = Mapper(
                    devices, registry, MapperOptions(mqtt=settings), resources=resources
                )
                client = await stack.enter_async_context(TwinClient(settings))
                async with asyncio.TaskGroup() as tg:
                    serving = tg.create_task(service.serve_forever(), name="demo.twin")
                    await stack.enter_async_context(mapper)
                    view.commands(url, [d.id for d in devices])
                    driver = tg.create_task(
                        _drive(client, [d.id for d in devices], view, outcome, options, stop),
                        name="demo.scenario",
                    )
                    await driver
                    service.stop()
                    await serving
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
    view.summary(outcome, check=options.check)
    if options.check:
        return 0 if outcome.ok else 1
    return 0


def _converged(state: Any, write: Write) -> bool:
    reported = state.twins.get(write.prop, {}).get("actual", {}) if state else {}
    text = reported.get("value") if isinstance(reported, dict) else None
    if not isinstance(text, str):
        return False
    try:
        value = parse_text(text, write.type)
    except ValueError:
        return False
    if isinstance(value, float):
        return math.isclose(value, float(write.value), rel_tol=1e-6)
    return bool(value == write.value)


async def _drive(
    client: Any,
    devices: list[str],
    view: DemoView,
    outcome: Outcome,
    options: DemoOptions,
    stop: asyncio.Event,
) -> None:
    started = time.monotonic()
    deadline = started + options.duration if options.duration else math.inf
    states: dict[str, Any] = {}
    written = False
    async with view.running():
        while not stop.is_set() and time.monotonic() < deadline:
            results = await asyncio.gather(
                *(client.get(d) for d in devices), return_exceptions=True
            )
            for device, result in zip(devices, results, strict=True):
                if isinstance(result, BaseException):
                    continue
                states[device] = result
                outcome.online[device] = result.state in ("online", "ok")
            elapsed = time.monotonic() - started
            all_online = bool(outcome.online) and all(outcome.online.values())
            if not written and (
                (elapsed >= options.scenario_after and all_online) or elapsed >= 15.0
            ):
                written = True
                await _write_scenario(client, view, outcome)
            if written:
                for write in WRITES:
                    if not outcome.converged.get(write) and _converged(
                        states.get(write.device), write
                    ):
                        outcome.converged[write] = True
                        view.event(
                            Event(
                                "converged",
                                f"{write.device} {write.prop} reported {write.value} "
                                f"({time.monotonic() - started:.1f} s)",
                            )
                        )
            view.update(states)
            if options.check and outcome.ok:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)


async def _write_scenario(client: Any, view: DemoView, outcome: Outcome) -> None:
    for write in WRITES:
        outcome.converged[write] = False
        try:
            result = await client.set_desired(write.device, {write.prop: write.value})
        except (TwinRejected, MapperError, TimeoutError) as exc:
            view.event(Event("error", f"set {write.device} {write.prop}={write.value}: {exc}"))
            continue
        view.event(
            Event(
                "set",
                f"{write.device} {write.prop}={write.value} accepted at version {result.version}",
            )
        )
    try:
        await client.set_desired(INVALID.device, {INVALID.prop: INVALID.value})
    except TwinRejected as exc:
        outcome.rejected = f"{exc.code} {exc.reason}"
        view.event(
            Event(
                "rejected",
                f"{INVALID.device} {INVALID.prop}={INVALID.value}: {exc.code} {exc.reason}",
            )
        )
    except (MapperError, TimeoutError) as exc:
        view.event(Event("error", f"invalid value: {exc}"))
    else:
        view.event(Event("error", f"{INVALID.prop}={INVALID.value} was accepted"))
