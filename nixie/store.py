"""Durable storage of a node's counters in SQLite, inside its data dir.

Each counter is one row of `counters` holding its canonical encoded state
without receipts (`nixie.codec.canonical_core`), and each of its receipts is
one row of `receipts`, so a write stores the counter's core and only the
receipts it added, changed or purged, however many the counter holds. A
write is one transaction, so by the time `save` returns it is in the
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
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from nixie.errors import StorageError

logger = logging.getLogger(__name__)

DB_NAME = "nixie.sqlite3"
_FS_IOC_GETVERSION = 0x80087601  # _IOR('v', 1, long) on 64-bit Linux
LOCK_NAME = "nixie.lock"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS counters (
    key TEXT PRIMARY KEY,
    state TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS receipts (
    key TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    receipt TEXT NOT NULL,
    PRIMARY KEY (key, idempotency_key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
"""


class Change(NamedTuple):
    """One counter's write: its new core state and the receipts it touched."""

    key: str
    state: str  # canonical core state, receipts left out
    receipts: Mapping[str, str]  # idempotency key -> receipt, added or changed
    purged: Sequence[str]  # idempotency keys of the receipts dropped


class Stored(NamedTuple):
    """One stored counter: its core state and its receipts."""

    key: str
    state: str
    receipts: dict[str, str]  # idempotency key -> receipt


_SAVE_COUNTER = "INSERT OR REPLACE INTO counters (key, state) VALUES (?, ?)"


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
            # The data dir lock already keeps other processes out; holding
            # SQLite's lock for good saves its lock calls on every commit.
            self._db.execute("PRAGMA locking_mode=EXCLUSIVE")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            os.close(self._lock_fd)
            raise StorageError(f"cannot open {data_dir / DB_NAME}: {exc}") from exc

    def close(self) -> None:
        """Close the database and release the data dir."""
        self._db.close()
        os.close(self._lock_fd)

    def replica_id(self) -> str:
        """Return this data dir's replica id, creating one when needed.

        The id is bound to the database file's identity on disk (device,
        inode and inode generation). A data dir that was copied, or restored
        from a backup, holds a file with another identity, so it gets a fresh
        replica id instead of writing under the id the original still uses.
        `Node` backs this up at run time: see `Node.merge`.
        """
        where = self._file_identity()
        rows = dict(self._db.execute("SELECT name, value FROM meta").fetchall())
        replica = rows.get("replica_id")
        if replica is not None and rows.get("file_identity") == where:
            return str(replica)

        fresh = new_replica_id()
        if replica is None:
            logger.info("new data dir %s: replica id %s", self.data_dir, fresh)
        else:
            logger.warning(
                "data dir %s was copied or restored (was replica %s): "
                "taking fresh replica id %s",
                self.data_dir,
                replica,
                fresh,
            )
        try:
            with self._db:
                self._db.execute("BEGIN")
                self._db.executemany(
                    "INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)",
                    [("replica_id", fresh), ("file_identity", where)],
                )
        except sqlite3.Error as exc:
            raise StorageError(f"cannot write {self.data_dir}: {exc}") from exc
        return fresh

    def load(self) -> Iterator[Stored]:
        """Yield every stored counter with its receipts."""
        receipts: dict[str, dict[str, str]] = {}
        for key, idempotency_key, receipt in self._db.execute(
            "SELECT key, idempotency_key, receipt FROM receipts"
        ):
            receipts.setdefault(key, {})[idempotency_key] = receipt
        for key, state in self._db.execute("SELECT key, state FROM counters"):
            yield Stored(key, state, receipts.get(key, {}))

    def save(self, change: Change) -> None:
        """Store one counter's write durably before returning."""
        if change.receipts or change.purged:
            self.save_many([change])
            return
        # A write that touches no receipt is one statement, its own
        # transaction in autocommit mode: the common case, kept cheap.
        try:
            self._db.execute(
                _SAVE_COUNTER,
                (change.key, change.state),
            )
        except sqlite3.Error as exc:
            raise StorageError(f"cannot write {self.data_dir}: {exc}") from exc

    def save_many(self, changes: list[Change]) -> None:
        """Store several counters' writes in one transaction."""
        try:
            with self._db:
                self._db.execute("BEGIN")
                self._db.executemany(
                    _SAVE_COUNTER,
                    [(change.key, change.state) for change in changes],
                )
                receipts = [
                    (change.key, idempotency_key, receipt)
                    for change in changes
                    for idempotency_key, receipt in change.receipts.items()
                ]
                if receipts:
                    self._db.executemany(
                        "INSERT OR REPLACE INTO receipts "
                        "(key, idempotency_key, receipt) VALUES (?, ?, ?)",
                        receipts,
                    )
                purged = [
                    (change.key, idempotency_key)
                    for change in changes
                    for idempotency_key in change.purged
                ]
                if purged:
                    self._db.executemany(
                        "DELETE FROM receipts WHERE key = ? AND idempotency_key = ?",
                        purged,
                    )
        except sqlite3.Error as exc:
            raise StorageError(f"cannot write {self.data_dir}: {exc}") from exc

    def set_replica_id(self, replica: str) -> None:
        """Replace the replica id, for a node that found its data stale."""
        try:
            self._db.execute(
                "INSERT OR REPLACE INTO meta (name, value) VALUES ('replica_id', ?)",
                (replica,),
            )
        except sqlite3.Error as exc:
            raise StorageError(f"cannot write {self.data_dir}: {exc}") from exc

    def _file_identity(self) -> str:
        path = self.data_dir / DB_NAME
        info = path.stat()
        return f"{info.st_dev}:{info.st_ino}:{_inode_generation(path)}"


def _inode_generation(path: Path) -> str:
    """Return the file system's generation number of a file's inode, if any.

    ext4 and others give a reused inode number a new generation, so a file
    deleted and replaced by a copy (a restore in place) does not pass for the
    original even when it gets the same inode number. File systems without
    generations answer nothing, and the device and inode alone decide.
    """
    try:
        with path.open("rb") as file:
            buffer = bytearray(8)
            fcntl.ioctl(file.fileno(), _FS_IOC_GETVERSION, buffer)
    except OSError:
        return ""
    return str(int.from_bytes(buffer[:4], sys.byteorder))


def _lock(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise OSError(f"{path.parent} is in use by another Nixie node") from None
    return fd
