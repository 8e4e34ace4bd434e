"""A network node's own key store: keys for SAE pairs that no single link pool holds.

Two kinds of keys live here, both bound to one (master SAE, slave SAE) pair from the moment
they are stored, and both fetched by the slave with ``dec_keys`` only:

* keys relayed to this node by trusted nodes (:mod:`keysource.kme.network_node`): the
  master got the key at its own KME once this store held it (two-phase delivery);
* keys for two SAEs served by this very node, drawn from the node's random source.

Once-only like the link pools (:mod:`.pool`): a key handed to its slave is gone, except that
the same slave may fetch it again for ``redelivery_grace_s`` (its answer may have been
lost); a key never fetched is destroyed after ``ttl_s``. Rows stay as tombstones (without
material) for ``tombstone_s``, so a replayed relay naming a used key_ID is refused.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from keysource.sqlite_schema import Schema, open_schema

from .pool import KeyLookupError, PoolKey

SCHEMA = """
CREATE TABLE IF NOT EXISTS local_keys (
    key_id     TEXT PRIMARY KEY,
    master_sae TEXT NOT NULL,
    slave_sae  TEXT NOT NULL,
    material   BLOB,          -- NULL once destroyed (a tombstone)
    created    REAL NOT NULL,
    delivered  REAL,          -- when the slave first fetched it
    route      TEXT           -- the nodes the key went through, comma-separated (key_path)
);
"""


def _add_route(db: sqlite3.Connection) -> None:
    """An unversioned store made before keys named their path has no ``route`` column."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(local_keys)")}
    if "route" not in columns:
        db.execute("ALTER TABLE local_keys ADD COLUMN route TEXT")


# Version 1 is SCHEMA; see keysource.sqlite_schema for how the file is migrated or refused.
LOCAL_KEYS_SCHEMA = Schema(kind="KME local key store", baseline=SCHEMA,
                           marker_tables=frozenset({"local_keys"}), adopt=_add_route)
ROUTE_SEPARATOR = ","  # node names never hold one (the SAE_ID rule)


class DuplicateKey(Exception):
    """A key_ID this store already holds or held (a replayed relay)."""


class LocalKeyStore:
    """SQLite (WAL, synchronous=FULL): a stored key survives ``kill -9`` once put returns."""

    def __init__(self, path: Path, *, redelivery_grace_s: float, ttl_s: float,
                 tombstone_s: float = 86_400.0,
                 clock: Callable[[], float] = time.time) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            open_schema(self._db, LOCAL_KEYS_SCHEMA, path,
                        pragmas=("PRAGMA journal_mode=WAL", "PRAGMA synchronous=FULL"))
        except BaseException:
            self._db.close()
            raise
        path.chmod(0o600)
        self.redelivery_grace_s = redelivery_grace_s
        self.ttl_s = ttl_s
        self.tombstone_s = tombstone_s
        self._clock = clock

    def close(self) -> None:
        self._db.close()

    def put(self, master: str, slave: str, keys: Sequence[PoolKey]) -> None:
        """Store keys for (master, slave), all or none, with the path each took (its
        ``path``); DuplicateKey if a key_ID is known."""
        now = self._clock()
        try:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "INSERT INTO local_keys (key_id, master_sae, slave_sae, material, created,"
                " route) VALUES (?, ?, ?, ?, ?, ?)",
                [(k.key_ID, master, slave, k.key, now, ROUTE_SEPARATOR.join(k.path) or None)
                 for k in keys])
        except sqlite3.IntegrityError:
            self._db.execute("ROLLBACK")
            raise DuplicateKey("a key_ID of this relay is already known here") from None
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def holds_any(self, key_ids: Sequence[str]) -> bool:
        """True if any of ``key_ids`` is (or was) a key of this store."""
        marks = ",".join("?" * len(key_ids))
        row = self._db.execute(
            f"SELECT 1 FROM local_keys WHERE key_id IN ({marks}) LIMIT 1", list(key_ids)
        ).fetchone()
        return row is not None

    def take_for_slave(self, master: str, slave: str, key_ids: Sequence[str]) -> list[PoolKey]:
        """The named keys of (master, slave) for the slave, all or none (see module doc)."""
        now = self._clock()
        self._db.execute("BEGIN IMMEDIATE")
        try:
            unknown, foreign, found = [], [], []
            for key_id in key_ids:
                row = self._db.execute(
                    "SELECT master_sae, slave_sae, material, created, delivered, route"
                    " FROM local_keys WHERE key_id = ?", (key_id,)).fetchone()
                if row is None or row[2] is None:
                    unknown.append(key_id)
                elif (row[0], row[1]) != (master, slave):
                    foreign.append(key_id)
                elif row[4] is None and row[3] < now - self.ttl_s:
                    unknown.append(key_id)  # expired, the sweeper has not erased it yet
                elif row[4] is not None and row[4] <= now - self.redelivery_grace_s:
                    unknown.append(key_id)
                else:
                    path = tuple(row[5].split(ROUTE_SEPARATOR)) if row[5] else ()
                    found.append(PoolKey(key_id, bytes(row[2]), path))
            if unknown or foreign:
                raise KeyLookupError(unknown, foreign)
            self._db.executemany(
                "UPDATE local_keys SET delivered = ? WHERE key_id = ? AND delivered IS NULL",
                [(now, k.key_ID) for k in found])
            if self.redelivery_grace_s <= 0:
                self._db.executemany("UPDATE local_keys SET material = NULL WHERE key_id = ?",
                                     [(k.key_ID,) for k in found])
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        return found

    def sweep(self) -> int:
        """Destroy keys past their grace or lifetime, forget old tombstones; how many went."""
        now = self._clock()
        with self._db:
            erased = self._db.execute(
                "UPDATE local_keys SET material = NULL WHERE material IS NOT NULL AND ("
                " (delivered IS NOT NULL AND delivered <= ?)"
                " OR (delivered IS NULL AND created < ?))",
                (now - self.redelivery_grace_s, now - self.ttl_s)).rowcount
            self._db.execute("DELETE FROM local_keys WHERE material IS NULL AND created < ?",
                             (now - self.tombstone_s,))
        return int(erased)

    def counts(self) -> dict[str, int]:
        """Keys waiting for their slave, and keys fetched and still re-servable."""
        waiting, fetched = self._db.execute(
            "SELECT COALESCE(SUM(material IS NOT NULL AND delivered IS NULL), 0),"
            " COALESCE(SUM(material IS NOT NULL AND delivered IS NOT NULL), 0)"
            " FROM local_keys").fetchone()
        return {"waiting": int(waiting), "redeliverable": int(fetched)}

    def key_ids(self) -> dict[str, bytes]:
        """Every key still held (tests and audits): key_ID -> material."""
        return {k: bytes(m) for k, m in self._db.execute(
            "SELECT key_id, material FROM local_keys WHERE material IS NOT NULL")}
