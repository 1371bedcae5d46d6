"""The twin's durable store: one SQLite file in WAL mode.

One row per device holds its document version, state and twins (a compact
JSON column, rewritten when the device changes); a second table remembers
accepted requests by ``event_id`` with the exact result that was published,
for de-duplication across restarts.

:meth:`Store.write` applies one :class:`Writes` batch in one transaction. The
service calls it through :meth:`Store.write_async`, which runs it on the
store's own thread: an fsync (``--durability power``) or a WAL checkpoint then
never stalls the event loop, and the requests that arrive meanwhile form the
next batch (group commit). Measured on two cores, this beats committing inline
even for ``--durability process``, whose commits do not fsync: the batches it
forms make fewer, larger transactions. SQLite's blocking API is the reason for
that one thread; everything else in the twin is asyncio.

A store that cannot be opened, is not a Mapperkit twin store, or is corrupt
raises :class:`StoreError`; the service stops instead of serving an empty twin.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

from mapper_sdk.errors import MapperError

__all__ = ["Durability", "Store", "StoreError", "Writes"]

Durability = Literal["process", "power"]
SCHEMA_VERSION: Final = "1"
APPLICATION: Final = "mapperkit-twin"

_SCHEMA: Final = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE devices (
    id TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    state TEXT NOT NULL,
    last_online TEXT NOT NULL,
    twins TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE dedup (
    id INTEGER PRIMARY KEY,
    device TEXT NOT NULL,
    event_id TEXT NOT NULL,
    ts INTEGER NOT NULL,
    result BLOB NOT NULL
);
"""
# The dedup table is append-only (ids grow) with no secondary index: a random
# (device, event_id) index made every insert dirty a different page, which
# tripled the cost of a commit. The service keeps the lookup index in memory.

DeviceRow = tuple[int, str, str, str]
"""``(version, state, last_online, twins_json)``."""


class StoreError(MapperError):
    """The twin store cannot be opened, is corrupt, or a write failed."""


@dataclass(slots=True)
class Writes:
    """Everything one batch of accepted requests writes, applied in one transaction."""

    devices: dict[str, DeviceRow] = field(default_factory=dict)
    """Latest row per device (several requests to one device in a batch write once)."""
    dedup: list[tuple[int, str, str, int, bytes]] = field(default_factory=list)
    """``(id, device, event_id, ts, result)`` of each accepted request with an ``event_id``."""
    prune_below: int | None = None
    """Forget the remembered requests whose id is below this."""

    def __bool__(self) -> bool:
        return bool(self.devices or self.dedup or self.prune_below is not None)


