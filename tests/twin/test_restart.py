"""``python -m twin serve`` as a process: restarts after kill -9, SIGHUP reloads, bad stores."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from mapper_sdk.mqtt import MqttSettings
from mapper_sdk.testing import Mosquitto

from .conftest import DEVICES, EXTRA, probe_for, subprocess_env, twin_command

T1 = "default/thermostat-1"


class Serve:
    """A ``twin serve`` process whose stderr is collected line by line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._new = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            self.lines.append(raw.decode(errors="replace").rstrip())
            self._new.set()
        self._new.set()

    async def wait_line(self, text: str, timeout: float = 30.0) -> str:
        async with asyncio.timeout(timeout):
            while True:
                for line in self.lines:
                    if text in line:
                        return line
                if self.proc.returncode is not None and self._reader.done():
                    raise AssertionError(f"exited before {text!r}:\n" + "\n".join(self.lines))
                self._new.clear()
                await self._new.wait()

    async def finish(self) -> int:
        code = await self.proc.wait()
        await self._reader
        return code

    @property
    def output(self) -> str:
        return "\n".join(self.lines)


async def start(broker: Mosquitto, db: Path, *files: Path, extra: tuple[str, ...] = ()) -> Serve:
    args = ["serve", "--broker", broker.url, "--db", str(db), "--node", "edge-0"]
    args += ["--devices", *map(str, files or (DEVICES,)), *extra]
    proc = await asyncio.create_subprocess_exec(
        *twin_command(*args),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=subprocess_env(),
    )
    return Serve(proc)


@contextlib.asynccontextmanager
async def serving(broker: Mosquitto, db: Path, *files: Path) -> AsyncIterator[Serve]:
    serve = await start(broker, db, *files)
    try:
        await serve.wait_line("event=ready")
        yield serve
    finally:
        if serve.proc.returncode is None:
            serve.proc.kill()
        await serve.finish()


def stable(get: dict[str, Any]) -> dict[str, Any]:
    """A get result without the fields that belong to the message, not the twin."""
    return {k: v for k, v in get.items() if k not in ("event_id", "timestamp")}


async def test_kill_9_and_restart_loads_the_exact_state(
    broker: Mosquitto, settings: MqttSettings, tmp_path: Path
) -> None:
    db = tmp_path / "twin.db"
    async with probe_for(settings) as probe:
        async with serving(broker, db) as serve:
            await probe.update(T1, {"setpoint": {"expected": {"value": "24.5"}}})
            await probe.update(
                T1,
                {
                    "temperature": {"actual": {"value": "19.75", "metadata": {"timestamp": 42}}},
                    "setpoint": {
                        "actual": {"value": "22"},
                        "ack": {"expected_version": 1, "status": "failed", "reason": "busy"},
                    },
                },
            )
            await probe.exchange(T1, {"state": "online"}, suffix="state/update")
            kept = await probe.exchange(
                T1, {"event_id": "keep-1", "twin": {"mode": {"expected": {"value": "eco"}}}}
            )
            before = await probe.get(T1)
            assert before["version"] == 3
            serve.proc.send_signal(signal.SIGKILL)
            assert await serve.finish() == -signal.SIGKILL
        mark = probe.mark()
        async with serving(broker, db):
            after = await probe.get(T1)
            # Start-up published nothing: the get's answer is the first message since.
            assert [m.kind for m in probe.messages[mark:]] == ["twin/get/result"]
            assert stable(after) == stable(before)
            # De-duplication survives the restart: the original result, nothing applied.
            again = await probe.exchange(
                T1, {"event_id": "keep-1", "twin": {"mode": {"expected": {"value": "off"}}}}
            )
            assert [m.raw for m in again] == [kept[0].raw]
            assert (await probe.get(T1))["version"] == 3


async def test_sighup_reloads_the_device_files(
    broker: Mosquitto, settings: MqttSettings, tmp_path: Path
) -> None:
    devices = tmp_path / "devices.yaml"
    original = DEVICES.read_text()
    devices.write_text(original)
    async with probe_for(settings) as probe, serving(broker, tmp_path / "t.db", devices) as serve:
        await probe.update(T1, {"mode": {"expected": {"value": "eco"}}})
        # A device added to the files.
        devices.write_text(original + "---\n" + EXTRA.read_text())
        start = probe.mark()
        assert serve.proc.pid is not None
        serve.proc.send_signal(signal.SIGHUP)
        msg = await probe.wait_for(lambda m: m.topic.endswith("membership/updated"), start)
        assert msg.topic == "$hw/events/node/edge-1/membership/updated"
        assert [d["id"] for d in msg.body["added_devices"]] == ["default/pump-3"]
        assert msg.body["removed_devices"] == []
        pump = await probe.get("default/pump-3")
        assert pump["twin"]["speed"]["expected"]["value"] == "1200"
        # A device removed from the files.
        without_t2 = original.replace("name: thermostat-2", "name: thermostat-9")
        devices.write_text(without_t2)
        start = probe.mark()
        serve.proc.send_signal(signal.SIGHUP)
        msg = await probe.wait_for(lambda m: m.topic.endswith("membership/updated"), start)
        assert [d["id"] for d in msg.body["removed_devices"]] == [
            "default/pump-3",
            "default/thermostat-2",
        ]
        assert [d["id"] for d in msg.body["added_devices"]] == ["default/thermostat-9"]
        gone = await probe.get("default/thermostat-2")
        assert gone["code"] == 404
        # Untouched devices keep their twins.
        kept = await probe.get(T1)
        assert kept["twin"]["mode"]["expected"]["value"] == "eco" and kept["version"] == 1
        # A broken file is reported and the service keeps serving what it had.
        devices.write_text("kind: Nonsense\n")
        serve.proc.send_signal(signal.SIGHUP)
        await serve.wait_line("event=reload-failed")
        assert (await probe.get("default/thermostat-9"))["version"] == 0
        serve.proc.send_signal(signal.SIGTERM)
        assert await serve.finish() == 0
        assert "event=stopped" in serve.output


async def test_corrupt_store_stops_the_service(broker: Mosquitto, tmp_path: Path) -> None:
    db = tmp_path / "twin.db"
    db.write_bytes(b"this is not a database, it is a shopping list\n" * 100)
    serve = await start(broker, db)
    assert await serve.finish() == 1
    assert "corrupt or not an SQLite database" in serve.output
    assert db.read_bytes().startswith(b"this is not")  # left as it was


async def test_foreign_database_and_missing_directory(broker: Mosquitto, tmp_path: Path) -> None:
    foreign = tmp_path / "other.db"
    with contextlib.closing(sqlite3.connect(foreign)) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER)")
    serve = await start(broker, foreign)
    assert await serve.finish() == 1
    assert "not a Mapperkit twin store" in serve.output
    serve = await start(broker, tmp_path / "missing" / "twin.db")
    assert await serve.finish() == 1
    assert "cannot open the twin store" in serve.output


async def test_bad_device_file_is_a_configuration_error(broker: Mosquitto, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(DEVICES.read_text().replace('value: "21.5"', 'value: "99"'))
    serve = await start(broker, tmp_path / "t.db", bad)
    assert await serve.finish() == 2
    assert "configuration error" in serve.output and "thermostat-1" in serve.output
    assert "above the maximum" in serve.output
