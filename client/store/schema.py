"""The profile store's tables, version by version (see keysource.sqlite_schema)."""

from __future__ import annotations

import sqlite3

from keysource.sqlite_schema import Migration, Schema

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS secrets (name TEXT PRIMARY KEY, sealed BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS contacts (peer TEXT PRIMARY KEY, sealed BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (peer TEXT PRIMARY KEY, sealed BLOB NOT NULL,
                                     updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, peer TEXT NOT NULL,
                                   message_id TEXT NOT NULL UNIQUE, sealed BLOB NOT NULL,
                                   created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS history (id INTEGER PRIMARY KEY AUTOINCREMENT, peer TEXT NOT NULL,
                                    sealed BLOB NOT NULL, created REAL NOT NULL);
CREATE INDEX IF NOT EXISTS history_peer ON history (peer, id);
CREATE TABLE IF NOT EXISTS received (peer TEXT NOT NULL, message_id TEXT NOT NULL,
                                     PRIMARY KEY (peer, message_id));
CREATE TABLE IF NOT EXISTS transfers (id TEXT PRIMARY KEY, sealed BLOB NOT NULL,
                                      created REAL NOT NULL);
"""


def _mirror_version(db: sqlite3.Connection, version: int) -> None:
    """Keep ``meta.schema`` equal to the version: qsecret before versioned stores refuses a
    store whose ``meta.schema`` is not ``1``, so it cannot damage a newer one."""
    db.execute("UPDATE meta SET value = ? WHERE name = 'schema'", (str(version).encode(),))


# Version 2: groups (issue 18). ``groups`` holds each group's signed membership log,
# ``group_keys`` this member's and the others' sender keys (rewritten with every group
# message, so apart from the log), ``group_outbox`` group messages not yet confirmed by the
# relay (one upload for all recipients). A group's history rows and received IDs live in
# ``history``/``received`` under the keyed name of ``group:<hex ID>``.
GROUPS_V2 = """
CREATE TABLE groups (id TEXT PRIMARY KEY, sealed BLOB NOT NULL, updated REAL NOT NULL);
CREATE TABLE group_keys (id TEXT PRIMARY KEY, sealed BLOB NOT NULL, updated REAL NOT NULL);
CREATE TABLE group_outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, grp TEXT NOT NULL,
                           message_id TEXT NOT NULL UNIQUE, sealed BLOB NOT NULL,
                           created REAL NOT NULL);
"""

# Version 3: delivered/read receipts of this member's own group messages (issue 18): one row
# per message sent, keyed by the group and the text's payload ID (keyed names, as the other
# tables), holding who it went to and who confirmed delivery and reading.
GROUP_RECEIPTS_V3 = """
CREATE TABLE group_receipts (id TEXT PRIMARY KEY, grp TEXT NOT NULL, sealed BLOB NOT NULL,
                             created REAL NOT NULL);
CREATE INDEX group_receipts_grp ON group_receipts (grp, created);
"""

# Version 1 is the schema above (files from before versions were recorded hold it); later
# changes are appended to ``migrations`` (see keysource.sqlite_schema).
STORE_SCHEMA = Schema(
    kind="profile store",
    baseline=SCHEMA,
    marker_tables=frozenset({"secrets", "contacts", "sessions", "history"}),
    migrations=(
        Migration(2, "groups: membership logs, sender keys, group outbox", sql=GROUPS_V2),
        Migration(3, "group receipts: who got and read each own group message",
                  sql=GROUP_RECEIPTS_V3),
    ),
    mirror=_mirror_version,
)
SCHEMA_VERSION = STORE_SCHEMA.version

# Tables of sealed rows, with the context each row is sealed under (None: the row's name).
SEALED_TABLES: dict[str, str | None] = {
    "secrets": None, "contacts": "contact", "sessions": "session", "outbox": "outbox",
    "history": "history", "transfers": "transfer",
    "groups": "group", "group_keys": "group_keys", "group_outbox": "group_outbox",
    "group_receipts": "group_receipts",
}
