"""`mapperkit demo --check`: every device online, every desired value converged, the
invalid value rejected, with Mosquitto and with the embedded broker."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("broker", ["mosquitto", "embedded"])
async def test_demo_check_passes(broker: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mapper_sdk.cli",
        "demo",
        "--duration",
        "40",
        "--check",
        "--broker",
        broker,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 90)
    text = out.decode()
    assert proc.returncode == 0, text
    assert "check: passed" in text
    assert "devices online: 5/5" in text
    assert "desired values converged: 3/3" in text
    assert "invalid value rejected: 400" in text
    expected = "Mosquitto" if broker == "mosquitto" else "embedded broker (amqtt"
    assert f"broker: {expected}" in text
    assert "mapperkit twin get" in text  # the commands a user can run meanwhile
