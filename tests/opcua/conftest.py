"""One OPC-UA simulator and one test PKI for the whole test session.

The simulator serves the thermostat profile plus one variable of every
supported type, on unsecured and secured endpoints (Basic256Sha256 and
Aes256Sha256RsaPss, Sign and SignAndEncrypt), with anonymous, username/password
and certificate identities; client certificates must be signed by the test CA.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from mapper_sdk.model import DeviceSpec, load_text
from mappers.opcua import OpcUaDriver
from simulators.opcua import (
    BUILTIN_PROFILES,
    OpcUaSimulator,
    Profile,
    TestPki,
    generate_test_pki,
    load_profile,
)

USER = "operator"
PASSWORD = "s3cret-pass"

# name: (simulator type, initial value, model type, writable)
EXTRA_VARIABLES: dict[str, tuple[str, Any, str, bool]] = {
    "vBool": ("Boolean", True, "boolean", True),
    "vSByte": ("SByte", -7, "int", True),
    "vByte": ("Byte", 200, "int", True),
    "vInt16": ("Int16", -300, "int", True),
    "vUInt16": ("UInt16", 60000, "int", True),
    "vInt32": ("Int32", -70000, "int", True),
    "vUInt32": ("UInt32", 4000000000, "int", True),
    "vInt64": ("Int64", -(2**40), "int", True),
    "vUInt64": ("UInt64", 2**63 + 5, "int", True),
    "vFloat": ("Float", 1.5, "float", True),
    "vDouble": ("Double", 2.25, "double", True),
    "vString": ("String", "hello", "string", True),
    "vText": ("LocalizedText", "bonjour", "string", True),
    "vBytes": ("ByteString", {"base64": "AAEC/w=="}, "bytes", True),
    "vTime": ("DateTime", "2024-05-01T12:00:00+00:00", "int", True),
    "vTimeText": ("DateTime", "2024-05-01T12:00:00.250+00:00", "string", False),
}


def _profile(pki: TestPki) -> Profile:
    base = load_profile(BUILTIN_PROFILES / "thermostat.yaml")
    data = base.model_dump(mode="python")
    data["variables"] = (
        list(data["variables"])
        + [
            {"name": name, "type": vtype, "value": value, "writable": writable}
            for name, (vtype, value, _, writable) in EXTRA_VARIABLES.items()
        ]
        + [
            {"name": "vDoubles", "type": "Double", "array": True, "value": [1.0, 2.5, -3.0]},
            {"name": "vByteArray", "type": "Byte", "array": True, "value": [0, 1, 255]},
            {"name": "fast", "type": "Int32", "behaviour": "counter", "interval": 50},
        ]
    )
    data["security"] = {
        "policies": [
            "None",
            "Basic256Sha256_Sign",
            "Basic256Sha256_SignAndEncrypt",
            "Aes256Sha256RsaPss_SignAndEncrypt",
        ],
        "certificate": pki.server_cert,
        "privateKey": pki.server_key,
        "trustedCA": pki.ca,
        "anonymous": True,
        "users": {USER: PASSWORD},
    }
    return Profile.model_validate(data)


@pytest.fixture(scope="session")
def opcua_pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    """A throwaway CA, server, client and untrusted certificates (generated once)."""
    return generate_test_pki(tmp_path_factory.mktemp("opcua-pki"))


@pytest.fixture(scope="session")
def password_file(opcua_pki: TestPki) -> Path:
    path = opcua_pki.directory / "password"
    path.write_text(PASSWORD + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
async def opcua_sim(opcua_pki: TestPki) -> AsyncIterator[OpcUaSimulator]:
    """The session's simulator. Tests that inject faults undo them (see ``sim``)."""
    async with OpcUaSimulator(_profile(opcua_pki)) as sim:
        yield sim


@pytest.fixture
async def sim(opcua_sim: OpcUaSimulator) -> AsyncIterator[OpcUaSimulator]:
    """The shared simulator, with every fault cleared after the test."""
    yield opcua_sim
    await opcua_sim.clear_faults()


MODEL_TYPES = {
    "temperature": "double",
    "humidity": "float",
    "setpoint": "double",
    "heating": "boolean",
    "mode": "string",
    "runtimeHours": "int",
    "alarmCount": "int",
    "firmware": "string",
    "lastService": "int",
    "serial": "bytes",
    "fast": "int",
    "vDoubles": "string",
    "vByteArray": "bytes",
    **{name: spec[2] for name, spec in EXTRA_VARIABLES.items()},
}


def make_device(
    sim: OpcUaSimulator,
    names: list[str] | None = None,
    *,
    connection: dict[str, Any] | None = None,
    visitors: dict[str, dict[str, Any]] | None = None,
    extra: list[dict[str, Any]] | None = None,
    name: str = "thermo",
    collect_cycle: int = 200,
) -> DeviceSpec[Any, Any]:
    """A device (native form, validated by the driver) for variables of the simulator."""
    props = []
    for prop in names if names is not None else list(MODEL_TYPES):
        visitor = {"nodeID": sim.node_id(prop)}
        visitor.update((visitors or {}).get(prop, {}))
        props.append(
            {
                "name": prop,
                "type": MODEL_TYPES[prop],
                "collectCycle": collect_cycle,
                "visitor": visitor,
            }
        )
    props += extra or []
    doc = {
        "devices": [
            {
                "name": name,
                "protocol": "opcua",
                "connection": {"url": sim.url, "timeout": 5, **(connection or {})},
                "properties": props,
            }
        ]
    }
    return load_text(json.dumps(doc), drivers={"opcua": OpcUaDriver}).devices[0]
