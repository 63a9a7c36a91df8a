"""Durable storage of a node's counters in SQLite, inside its data dir.

Each counter is one row holding its encoded state. A write is one statement
in autocommit mode, so by the time `save` returns the transaction is in the
write-ahead log and survives the node being killed. With `synchronous=NORMAL`
SQLite does not fsync on every commit: a power cut can lose the last
transactions, a killed process cannot.

The data dir is locked while a node uses it, so two processes never share
one (and so never share a replica id).
"""

import fcntl
import logging
import os
import secrets
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from nixie import codec
from nixie.crdt import CounterState
from nixie.errors import StorageError

logger = logging.getLogger(__name__)

DB_NAME = "nixie.sqlite3"
LOCK_NAME = "nixie.lock"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS counters (
    key TEXT PRIMARY KEY,
    state TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
"""


def new_replica_id() -> str:
    """Return a fresh, random replica id (128 bits, URL-safe)."""
    return secrets.token_urlsafe(16)


class Store:
    """Keep counter states in a locked SQLite database."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
            self._lock_fd = _lock(data_dir / LOCK_NAME)
        except OSError as exc:
            raise StorageError(f"cannot use data dir {data_dir}: {exc}") from exc

        try:
            self._db = sqlite3.connect(
                data_dir / DB_NAME, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            os.close(self._lock_fd)
            raise StorageError(f"cannot open {data_dir / DB_NAME}: {exc}") from exc

    def close(self) -> None:
        """Close the database and release the data dir."""
        self._db.close()
        os.close(self._lock_fd)

    def replica_id(self) -> str:
        """Return this data dir's replica id, creating it on first use."""
        row = self._db.execute(
            "SELECT value FROM meta WHERE name = 'replica_id'"
        ).fetchone()
        if row is not None:
            return str(row[0])

        replica = new_replica_id()
        self._execute(
            "INSERT INTO meta (name, value) VALUES ('replica_id', ?)", (replica,)
        )
        logger.info("new data dir %s: replica id %s", self.data_dir, replica)
        return replica

    def load(self) -> Iterator[tuple[str, CounterState]]:
        """Yield every stored counter's key and state."""
        for key, text in self._db.execute("SELECT key, state FROM counters"):
            yield key, codec.decode_state(codec.loads(text))

    def save(self, key: str, state: CounterState) -> None:
        """Store a counter's state durably before returning."""
        self._execute(
            "INSERT OR REPLACE INTO counters (key, state) VALUES (?, ?)",
            (key, codec.dumps(codec.encode_state(state))),
        )

    def save_many(self, states: dict[str, CounterState]) -> None:
        """Store several states in one transaction."""
        rows = [
            (key, codec.dumps(codec.encode_state(state)))
            for key, state in states.items()
        ]
        try:
            with self._db:
                self._db.execute("BEGIN")
                self._db.executemany(
                    "INSERT OR REPLACE INTO counters (key, state) VALUES (?, ?)", rows
                )
        except sqlite3.Error as exc:
            raise StorageError(f"cannot write {self.data_dir}: {exc}") from exc

    def _execute(self, sql: str, params: tuple[str, ...]) -> None:
        try:
            self._db.execute(sql, params)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot write {self.data_dir}: {exc}") from exc


def _lock(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise OSError(f"{path.parent} is in use by another Nixie node") from None
    return fd
