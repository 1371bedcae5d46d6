"""Fixtures of the data-plane tests: real receivers (HTTP, Redis, MariaDB) and helpers."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from mapper_sdk.driver import Reading
from mapper_sdk.model import DeviceSpec, load_text
from mapper_sdk.runtime.reporters import Item, Reporter

from ..sdk.memdriver import MemDriver

DRIVERS = {"mem": MemDriver}
REDIS = ("127.0.0.1", 6379)
MYSQL = ("127.0.0.1", 3306)


def reachable(address: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(address, timeout=1.0):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def redis_address() -> tuple[str, int]:
    if not reachable(REDIS):
        pytest.skip(
            "no Redis server on 127.0.0.1:6379 (start `redis-server` to run the redis sink tests)"
        )
    return REDIS


@pytest.fixture(scope="session")
def mysql_address() -> tuple[str, int]:
    if not reachable(MYSQL):
        pytest.skip(
            "no MySQL/MariaDB server on 127.0.0.1:3306 (start `mariadbd` with a `test` database "
            "and a passwordless root to run the mysql sink tests)"
        )
    import pymysql

    try:
        conn = pymysql.connect(host=MYSQL[0], port=MYSQL[1], user="root", password="")
    except pymysql.err.MySQLError as exc:
        pytest.skip(f"MariaDB on 127.0.0.1:3306 refuses root without a password: {exc}")
    with conn.cursor() as cur:
        cur.execute("CREATE DATABASE IF NOT EXISTS test")
    conn.close()
    return MYSQL


def device(yaml_text: str) -> DeviceSpec[Any, Any]:
    """The one device of a native YAML document (validated by the mem driver)."""
    return load_text(yaml_text, drivers=DRIVERS).devices[0]


def items(
    spec: DeviceSpec[Any, Any], values: dict[str, Any], ts: int = 1_700_000_000_123
) -> list[Item]:
    """Reported items of ``spec`` for ``values`` (by property name), all read at ``ts``."""
    return [(spec.property(name), value, Reading.good(value, ts)) for name, value in values.items()]


@contextlib.asynccontextmanager
async def running(reporter: Reporter) -> AsyncIterator[Reporter]:
    """Run a reporter's loop as the mapper does: a task, cancelled, then ``aclose``."""
    task = asyncio.create_task(reporter.run(), name=f"test.sink.{reporter.kind}")
    try:
        yield reporter
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await reporter.aclose()


async def until(predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll ``predicate`` until it is truthy; return its value."""
    async with asyncio.timeout(timeout):
        while True:
            result = predicate()
            if result:
                return result
            await asyncio.sleep(0.01)


@dataclass
class Captured:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A local HTTP server that records every request and answers from a plan."""

    url: str = ""
    requests: list[Captured] = field(default_factory=list)
    plan: list[int] = field(default_factory=list)
    """Statuses for the next requests (then ``ok``)."""
    ok: int = 200

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(
            Captured(
                request.method,
                request.path,
                dict(request.query),
                dict(request.headers),
                await request.read(),
            )
        )
        status = self.plan.pop(0) if self.plan else self.ok
        return web.Response(status=status, text="" if status < 300 else "refused")


@contextlib.asynccontextmanager
async def http_receiver(ok: int = 200) -> AsyncIterator[Receiver]:
    receiver = Receiver(ok=ok)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    receiver.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield receiver
    finally:
        await runner.cleanup()
