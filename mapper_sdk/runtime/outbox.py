"""Store-and-forward for everything a mapper publishes.

While the broker is reachable, messages wait in memory for a moment and go out
pipelined (QoS 1, in order). When the broker is away, they are kept in a
bounded SQLite queue (a file, so a mapper restart loses nothing; or in memory
when no path is given) and sent in order, oldest first, when it returns. Messages
put while the queue is being drained go behind it, so order is kept.

A message is removed from the store only after the broker acknowledged it, so
an outage in the middle of a drain re-sends what was not acknowledged (QoS 1:
at least once). When the bound is reached the oldest message is dropped (or
the newest refused, by option) and counted in :attr:`Outbox.dropped`.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import sqlite3
from pathlib import Path

from ..errors import ConfigError
from ..mqtt import LinkDown, MqttLink

__all__ = ["Message", "Outbox"]

log = logging.getLogger(__name__)

Message = tuple[str, bytes, int, bool]
"""``(topic, payload, qos, retain)``."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    topic   TEXT    NOT NULL,
    payload BLOB    NOT NULL,
    qos     INTEGER NOT NULL,
    retain  INTEGER NOT NULL
)
"""


class Outbox:
    """A bounded, ordered, durable queue in front of an :class:`MqttLink`.

    Args:
        link: the connection to publish on.
        path: SQLite file for messages kept while the broker is away; ``None``
            keeps them in memory (lost if the process dies).
        max_messages: the bound on kept messages (memory and store together).
        drop_oldest: when full, drop the oldest message (``True``) or refuse
            the new one (``False``); both are counted in :attr:`dropped`.
        window: messages in flight at once (aiomqtt scans its pending calls on
            every publish, so a larger window costs more than it gains).
    """

    def __init__(
        self,
        link: MqttLink,
        *,
        path: str | Path | None = None,
        max_messages: int = 100_000,
        drop_oldest: bool = True,
        window: int = 64,
    ) -> None:
        if max_messages < 1:
            raise ConfigError(f"outbox bound must be at least 1, got {max_messages}")
        self.link = link
        self.path = str(path) if path else ":memory:"
        self.max_messages = max_messages
        self.drop_oldest = drop_oldest
        self.window = window
        self._mem: collections.deque[Message] = collections.deque()
        self._stored = 0
        self._inflight = 0
        self._wake = asyncio.Event()
        self.sent = 0
        self.dropped = 0
        self.spilled = 0
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(_SCHEMA)
            row = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open the outbox {self.path}: {exc}") from None
        self._stored = int(row[0])
        if self._stored:
            log.info("outbox=%s event=recovered messages=%d", self.path, self._stored)

    # ---- producer side -------------------------------------------------------
    @property
    def depth(self) -> int:
        """Messages waiting (in memory and in the store)."""
        return self._stored + len(self._mem)

    def put(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """Queue a message; never blocks. Applies the bound and its policy."""
        if self.depth >= self.max_messages:
            self.dropped += 1
            if not self.drop_oldest:
                return
            self._drop_one_oldest()
        message = (topic, payload, qos, retain)
        if self._stored or not (self.link.connected or self._mem or self._inflight):
            self._store([message])
        else:
            # Older messages are still in memory, or on their way back to it from a
            # batch the broker did not acknowledge: this one waits behind them, and
            # the sender moves them all to the store in order.
            self._mem.append(message)
        self._wake.set()

    def _drop_one_oldest(self) -> None:
        if self._stored:
            self._db.execute("DELETE FROM outbox WHERE seq = (SELECT MIN(seq) FROM outbox)")
            self._stored -= 1
        elif self._mem:
            self._mem.popleft()

    def _store(self, messages: list[Message]) -> None:
        try:
            self._db.executemany(
                "INSERT INTO outbox (topic, payload, qos, retain) VALUES (?, ?, ?, ?)",
                [(t, p, q, int(r)) for t, p, q, r in messages],
            )
        except sqlite3.Error as exc:
            # A full or read-only disk must not stop the mapper: count the loss.
            self.dropped += len(messages)
            log.error(
                "outbox=%s event=store-failed error=%r dropped=%d",
                self.path,
                str(exc),
                len(messages),
            )
            return
        self._stored += len(messages)
        self.spilled += len(messages)

    def _spill_memory(self) -> None:
        if self._mem:
            messages = list(self._mem)
            self._mem.clear()
            self._store(messages)

    # ---- sender --------------------------------------------------------------
    async def run(self) -> None:
        """Send forever; run it as a task owned by the mapper."""
        while True:
            if not self.link.connected:
                self._spill_memory()
                await self.link.up.wait()
                continue
            if self._stored:
                await self._drain_store()
                continue
            if not self._mem:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = [self._mem.popleft() for _ in range(min(self.window, len(self._mem)))]
            self._inflight = len(batch)
            try:
                acked = await self.link.publish_batch(batch)
            except LinkDown:
                acked = 0
            except asyncio.CancelledError:
                # Stopping: what may not have been acknowledged is kept (sent again later).
                self._mem.extendleft(reversed(batch))
                raise
            finally:
                self._inflight = 0
            self.sent += acked
            if acked < len(batch):
                self._mem.extendleft(reversed(batch[acked:]))
                self._spill_memory()
                await self._pause()

    async def _drain_store(self) -> None:
        rows = self._db.execute(
            "SELECT seq, topic, payload, qos, retain FROM outbox ORDER BY seq LIMIT ?",
            (self.window,),
        ).fetchall()
        if not rows:
            self._stored = 0
            return
        batch = [(t, bytes(p), int(q), bool(r)) for _, t, p, q, r in rows]
        try:
            acked = await self.link.publish_batch(batch)
        except LinkDown:
            await self._pause()
            return
        if acked:
            self._db.execute("DELETE FROM outbox WHERE seq <= ?", (rows[acked - 1][0],))
            self._stored -= acked
            self.sent += acked

    async def _pause(self) -> None:
        """After a failed publish: give the link a moment to notice it is down."""
        if self.link.connected:
            await asyncio.sleep(0.05)

    async def flush(self) -> None:
        """Wait until everything queued so far was acknowledged (while connected)."""
        while (self.depth or self._inflight) and self.link.connected:  # noqa: ASYNC110
            await asyncio.sleep(0.01)

    def close(self) -> None:
        """Keep what is in memory in the store and close it."""
        self._spill_memory()
        self._db.close()
