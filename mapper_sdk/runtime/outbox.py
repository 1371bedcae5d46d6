"""Store-and-forward for everything a mapper publishes.

While the broker is reachable, messages wait in memory for a moment and go out
pipelined (QoS 1, in order). When the broker is away, they are kept in a
bounded SQLite queue (a file, so a mapper restart loses nothing; or in memory
when no path is given) and sent in order, oldest first, when it returns. Messages
put while the queue is being drained go behind it, so order is kept.

A message is removed from the store only after the broker acknowledged it, so
an outage in the middle of a drain re-sends what was not acknowledged (QoS 1:
at least once). When the bound is reached the oldest message is dropped (or
the newest refused, by option) and counted in :attr:`Outbox.dropped`; a message
already on its way to the broker is never the one dropped.

When the store cannot be written (a full or read-only disk), messages stay in
memory, in order and within the same bound, and move to the store once it works
again; the failure is logged once and kept in :attr:`Outbox.store_error`.
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
        window: messages handed to the connection at once, then acknowledged
            together; it bounds what is in flight and sets the rate one round
            trip allows (256 per round trip).
    """

    def __init__(
        self,
        link: MqttLink,
        *,
        path: str | Path | None = None,
        max_messages: int = 100_000,
        drop_oldest: bool = True,
        window: int = 256,
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
        self._done_upto = 0
        self._sending_upto = 0
        self._undeleted = False
        self._wake = asyncio.Event()
        self.store_error: str | None = None
        """Why the store last failed (``None`` while it works)."""
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
        """Messages kept and not acknowledged yet (in memory, in the store, on their way)."""
        return self._stored + len(self._mem) + self._inflight

    def put(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """Queue a message; never blocks. Applies the bound and its policy."""
        if self.depth >= self.max_messages:
            self.dropped += 1
            if not (self.drop_oldest and self._drop_one_oldest()):
                return
        message = (topic, payload, qos, retain)
        if (
            (self._stored or not self.link.connected)
            and not (self._mem or self._inflight)
            and self._store([message])
        ):
            self._wake.set()
            return
        # Older messages are still in memory (waiting to be sent, or kept there while
        # the store fails), or on their way back to it from a batch the broker did not
        # acknowledge: this one waits behind them, and the sender moves them all to the
        # store in order.
        self._mem.append(message)
        self._wake.set()

    def _drop_one_oldest(self) -> bool:
        """Make room: drop the oldest message that is not on its way to the broker."""
        if self._stored:
            try:
                cur = self._db.execute(
                    "DELETE FROM outbox WHERE seq = (SELECT MIN(seq) FROM outbox WHERE seq > ?)",
                    (max(self._done_upto, self._sending_upto),),
                )
            except sqlite3.Error as exc:
                self._store_failed(exc)
            else:
                if cur.rowcount:
                    self._stored -= 1
                    return True
        if self._mem:
            self._mem.popleft()
            return True
        return False

    def _store(self, messages: list[Message]) -> bool:
        """Append ``messages`` to the store in one transaction; ``False`` if it failed."""
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            db.executemany(
                "INSERT INTO outbox (topic, payload, qos, retain) VALUES (?, ?, ?, ?)",
                [(t, p, q, int(r)) for t, p, q, r in messages],
            )
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            # A full or read-only disk must not stop the mapper: the caller keeps the
            # messages in memory (within the bound) and the store is tried again later.
            if db.in_transaction:
                try:
                    db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            self._store_failed(exc)
            return False
        self._store_ok()
        self._stored += len(messages)
        self.spilled += len(messages)
        return True

    def _store_failed(self, exc: sqlite3.Error) -> None:
        if self.store_error is None:
            log.error(
                "outbox=%s event=store-failed error=%r (messages are kept in memory, "
                "within the bound of %d, until the store works again)",
                self.path,
                str(exc),
                self.max_messages,
            )
        self.store_error = str(exc)

    def _store_ok(self) -> None:
        if self.store_error is not None:
            log.info("outbox=%s event=store-recovered", self.path)
            self.store_error = None

    def _spill_memory(self) -> None:
        if self._mem and self._store(list(self._mem)):
            self._mem.clear()

    # ---- sender --------------------------------------------------------------
    async def run(self) -> None:
        """Send forever; run it as a task owned by the mapper."""
        while True:
            if not self.link.connected:
                self._spill_memory()
                if self._mem:
                    # The store failed: try it again in a while, or send when the link is up.
                    try:
                        async with asyncio.timeout(1.0):
                            await self.link.up.wait()
                    except TimeoutError:
                        pass
                else:
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
            if acked and self._undeleted:
                self._forget_acked()
            if acked < len(batch):
                self._mem.extendleft(reversed(batch[acked:]))
                self._spill_memory()
                await self._pause()

    async def _drain_store(self) -> None:
        try:
            rows = self._db.execute(
                "SELECT seq, topic, payload, qos, retain FROM outbox WHERE seq > ? "
                "ORDER BY seq LIMIT ?",
                (self._done_upto, self.window),
            ).fetchall()
        except sqlite3.Error as exc:
            self._store_failed(exc)
            await asyncio.sleep(1.0)
            return
        if not rows:
            self._stored = 0
            return
        batch = [(t, bytes(p), int(q), bool(r)) for _, t, p, q, r in rows]
        # Rows on their way are not dropped to make room (they would be counted as
        # dropped and be delivered all the same).
        self._sending_upto = rows[-1][0]
        try:
            acked = await self.link.publish_batch(batch)
        except LinkDown:
            await self._pause()
            return
        finally:
            self._sending_upto = 0
        if acked:
            self._done_upto = rows[acked - 1][0]
            self._stored -= acked
            self.sent += acked
            self._forget_acked()

    def _forget_acked(self) -> None:
        """Delete the rows the broker acknowledged.

        A full disk cannot even delete (the WAL grows): the rows are skipped from
        then on, and deleted after a later acknowledged batch (or sent again,
        at least once, after a restart).
        """
        try:
            self._db.execute("DELETE FROM outbox WHERE seq <= ?", (self._done_upto,))
        except sqlite3.Error as exc:
            self._undeleted = True
            self._store_failed(exc)
        else:
            self._undeleted = False
            self._store_ok()

    async def _pause(self) -> None:
        """After a failed publish: give the link a moment to notice it is down."""
        if self.link.connected:
            await asyncio.sleep(0.05)

    async def flush(self) -> None:
        """Wait until everything queued so far was acknowledged (while connected)."""
        while self.depth and self.link.connected:  # noqa: ASYNC110 - only used at shutdown
            await asyncio.sleep(0.01)

    def close(self) -> None:
        """Keep what is in memory in the store and close it."""
        self._spill_memory()
        if self._mem:
            self.dropped += len(self._mem)
            log.error(
                "outbox=%s event=lost-at-exit messages=%d error=%r",
                self.path,
                len(self._mem),
                self.store_error,
            )
            self._mem.clear()
        self._db.close()