class Store:
    """The SQLite file behind the twin. Use :meth:`open`.

    Args:
        conn: an open connection (autocommit mode).
        path: for messages.
        durability: ``process`` (WAL, ``synchronous=NORMAL``) or ``power``
            (``synchronous=FULL``, an fsync per transaction).
    """

    def __init__(self, conn: sqlite3.Connection, path: str, durability: Durability) -> None:
        self._conn = conn
        self.path = path
        self.durability = durability
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="twin-store")

    # ---- opening ---------------------------------------------------------------
    @classmethod
    def open(
        cls, path: str | Path, *, durability: Durability = "process", busy_timeout: float = 5.0
    ) -> Store:
        """Open (or create) the store at ``path``.

        Raises:
            StoreError: the file cannot be opened or created, is not an SQLite
                database, belongs to something else, or is corrupt.
        """
        where = str(path)
        try:
            conn = sqlite3.connect(
                where, isolation_level=None, check_same_thread=False, timeout=busy_timeout
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the twin store {where}: {exc}{_hint(where)}") from None
        try:
            _prepare(conn, where, durability)
        except StoreError:
            conn.close()
            raise
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StoreError(_describe(where, exc)) from None
        return cls(conn, where, durability)

    # ---- reading (the writer's own thread of control, between commits) ----------
    def load(self) -> dict[str, DeviceRow]:
        """Every stored device row.

        Raises:
            StoreError: a corrupt file.
        """
        try:
            rows = self._conn.execute(
                "SELECT id, version, state, last_online, twins FROM devices"
            ).fetchall()
        except sqlite3.DatabaseError as exc:
            raise StoreError(_describe(self.path, exc)) from None
        return {r[0]: (r[1], r[2], r[3], r[4]) for r in rows}

    def load_dedup(self) -> list[tuple[int, str, str, int]]:
        """Every remembered request as ``(id, device, event_id, ts)``, oldest first."""
        try:
            return self._conn.execute(
                "SELECT id, device, event_id, ts FROM dedup ORDER BY id"
            ).fetchall()
        except sqlite3.DatabaseError as exc:
            raise StoreError(_describe(self.path, exc)) from None

    def remembered(self, entry_id: int) -> tuple[str, str, bytes] | None:
        """``(device, event_id, result)`` of remembered request ``entry_id``.

        Raises:
            StoreError: the lookup failed.
        """
        try:
            row = self._conn.execute(
                "SELECT device, event_id, result FROM dedup WHERE id = ?", (entry_id,)
            ).fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"twin store lookup failed: {exc}") from None
        return None if row is None else (row[0], row[1], bytes(row[2]))

    # ---- writing ---------------------------------------------------------------
    def write(self, writes: Writes) -> None:
        """Apply ``writes`` in one transaction; nothing of it on failure.

        Raises:
            StoreError: the transaction failed and was rolled back.
        """
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                if writes.devices:
                    conn.executemany(
                        "INSERT INTO devices (id, version, state, last_online, twins) "
                        "VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                        "version = excluded.version, state = excluded.state, "
                        "last_online = excluded.last_online, twins = excluded.twins",
                        [(k, *row) for k, row in writes.devices.items()],
                    )
                if writes.dedup:
                    conn.executemany(
                        "INSERT INTO dedup (id, device, event_id, ts, result) "
                        "VALUES (?, ?, ?, ?, ?)",
                        writes.dedup,
                    )
                if writes.prune_below is not None:
                    conn.execute("DELETE FROM dedup WHERE id < ?", (writes.prune_below,))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StoreError(f"twin store write failed: {exc}{_hint(self.path)}") from None

    async def write_async(self, writes: Writes, *, inline: bool = False) -> None:
        """:meth:`write` on the store's thread (see the module docstring).

        Args:
            writes: the batch.
            inline: commit on the calling thread instead; only for
                ``--durability process``, whose commits do not fsync, when a
                thread hop would cost more than it could batch (an idle service).
        """
        if inline and self.durability == "process":
            self.write(writes)
            return
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self.write, writes)

    def close(self) -> None:
        """Finish the thread and close the file (a checkpoint folds the WAL in)."""
        self._executor.shutdown(wait=True)
        try:
            self._conn.close()
        except sqlite3.Error:
            pass


def _prepare(conn: sqlite3.Connection, where: str, durability: Durability) -> None:
    """Set the pragmas and create or check the schema."""
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise StoreError(
            f"the twin store {where} cannot use WAL mode (journal_mode is {mode}); "
            "put it on a local file system"
        )
    sync = "FULL" if durability == "power" else "NORMAL"
    conn.execute(f"PRAGMA synchronous={sync}")
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    if not tables:
        conn.executescript(
            f"BEGIN IMMEDIATE;{_SCHEMA}"
            f"INSERT INTO meta VALUES ('application', '{APPLICATION}'), "
            f"('schema', '{SCHEMA_VERSION}');COMMIT;"
        )
        return
    if "meta" not in tables:
        raise StoreError(
            f"{where} is an SQLite database but not a Mapperkit twin store "
            f"(it has tables {', '.join(sorted(tables))})"
        )
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    if meta.get("application") != APPLICATION:
        raise StoreError(f"{where} is not a Mapperkit twin store")
    if meta.get("schema") != SCHEMA_VERSION:
        raise StoreError(
            f"the twin store {where} has schema {meta.get('schema')!r}; "
            f"this version reads schema {SCHEMA_VERSION}"
        )


def _describe(where: str, exc: sqlite3.DatabaseError) -> str:
    text = str(exc)
    if "not a database" in text or "malformed" in text or "corrupt" in text:
        return (
            f"the twin store {where} is corrupt or not an SQLite database ({text}); "
            "restore it from a backup or move it away to start with an empty twin"
        )
    return f"cannot read the twin store {where}: {text}{_hint(where)}"


def _hint(where: str) -> str:
    """Why the store's file system may refuse it: read-only, or full (else nothing)."""
    directory = os.path.dirname(os.path.abspath(where))
    try:
        fs = os.statvfs(directory)
    except OSError:
        return ""
    if fs.f_flag & os.ST_RDONLY:
        return f" ({directory} is on a read-only file system)"
    if fs.f_bavail * fs.f_frsize < 64 * 1024:
        return f" (the file system of {directory} is full)"
    return ""
