"""Secure channels, identities and certificate checks against the simulator."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mapper_sdk.driver import Quality
from mapper_sdk.errors import ConfigError
from mappers.opcua import OpcUaDriver
from simulators.opcua import OpcUaSimulator, TestPki

from .conftest import PASSWORD, USER, make_device

pytestmark = pytest.mark.timeout(60)


def secure(
    pki: TestPki, policy: str = "Basic256Sha256", mode: str = "SignAndEncrypt", **extra: Any
) -> dict[str, Any]:
    return {
        "securityPolicy": policy,
        "securityMode": mode,
        "certificate": str(pki.client_cert),
        "privateKey": str(pki.client_key),
        **extra,
    }


async def roundtrip(sim: OpcUaSimulator, connection: dict[str, Any]) -> OpcUaDriver:
    """Connect, read and write the setpoint, close; return the (closed) driver."""
    device = make_device(sim, ["setpoint", "vString"], connection=connection)
    driver = OpcUaDriver(device)
    await driver.connect()
    try:
        readings = await driver.read(device.properties)
        assert all(r.quality is Quality.GOOD for r in readings.values()), readings
        echoed = await driver.write(device.property("setpoint"), 22.25)
        assert echoed is not None and echoed.value == 22.25
        await driver.write(device.property("setpoint"), 21.5)
    finally:
        await driver.close()
    return driver


async def test_basic256sha256_sign_and_encrypt_with_user_and_password(
    sim: OpcUaSimulator, opcua_pki: TestPki, password_file: Path
) -> None:
    sim.stats.reset()
    await roundtrip(
        sim,
        secure(
            opcua_pki,
            remoteCertificate=str(opcua_pki.server_cert),
            userName=USER,
            password=str(password_file),
        ),
    )
    assert sim.stats.logins == [f"user:{USER}"]


async def test_wrong_password_is_a_clear_config_error(
    sim: OpcUaSimulator, opcua_pki: TestPki, tmp_path: Path
) -> None:
    wrong = tmp_path / "password"
    wrong.write_text("not-the-password\n", encoding="utf-8")
    device = make_device(
        sim, ["setpoint"], connection=secure(opcua_pki, userName=USER, password=str(wrong))
    )
    driver = OpcUaDriver(device)
    with pytest.raises(ConfigError) as info:
        await driver.connect()
    message = str(info.value)
    assert "BadUserAccessDenied" in message
    assert USER in message
    assert "password" in message
    await driver.close()


async def test_user_over_an_unsecured_channel(sim: OpcUaSimulator, password_file: Path) -> None:
    # The password is still encrypted with the server's certificate (its token policy).
    sim.stats.reset()
    await roundtrip(sim, {"userName": USER, "password": str(password_file)})
    assert sim.stats.logins == [f"user:{USER}"]


async def test_certificate_identity_with_ca_as_remote_certificate(
    sim: OpcUaSimulator, opcua_pki: TestPki
) -> None:
    sim.stats.reset()
    await roundtrip(
        sim,
        secure(
            opcua_pki,
            "Aes256Sha256RsaPss",
            remoteCertificate=str(opcua_pki.ca),
            identity="Certificate",
        ),
    )
    assert sim.stats.logins == ["certificate:Mapperkit OPC-UA client"]


async def test_sign_only_anonymous(sim: OpcUaSimulator, opcua_pki: TestPki) -> None:
    sim.stats.reset()
    await roundtrip(sim, secure(opcua_pki, mode="Sign"))
    assert sim.stats.logins == ["anonymous"]


async def test_untrusted_client_certificate_is_refused(
    sim: OpcUaSimulator, opcua_pki: TestPki
) -> None:
    connection = secure(opcua_pki)
    connection.update(certificate=str(opcua_pki.rogue_cert), privateKey=str(opcua_pki.rogue_key))
    driver = OpcUaDriver(make_device(sim, ["setpoint"], connection=connection))
    with pytest.raises(ConfigError, match="BadCertificateUntrusted"):
        await driver.connect()
    await driver.close()


async def test_wrong_pinned_server_certificate(sim: OpcUaSimulator, opcua_pki: TestPki) -> None:
    connection = secure(opcua_pki, remoteCertificate=str(opcua_pki.client_cert))
    driver = OpcUaDriver(make_device(sim, ["setpoint"], connection=connection))
    with pytest.raises(ConfigError, match="is not the pinned one"):
        await driver.connect()
    # A CA that did not sign the server's certificate is refused too.
    connection = secure(opcua_pki, remoteCertificate=str(opcua_pki.rogue_cert))
    driver = OpcUaDriver(make_device(sim, ["setpoint"], connection=connection))
    with pytest.raises(ConfigError, match="remoteCertificate"):
        await driver.connect()


async def test_policy_the_server_does_not_offer(sim: OpcUaSimulator, opcua_pki: TestPki) -> None:
    driver = OpcUaDriver(
        make_device(sim, ["setpoint"], connection=secure(opcua_pki, "Aes128Sha256RsaOaep"))
    )
    with pytest.raises(ConfigError) as info:
        await driver.connect()
    assert "no endpoint with Aes128Sha256RsaOaep/SignAndEncrypt" in str(info.value)
    assert "Basic256Sha256/SignAndEncrypt" in str(info.value)


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("password", "password: file"),
        ("certificate", "certificate: file"),
        ("privateKey", "privateKey: file"),
        ("remoteCertificate", "remoteCertificate: file"),
    ],
)
async def test_missing_files_are_config_errors(
    sim: OpcUaSimulator, opcua_pki: TestPki, tmp_path: Path, key: str, message: str
) -> None:
    connection = secure(opcua_pki, userName=USER, password=str(tmp_path / "pw"))
    (tmp_path / "pw").write_text(PASSWORD)
    connection[key] = str(tmp_path / "missing.pem")
    driver = OpcUaDriver(make_device(sim, ["setpoint"], connection=connection))
    with pytest.raises(ConfigError, match=message):
        await driver.connect()


async def test_files_that_are_not_certificates(
    sim: OpcUaSimulator, opcua_pki: TestPki, tmp_path: Path
) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    connection = secure(opcua_pki, certificate=str(junk))
    driver = OpcUaDriver(make_device(sim, ["setpoint"], connection=connection))
    with pytest.raises(ConfigError, match=r"not an X\.509 certificate"):
        await driver.connect()
    connection = secure(opcua_pki, privateKey=str(opcua_pki.client_cert))
    driver = OpcUaDriver(make_device(sim, ["setpoint"], connection=connection))
    with pytest.raises(ConfigError, match="not a private key"):
        await driver.connect()
