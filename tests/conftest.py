"""Shared fixtures: private Mosquitto brokers (never the system broker on 1883)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mapper_sdk.testing import Mosquitto, MosquittoMissing

MQTT_USER = "mapper"
MQTT_PASSWORD = "s3cret-pass"


def _start(**kwargs: object) -> Mosquitto:
    try:
        broker = Mosquitto(**kwargs)  # type: ignore[arg-type]
    except MosquittoMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    broker.start()
    return broker


@pytest.fixture(scope="session")
def mosquitto() -> Iterator[Mosquitto]:
    """One anonymous broker for the whole test session. Do not stop it in a test."""
    broker = _start()
    yield broker
    broker.close()


@pytest.fixture(scope="session")
def mosquitto_auth() -> Iterator[Mosquitto]:
    """A broker that requires MQTT_USER / MQTT_PASSWORD."""
    broker = _start(users={MQTT_USER: MQTT_PASSWORD})
    yield broker
    broker.close()


@pytest.fixture
def private_mosquitto() -> Iterator[Mosquitto]:
    """A broker of the test's own, which the test may stop and start again."""
    broker = _start()
    yield broker
    broker.close()
