"""Every data layout round-trips between the driver and the simulator (hypothesis).

The simulator encodes with :mod:`struct` on its own (``simulators.modbus.profile``),
so each direction checks the driver's codec against an independent one:
simulator value -> registers -> driver read, and driver write -> registers ->
simulator value.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mapper_sdk.driver import Quality, Resources
from mappers.modbus import ModbusDriver
from simulators.modbus import ModbusSimulator

from .conftest import make_device, prop, tcp

NUMBERS = ("int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64")
ORDERS = list(itertools.product(("big", "little"), ("big", "little")))  # byte, word
STRING_REGS = 5
MODEL_TYPE = {"float32": "float", "float64": "double", "string": "string", "bytes": "bytes"}


def _layouts() -> list[tuple[str, str, str]]:
    return [(t, b, w) for t in (*NUMBERS, "string", "bytes") for b, w in ORDERS]


LAYOUTS = _layouts()


def _name(ptype: str, byte: str, word: str) -> str:
    return f"{ptype}_{byte[0]}{word[0]}"


def _profile() -> dict[str, Any]:
    points = []
    address = 0
    for ptype, byte, word in LAYOUTS:
        length = STRING_REGS if ptype in ("string", "bytes") else None
        points.append(
            {
                "name": _name(ptype, byte, word),
                "table": "holding",
                "address": address,
                "type": ptype,
                "length": length,
                "byteOrder": byte,
                "wordOrder": word,
                "behaviour": "setpoint",
            }
        )
        address += length or struct.calcsize(ptype_struct(ptype)) // 2
    points.append({"name": "scaled", "table": "holding", "address": 1000, "behaviour": "setpoint"})
    points.append(
        {
            "name": "bits",
            "table": "holding",
            "address": 1001,
            "behaviour": "setpoint",
            "byteOrder": "little",
        }
    )
    return {"name": "layouts", "units": [{"id": 1, "points": points}]}


def ptype_struct(ptype: str) -> str:
    return {
        "int16": "h",
        "uint16": "H",
        "int32": "i",
        "uint32": "I",
        "int64": "q",
        "uint64": "Q",
        "float32": "f",
        "float64": "d",
    }[ptype]


def _props(sim: ModbusSimulator) -> list[dict[str, Any]]:
    props = []
    for ptype, byte, word in LAYOUTS:
        point = sim.point(1, _name(ptype, byte, word))
        visitor: dict[str, Any] = {
            "register": "HoldingRegister",
            "offset": point.address,
            "rawType": ptype,
            "isSwap": byte == "little",
            "isRegisterSwap": word == "little",
        }
        if point.length:
            visitor["limit"] = point.length
        props.append(prop(_name(ptype, byte, word), MODEL_TYPE.get(ptype, "int"), **visitor))
    props.append(
        prop(
            "scaled", "float", register="HoldingRegister", offset=1000, scale=0.25, valueOffset=-40
        )
    )
    props += [
        prop(f"bit{i}", "boolean", register="HoldingRegister", offset=1001, bit=i, isSwap=True)
        for i in range(16)
    ]
    return props


@pytest.fixture(scope="module")
async def layout_sim() -> AsyncIterator[ModbusSimulator]:
    async with ModbusSimulator(_profile()) as sim:
        yield sim


@pytest.fixture(scope="module")
async def layout_driver(layout_sim: ModbusSimulator) -> AsyncIterator[ModbusDriver]:
    drv = ModbusDriver(make_device(tcp(layout_sim), _props(layout_sim)), Resources())
    await drv.connect()
    yield drv
    await drv.close()


def _value(ptype: str) -> st.SearchStrategy[Any]:
    if ptype == "float32":
        return st.floats(width=32, allow_nan=False, allow_infinity=False)
    if ptype == "float64":
        return st.floats(allow_nan=False, allow_infinity=False)
    if ptype == "string":
        # UTF-8 without NULs (trailing NULs are padding), at most 2 bytes per register.
        return st.text(st.characters(min_codepoint=1, max_codepoint=0x7FF), max_size=5).filter(
            lambda s: len(s.encode("utf-8")) <= 2 * STRING_REGS
        )
    if ptype == "bytes":
        return st.binary(min_size=2 * STRING_REGS, max_size=2 * STRING_REGS)
    bits = struct.calcsize(ptype_struct(ptype)) * 8
    if ptype.startswith("u"):
        return st.integers(0, 2**bits - 1)
    return st.integers(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)


def _same(ptype: str, got: Any, want: Any) -> bool:
    if ptype in ("float32", "float64"):
        # Bit for bit: -0.0 stays -0.0.
        fmt = ">" + ptype_struct(ptype)
        return struct.pack(fmt, got) == struct.pack(fmt, want)
    return bool(got == want)


layouts_and_values = st.sampled_from(LAYOUTS).flatmap(
    lambda layout: st.tuples(st.just(layout), _value(layout[0]))
)
SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@SETTINGS
@given(case=layouts_and_values)
async def test_device_value_reads_as_written_by_the_device(
    layout_sim: ModbusSimulator, layout_driver: ModbusDriver, case: tuple[Any, Any]
) -> None:
    (ptype, byte, word), value = case
    name = _name(ptype, byte, word)
    layout_sim.set(1, name, value)
    reading = (await layout_driver.read([layout_driver.device.property(name)]))[name]
    assert reading.quality is Quality.GOOD, reading
    assert _same(ptype, reading.value, value), (name, reading.value, value)


@SETTINGS
@given(case=layouts_and_values)
async def test_driver_write_lands_as_the_device_reads_it(
    layout_sim: ModbusSimulator, layout_driver: ModbusDriver, case: tuple[Any, Any]
) -> None:
    (ptype, byte, word), value = case
    name = _name(ptype, byte, word)
    echoed = await layout_driver.write(layout_driver.device.property(name), value)
    assert echoed is not None and echoed.quality is Quality.GOOD
    assert _same(ptype, layout_sim.get(1, name), value), (name, layout_sim.get(1, name), value)
    assert _same(ptype, echoed.value, value)


@SETTINGS
@given(raw=st.integers(0, 65535))
async def test_scale_and_value_offset(
    layout_sim: ModbusSimulator, layout_driver: ModbusDriver, raw: int
) -> None:
    prop_ = layout_driver.device.property("scaled")
    layout_sim.set(1, "scaled", raw)
    reading = (await layout_driver.read([prop_]))["scaled"]
    assert reading.value == raw * 0.25 - 40
    await layout_driver.write(prop_, raw * 0.25 - 40)
    assert layout_sim.get(1, "scaled") == raw


@SETTINGS
@given(word=st.integers(0, 65535), bit=st.integers(0, 15), on=st.booleans())
async def test_bits_of_a_byte_swapped_register(
    layout_sim: ModbusSimulator, layout_driver: ModbusDriver, word: int, bit: int, on: bool
) -> None:
    # The simulator stores `word` low byte first; bit N is bit N of the value.
    layout_sim.set(1, "bits", word)
    props = [layout_driver.device.property(f"bit{i}") for i in range(16)]
    readings = await layout_driver.read(props)
    assert [readings[f"bit{i}"].value for i in range(16)] == [
        bool(word >> i & 1) for i in range(16)
    ]
    await layout_driver.write(props[bit], on)
    expected = word | (1 << bit) if on else word & ~(1 << bit)
    assert layout_sim.get(1, "bits") == expected


async def test_whole_layout_table_in_one_batch(
    layout_sim: ModbusSimulator, layout_driver: ModbusDriver
) -> None:
    for ptype, byte, word in LAYOUTS:
        value = {"string": "héllo", "bytes": b"0123456789"}.get(ptype, 100)
        layout_sim.set(1, _name(ptype, byte, word), value)
    layout_sim.reset_counts()
    readings = await layout_driver.read(layout_driver.device.properties)
    # 40 layouts in registers 0..119, then the scaled and bit registers at 1000-1001.
    assert layout_sim.request_count() == 2
    for ptype, byte, word in LAYOUTS:
        want = {"string": "héllo", "bytes": b"0123456789"}.get(ptype, 100)
        assert readings[_name(ptype, byte, word)].value == want
