"""The conformance kit run against the in-memory driver (and so tested itself)."""

from __future__ import annotations

import pytest

from mapper_sdk.driver import Resources
from mapper_sdk.model import load_text
from mapper_sdk.testing import ConformanceCase, DriverConformance

from .memdriver import MemBus, MemDriver

TEXT = """
devices:
  - name: {name}
    protocol: mem
    connection: {{device: {name}}}
    properties:
      - {{name: temp, type: float, visitor: {{address: t}}}}
      - {{name: setpoint, type: float, visitor: {{address: sp}}}}
      - {{name: broken, type: int, visitor: {{address: nowhere}}}}
"""


class TestMemDriverConformance(DriverConformance):
    @pytest.fixture
    async def conformance_case(self) -> ConformanceCase:
        bus = MemBus()
        bus.device("ok").values.update({"t": 20.0, "sp": 21.0})
        bus.device("down").online = False
        resources = Resources()
        resources.extras["mem.bus"] = bus
        drivers = {"mem": MemDriver}
        device = load_text(TEXT.format(name="ok"), drivers=drivers).devices[0]
        down = load_text(TEXT.format(name="down"), drivers=drivers).devices[0]
        unreachable = down
        return ConformanceCase(
            driver=MemDriver,
            device=device,
            unreachable=unreachable,
            bad_property="broken",
            write=("setpoint", 23.5),
            resources=resources,
        )
