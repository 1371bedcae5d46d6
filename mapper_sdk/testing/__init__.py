"""Test helpers for driver authors: the conformance kit and a private Mosquitto.

The conformance kit is a base test class. Point it at your driver and a running
simulator by providing one fixture, ``conformance_case``::

    import pytest
    from mapper_sdk.testing import ConformanceCase, DriverConformance

    class TestMyDriver(DriverConformance):
        @pytest.fixture
        async def conformance_case(self, my_simulator):
            return ConformanceCase(
                driver=MyDriver,
                device=device_spec_pointing_at(my_simulator),
                unreachable=device_spec_pointing_at_a_closed_port(),
                bad_property="missing_point",    # optional
                write=("setpoint", 21.5),        # optional
            )

Every test of the class then runs against your driver: connect/close are
idempotent, a batch read returns every requested property, one bad property
gets bad quality instead of an exception, a write reads back, an unreachable
device raises ``DeviceUnavailable``, and close cancels everything the driver
started.
"""

from __future__ import annotations

from .conformance import ConformanceCase, DriverConformance
from .mosquitto import Mosquitto, MosquittoMissing, free_port

__all__ = ["ConformanceCase", "DriverConformance", "Mosquitto", "MosquittoMissing", "free_port"]
