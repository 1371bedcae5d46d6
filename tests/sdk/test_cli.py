"""The `mapperkit` command as a user runs it, with a driver installed as a third-party plugin."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mapper_sdk import topics
from mapper_sdk.testing import Mosquitto

from ..mqttpeer import mqtt_peer

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the metadata of a separately installed 'memplugin' distribution."""
    site = tmp_path_factory.mktemp("site")
    dist = site / "memplugin-0.3.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: memplugin\nVersion: 0.3.0\n")
    (dist / "entry_points.txt").write_text(
        "[mapper_sdk.drivers]\nmem = tests.sdk.memdriver:MemDriver\n"
        "broken = tests.sdk.no_such_module:Driver\n"
        "needsdep = tests.sdk.needsdep:Driver\n"
    )
    return site


def cli_env(plugin_path: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(ROOT)] + ([str(plugin_path)] if plugin_path else [])
    env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")])
    return env


def mapperkit(*args: str, plugin_path: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mapper_sdk.cli", *args],
        capture_output=True,
        text=True,
        env=cli_env(plugin_path),
        timeout=60,
        check=False,
    )


def test_help_lists_commands() -> None:
    out = mapperkit("--help")
    assert out.returncode == 0
    for command in ("run", "drivers"):
        assert command in out.stdout


def test_drivers_lists_plugins_with_versions_and_broken_ones(plugin_path: Path) -> None:
    out = mapperkit("drivers", plugin_path=plugin_path)
    assert out.returncode == 0, out.stderr
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("mem "))
    assert "memplugin" in line
    assert "0.3.0" in line
    assert "subscribe,write" in line
    assert "ok" in line
    broken = next(ln for ln in out.stdout.splitlines() if ln.startswith("broken "))
    assert "broken: ModuleNotFoundError" in broken
    # A driver whose dependency is missing is not installed, not broken, and not warned about.
    needs = next(ln for ln in out.stdout.splitlines() if ln.startswith("needsdep "))
    assert "not installed: needs no_such_dependency_pkg, which is not installed" in needs
    assert "needsdep" not in out.stderr
    data = json.loads(mapperkit("drivers", "--json", plugin_path=plugin_path).stdout)
    mem = next(d for d in data if d["protocol"] == "mem")
    assert mem["ok"]
    assert mem["distribution"] == "memplugin"
    assert mem["version"] == "0.3.0"
    needs_dep = next(d for d in data if d["protocol"] == "needsdep")
    assert needs_dep["missing"] == "no_such_dependency_pkg"


def test_run_rejects_a_broken_file_with_a_precise_message(plugin_path: Path) -> None:
    out = mapperkit(
        "run", "--config", str(DATA / "broken" / "bad-visitor.yaml"), plugin_path=plugin_path
    )
    assert out.returncode == 2
    assert "configuration error" in out.stderr
    assert (
        "bad-visitor.yaml: document 1 (devices[0] d1): properties[0].visitor.address" in out.stderr
    )


def test_run_with_no_installed_protocol_says_what_is_installed(plugin_path: Path) -> None:
    out = mapperkit(
        "run",
        "--config",
        str(DATA / "zigbee.yaml"),
        "--broker",
        "mqtt://127.0.0.1:1",
        plugin_path=plugin_path,
    )
    assert out.returncode == 2
    assert "no installed driver for protocol 'zigbee'" in out.stderr
    assert "no device to serve" in out.stderr


def test_run_bad_broker_url(plugin_path: Path) -> None:
    out = mapperkit(
        "run",
        "--config",
        str(DATA / "native-mem.yaml"),
        "--broker",
        "http://x",
        plugin_path=plugin_path,
    )
    assert out.returncode == 2
    assert "scheme must be mqtt:// or mqtts://" in out.stderr


async def test_run_serves_devices_and_stops_on_sigterm(
    mosquitto: Mosquitto, plugin_path: Path, tmp_path: Path
) -> None:
    config = tmp_path / "rig.yaml"
    config.write_text(
        (DATA / "native-mem.yaml")
        .read_text()
        .replace(
            "connection: {device: rig-1}", "connection: {device: rig-1, initial: {t: 20.5, sp: 21}}"
        )
    )
    topic = topics.device_topic("default", "rig-1", "#")
    async with mqtt_peer(mosquitto.port, topic) as peer:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "mapper_sdk.cli",
            "run",
            "--config",
            str(config),
            "--broker",
            mosquitto.url,
            "--http-port",
            "0",
            env=cli_env(plugin_path),
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            update = topics.device_topic("default", "rig-1", topics.TWIN_UPDATE)
            msg = await peer.wait_for(
                lambda m: next((x for x in m if x.topic == update), None), timeout=20
            )
            assert msg.json["twin"]["temp"]["actual"]["value"] == "20.5"
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(5):
                code = await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert code == 0
        state = topics.device_topic("default", "rig-1", topics.STATE_UPDATE)
        await peer.wait_for(
            lambda m: any(x.topic == state and x.json["state"] == "offline" for x in m)
        )
    assert proc.stderr is not None
    log = (await proc.stderr.read()).decode()
    assert "event=mapper-started devices=1" in log
    assert "event=mapper-stopped" in log
