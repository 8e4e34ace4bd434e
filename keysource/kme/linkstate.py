"""The QKD link's durable state, kept in the KME's key pool file (issue 15, crash safety).

What both ends of a link must agree on (authentication key streams, block numbers, a block
awaiting commit: see keysource.qkd.durable) is one opaque blob per link end, in the
``link_state`` table of the pool file. It is replaced in the very SQLite transaction that
stores the keys of the same protocol step (:meth:`KeyPool.add_keys` with ``link_state``), so
after ``kill -9`` the pool and the link state always match: a block's keys and its
authentication key refill are either both there or both absent.

The link's store is keysource.kme.link.PoolLinkState. The blob holds unused authentication
key: the pool file (mode 0600) already holds key material, and the old ``link-auth.state``
file it replaces held the same.
"""

from __future__ import annotations

import sqlite3
import time

# pool schema version 4 (keysource.kme.pool.POOL_SCHEMA)
LINK_STATE_SQL = """
CREATE TABLE IF NOT EXISTS link_state (
    name    TEXT PRIMARY KEY,  -- which link end (one KME may run several links one day)
    state   BLOB NOT NULL,     -- keysource.qkd endpoint state (export_state)
    updated REAL NOT NULL      -- time.time() of the last change
);
"""

DEFAULT_LINK = "qkd-link"


def write(db: sqlite3.Connection, name: str, state: bytes) -> None:
    """Replace a link end's state (inside the caller's transaction)."""
    db.execute("INSERT OR REPLACE INTO link_state (name, state, updated) VALUES (?, ?, ?)",
               (name, bytes(state), time.time()))


def read(db: sqlite3.Connection, name: str) -> bytes | None:
    row = db.execute("SELECT state FROM link_state WHERE name = ?", (name,)).fetchone()
    return None if row is None else bytes(row[0])
