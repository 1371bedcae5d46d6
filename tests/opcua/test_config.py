"""The OPC-UA configData: KubeEdge's keys, validated at load time with precise errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from mapper_sdk.errors import ConfigError
from mapper_sdk.model import load_files, load_text
from mapper_sdk.registry import Registry
from mappers.opcua import OpcUaDriver, OpcUaProtocolConfig, OpcUaVisitorConfig

EXAMPLES = Path(__file__).parents[2] / "examples" / "opcua"
DRIVERS = {"opcua": OpcUaDriver}


def test_entry_point_finds_the_driver() -> None:
    assert Registry()["opcua"] is OpcUaDriver


def test_examples_load() -> None:
    inventory = load_files(
        [EXAMPLES / "thermostat.yaml", EXAMPLES / "thermostat-secure.yaml"],
        drivers=DRIVERS,
        missing_driver="error",
    )
    hall = inventory.device("opcua-thermostat-hall")
    assert hall.protocol_config.url == "opc.tcp://127.0.0.1:4840/mapperkit/thermostat"
    assert hall.protocol_config.timeout == 5
    assert hall.property("setpoint").visitor.nodeID == "ns=2;s=Thermostat.setpoint"
    assert hall.property("firmware").visitor.nodeID is None
    office = inventory.device("opcua-thermostat-office")
    assert office.protocol_config.mode == "SignAndEncrypt"
    assert office.protocol_config.user_identity == "UserName"


def test_url_gets_the_default_port() -> None:
    cfg = OpcUaProtocolConfig(url="opc.tcp://plc.local/ua/server")
    assert cfg.url == "opc.tcp://plc.local:4840/ua/server"
    assert OpcUaProtocolConfig(url="opc.tcp://[::1]").url == "opc.tcp://[::1]:4840"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"url": "http://host:4840"}, "opc.tcp://"),
        ({"url": "opc.tcp://:4840"}, "names no host"),
        ({"url": "opc.tcp://h:4840", "securityPolicy": "Basic512"}, "unknown securityPolicy"),
        (
            {"url": "opc.tcp://h:4840", "securityPolicy": "Basic256Sha256"},
            "needs the client's certificate and privateKey",
        ),
        (
            {"url": "opc.tcp://h:4840", "securityMode": "Sign"},
            "needs a securityPolicy other than None",
        ),
        (
            {
                "url": "opc.tcp://h:4840",
                "securityPolicy": "Basic256Sha256",
                "securityMode": "None",
                "certificate": "c.pem",
                "privateKey": "k.pem",
            },
            "needs securityMode Sign or SignAndEncrypt",
        ),
        ({"url": "opc.tcp://h:4840", "certificate": "c.pem"}, "go together"),
        ({"url": "opc.tcp://h:4840", "password": "/run/pw"}, "without userName"),
        ({"url": "opc.tcp://h:4840", "identity": "Certificate"}, "needs certificate"),
        ({"url": "opc.tcp://h:4840", "timeout": 0}, "greater than 0"),
        ({"url": "opc.tcp://h:4840", "endpoint": "x"}, "Extra inputs"),
    ],
)
def test_protocol_config_errors(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        OpcUaProtocolConfig.model_validate(data)


def test_security_names_are_forgiving() -> None:
    cfg = OpcUaProtocolConfig.model_validate(
        {
            "url": "opc.tcp://h:4840",
            "securityPolicy": "http://opcfoundation.org/UA/SecurityPolicy#Aes128_Sha256_RsaOaep",
            "securityMode": "signandencrypt",
            "certificate": "c.pem",
            "privateKey": "k.pem",
            "userName": "",
            "password": "",
            "remoteCertificate": "",
        }
    )
    assert cfg.securityPolicy == "Aes128Sha256RsaOaep"
    assert cfg.securityMode == "SignAndEncrypt"
    assert cfg.userName is None and cfg.remoteCertificate is None
    assert cfg.user_identity == "Anonymous"
    # A policy without a mode means SignAndEncrypt; an empty policy means None.
    signed = OpcUaProtocolConfig.model_validate(
        {
            "url": "opc.tcp://h:1",
            "securityPolicy": "basic256sha256",
            "certificate": "c",
            "privateKey": "k",
        }
    )
    assert signed.mode == "SignAndEncrypt"
    assert (
        OpcUaProtocolConfig.model_validate({"url": "opc.tcp://h:1", "securityPolicy": ""}).mode
        == "None"
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "give nodeID"),
        ({"nodeID": "Temperature"}, "is not a NodeId"),
        ({"nodeID": "ns=2;q=1"}, "is not a NodeId"),
        ({"browseName": "2:A/<bad"}, "is not a browse path"),
        ({"nodeID": "ns=2;i=5", "mode": "push"}, "expected poll or subscribe"),
        ({"nodeID": "ns=2;i=5", "samplingInterval": -1}, "greater than or equal to 0"),
        ({"nodeID": "ns=2;i=5", "register": 4}, "Extra inputs"),
    ],
)
def test_visitor_errors(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        OpcUaVisitorConfig.model_validate(data)


def test_visitor_accepts_kubeedge_forms() -> None:
    visitor = OpcUaVisitorConfig.model_validate(
        {
            "nodeID": " ns=3;g=72962B91-FA75-4AE6-8D28-B404DC7DAF63 ",
            "mode": "Subscribe",
            "dataType": "float",
        }
    )
    assert visitor.nodeID == "ns=3;g=72962B91-FA75-4AE6-8D28-B404DC7DAF63"
    assert visitor.mode == "subscribe"
    assert OpcUaVisitorConfig.model_validate({"nodeID": "i=2258"}).nodeID == "i=2258"
    assert OpcUaVisitorConfig.model_validate({"browseName": "2:Plant/2:Line1"}).nodeID is None


def _native(prop: dict[str, Any], connection: dict[str, Any] | None = None) -> str:
    return json.dumps(
        {
            "devices": [
                {
                    "name": "d",
                    "protocol": "opcua",
                    "connection": connection or {"url": "opc.tcp://h:4840"},
                    "properties": [prop],
                }
            ]
        }
    )


@pytest.mark.parametrize(
    ("prop", "location", "message"),
    [
        (
            {"name": "mode", "type": "string", "visitor": {"nodeID": "ns=2;i=1", "deadband": 1}},
            "visitors.configData.deadband",
            "applies to numeric properties",
        ),
        (
            {
                "name": "t",
                "type": "double",
                "visitor": {"nodeID": "ns=2;i=1", "mode": "poll", "samplingInterval": 100},
            },
            "visitors.configData.samplingInterval",
            "applies to subscriptions",
        ),
    ],
)
def test_device_rules_name_the_field(prop: dict[str, Any], location: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_text(_native(prop), drivers=DRIVERS)
    assert location in str(info.value)


def test_load_errors_name_the_field() -> None:
    text = _native({"name": "t", "type": "double", "visitor": {"nodeID": "nonsense"}})
    with pytest.raises(ConfigError, match=r"properties\[0\]\.visitor\.nodeID"):
        load_text(text, drivers=DRIVERS)
    text = _native(
        {"name": "t", "type": "double", "visitor": {"nodeID": "ns=2;i=1"}},
        {"url": "opc.tcp://h:4840", "securityPolicy": "Basic256Sha256"},
    )
    with pytest.raises(ConfigError, match=r"connection.*certificate and privateKey"):
        load_text(text, drivers=DRIVERS)
