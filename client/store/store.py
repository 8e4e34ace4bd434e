"""The local store: one SQLite file, every secret and every message sealed under the passphrase.

What is kept (all values sealed, row names keyed-hashed):
    identity        our handle and private identity
    prekeys         our published bundle and its private halves
    contacts        pinned peer identities (and whether the safety number was verified)
    sessions        each conversation's session state (ratchet, OTP pad)
    outbox          sealed wire messages not yet acknowledged by the transport
    history         decrypted and sent messages
    received        ids of messages already processed (de-duplication, persisted)

Crash safety of sending: ``commit_outgoing`` writes the new session state, the
outbox entry and the history line in ONE transaction, and only then may the
caller hand the wire bytes to the transport; ``mark_sent`` removes the outbox
entry once the relay acknowledged it; after a restart ``outbox()`` lists what
to resend. A crash before the commit loses a message that never left (its key
is reused for the next message, which is safe: the old ciphertext was never
seen); a crash after it resends the same bytes (the peer de-duplicates).
Nothing is ever sent under a state that was not durably stored first.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2
import platformdirs

from client.protocol.bundle import PrekeyBundle, PrekeySecrets, parse_bundle
from client.protocol.identity import Identity, PublicIdentity
from client.protocol.session import Message, Outgoing, Session
from keysource.sqlite_schema import Schema, SchemaError, inspect_schema, open_schema

from .sealed import CHECK_PLAINTEXT, CorruptStore, KdfParams, Sealer, StoreError, WrongPassphrase

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


# Version 1 is the schema above (files from before versions were recorded hold it); later
# changes are appended to ``migrations`` (see keysource.sqlite_schema).
STORE_SCHEMA = Schema(
    kind="profile store",
    baseline=SCHEMA,
    marker_tables=frozenset({"secrets", "contacts", "sessions", "history"}),
    migrations=(),
    mirror=_mirror_version,
)
SCHEMA_VERSION = STORE_SCHEMA.version


def default_path() -> Path:
    """``<platform data dir>/qsecret/store.sqlite3`` (e.g. ~/.local/share on Linux)."""
    return platformdirs.user_data_path("qsecret") / "store.sqlite3"


@dataclass(frozen=True)
class OutboxEntry:
    id: int
    peer: str
    message_id: str
    wire: bytes


@dataclass(frozen=True)
class HistoryEntry:
    direction: str  # "in" or "out"
    message_id: str
    plaintext: bytes
    label: str
    created: float

    def __repr__(self) -> str:  # never print plaintext
        return f"HistoryEntry({self.direction}, {self.message_id!r}, bytes={len(self.plaintext)})"


@dataclass(frozen=True)
class Contact:
    handle: str
    identity: PublicIdentity
    verified: bool


class Store:
    """The sealed store of one user. Open with :meth:`open`; close when done."""

    def __init__(self, connection: sqlite3.Connection, sealer: Sealer, path: Path) -> None:
        self._db = connection
        self._sealer = sealer
        self.path = path

    # -- opening ----------------------------------------------------------------------

    @classmethod
    def open(cls, passphrase: str, path: Path | str | None = None, *, create: bool = True,
             opslimit: int | None = None, memlimit: int | None = None) -> Store:
        """Open (or create) the store; WrongPassphrase when the passphrase does not open it.

        ``opslimit``/``memlimit`` (Argon2id cost) apply when creating; tests pass the minimum.
        """
        path = Path(path) if path is not None else default_path()
        if not path.exists() and not create:
            raise StoreError(f"no store at {path}: run 'qsecret init' first")
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Opened off the event loop (Argon2id is slow), then used from the loop: one user
        # at a time, never concurrently, so crossing threads is safe here.
        db = sqlite3.connect(path, isolation_level=None, timeout=10, check_same_thread=False)
        try:
            try:
                found = inspect_schema(db, STORE_SCHEMA, path)  # refuses a newer file
                # The passphrase is checked before a migration writes anything, so a wrong
                # one leaves an older file untouched too.
                sealer = cls._unlock(db, passphrase, path) if found else None
                open_schema(db, STORE_SCHEMA, path, pragmas=(
                    "PRAGMA journal_mode=WAL",
                    "PRAGMA synchronous=FULL",  # committed state survives power loss
                ))
            except SchemaError as exc:
                raise StoreError(str(exc)) from exc
            if sealer is None:
                params = KdfParams.fresh(opslimit, memlimit)
                sealer = Sealer(passphrase, params)
                db.execute("BEGIN IMMEDIATE")
                db.executemany("INSERT INTO meta VALUES (?, ?)", [
                    ("schema", str(SCHEMA_VERSION).encode()),
                    ("kdf", cbor2.dumps([params.salt, params.opslimit, params.memlimit])),
                    ("check", sealer.seal("check", CHECK_PLAINTEXT)),
                ])
                db.execute("COMMIT")
                path.chmod(0o600)
        except BaseException:
            db.close()
            raise
        return cls(db, sealer, path)

    @staticmethod
    def _unlock(db: sqlite3.Connection, passphrase: str, path: Path) -> Sealer | None:
        """The sealer of an existing store, or None when it was never initialised.

        Reads only ``meta`` (kdf, check), whose layout every schema version keeps.
        """
        meta = dict(db.execute("SELECT name, value FROM meta").fetchall())
        if not meta:
            return None
        salt, ops, mem = cbor2.loads(meta["kdf"])
        sealer = Sealer(passphrase, KdfParams(salt, ops, mem))
        try:
            check = sealer.open("check", meta["check"])
        except CorruptStore:
            raise WrongPassphrase(
                f"wrong passphrase for the store at {path} (nothing was changed)"
            ) from None
        if check != CHECK_PLAINTEXT:
            raise WrongPassphrase(f"wrong passphrase for the store at {path}")
        return sealer

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """All-or-nothing: commit on success, roll back on any exception."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _checkpoint(self, name: str) -> None:
        """Called at each step of the critical paths; tests override it to inject crashes."""

    # -- identity and prekeys ---------------------------------------------------------

    def _put_secret(self, db: sqlite3.Connection, name: str, data: bytes) -> None:
        db.execute("INSERT OR REPLACE INTO secrets VALUES (?, ?)",
                   (name, self._sealer.seal(name, data)))

    def _get_secret(self, name: str) -> bytes | None:
        row = self._db.execute("SELECT sealed FROM secrets WHERE name = ?", (name,)).fetchone()
        return None if row is None else self._sealer.open(name, row[0])

    def save_identity(self, handle: str, identity: Identity) -> None:
        with self.transaction() as db:
            self._put_secret(db, "identity", cbor2.dumps([handle, identity.encode_private()]))

    def load_identity(self) -> tuple[str, Identity] | None:
        data = self._get_secret("identity")
        if data is None:
            return None
        handle, private = cbor2.loads(data)
        return handle, Identity.decode_private(private)

    def save_prekeys(self, bundle: PrekeyBundle, secrets: PrekeySecrets) -> None:
        with self.transaction() as db:
            self._put_secret(db, "prekeys", cbor2.dumps([bundle.encode(), secrets.to_dict()]))

    def load_prekeys(self) -> tuple[PrekeyBundle, PrekeySecrets] | None:
        data = self._get_secret("prekeys")
        if data is None:
            return None
        bundle, secrets = cbor2.loads(data)
        return parse_bundle(bundle), PrekeySecrets.from_dict(secrets)

    # -- contacts ---------------------------------------------------------------------

    def pin_identity(self, handle: str, identity: PublicIdentity, *,
                     verified: bool = False) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO contacts VALUES (?, ?)", (
                self._sealer.name(handle),
                self._sealer.seal("contact", cbor2.dumps([handle, identity.encode(), verified])),
            ))

    def contact(self, handle: str) -> Contact | None:
        row = self._db.execute("SELECT sealed FROM contacts WHERE peer = ?",
                               (self._sealer.name(handle),)).fetchone()
        if row is None:
            return None
        name, identity, verified = cbor2.loads(self._sealer.open("contact", row[0]))
        return Contact(name, PublicIdentity.decode(identity), verified)

    # -- sessions ---------------------------------------------------------------------

    def _session_row(self, db: sqlite3.Connection, peer: str, session: Session) -> None:
        db.execute("INSERT OR REPLACE INTO sessions VALUES (?, ?, ?)", (
            self._sealer.name(peer),
            self._sealer.seal("session", cbor2.dumps([peer, session.to_bytes()])),
            time.time(),
        ))

    def save_session(self, peer: str, session: Session) -> None:
        with self.transaction() as db:
            self._session_row(db, peer, session)

    def load_session(self, peer: str) -> Session | None:
        row = self._db.execute("SELECT sealed FROM sessions WHERE peer = ?",
                               (self._sealer.name(peer),)).fetchone()
        if row is None:
            return None
        name, state = cbor2.loads(self._sealer.open("session", row[0]))
        if name != peer:
            raise CorruptStore(f"session row of {peer!r} holds another peer's state")
        return Session.from_bytes(state)

    def peers(self) -> list[str]:
        rows = self._db.execute("SELECT sealed FROM sessions ORDER BY updated DESC").fetchall()
        return [cbor2.loads(self._sealer.open("session", row[0]))[0] for row in rows]

    def accept_session(self, peer: str, session: Session, secrets: PrekeySecrets,
                       bundle: PrekeyBundle, message_id: str, messages: list[Message]) -> None:
        """Store a new responder session, the reduced prekey secrets and its first messages."""
        with self.transaction() as db:
            self._put_secret(db, "prekeys", cbor2.dumps([bundle.encode(), secrets.to_dict()]))
            self._incoming(db, peer, session, message_id, messages)

    # -- the crash-safe paths ---------------------------------------------------------

    def commit_outgoing(self, peer: str, session: Session, outgoing: Outgoing,
                        plaintext: bytes) -> int:
        """Persist the advanced session, the outbox entry and history atomically.

        Call after ``session.encrypt`` and BEFORE handing ``outgoing.wire`` to the
        transport. Returns the outbox id to pass to :meth:`mark_sent`.
        """
        peer_key = self._sealer.name(peer)
        with self.transaction() as db:
            self._checkpoint("outgoing:begin")
            self._session_row(db, peer, session)
            self._checkpoint("outgoing:session")
            cursor = db.execute(
                "INSERT INTO outbox (peer, message_id, sealed, created) VALUES (?, ?, ?, ?)",
                (peer_key, outgoing.message_id,
                 self._sealer.seal("outbox", cbor2.dumps([peer, outgoing.wire])), time.time()),
            )
            self._checkpoint("outgoing:outbox")
            self._history(db, peer, "out", outgoing.message_id, plaintext, outgoing.label)
            self._checkpoint("outgoing:history")
        self._checkpoint("outgoing:committed")
        return int(cursor.lastrowid or 0)

    def outbox(self) -> list[OutboxEntry]:
        """Messages committed but not yet acknowledged by the transport: resend these."""
        out = []
        for row_id, message_id, sealed in self._db.execute(
                "SELECT id, message_id, sealed FROM outbox ORDER BY id"):
            peer, wire = cbor2.loads(self._sealer.open("outbox", sealed))
            out.append(OutboxEntry(row_id, peer, message_id, wire))
        return out

    def mark_sent(self, outbox_id: int) -> None:
        """The transport acknowledged the message: drop it from the outbox."""
        with self.transaction() as db:
            db.execute("DELETE FROM outbox WHERE id = ?", (outbox_id,))

    def seen(self, peer: str, message_id: str) -> bool:
        """Whether a received message was already processed (persisted de-duplication)."""
        return self._db.execute(
            "SELECT 1 FROM received WHERE peer = ? AND message_id = ?",
            (self._sealer.name(peer), message_id),
        ).fetchone() is not None

    def commit_incoming(self, peer: str, session: Session, message_id: str,
                        messages: list[Message]) -> bool:
        """Record a processed message, the advanced session and the plaintexts atomically.

        Returns False (and stores nothing) when ``message_id`` was already processed.
        """
        with self.transaction() as db:
            return self._incoming(db, peer, session, message_id, messages)

    def _incoming(self, db: sqlite3.Connection, peer: str, session: Session, message_id: str,
                  messages: list[Message]) -> bool:
        try:
            db.execute("INSERT INTO received VALUES (?, ?)", (self._sealer.name(peer), message_id))
        except sqlite3.IntegrityError:
            return False
        self._checkpoint("incoming:received")
        self._session_row(db, peer, session)
        for message in messages:
            self._history(db, peer, "in", message.message_id, message.plaintext, message.label)
        self._checkpoint("incoming:history")
        return True

    def _history(self, db: sqlite3.Connection, peer: str, direction: str, message_id: str,
                 plaintext: bytes, label: str) -> None:
        now = time.time()
        db.execute("INSERT INTO history (peer, sealed, created) VALUES (?, ?, ?)", (
            self._sealer.name(peer),
            self._sealer.seal("history", cbor2.dumps([direction, message_id, plaintext, label,
                                                       now])),
            now,
        ))

    # -- file transfers ---------------------------------------------------------------

    def save_transfer(self, transfer_id: str, record: dict[str, Any]) -> None:
        """Persist one transfer's record (manifest, secrets, sources, state), sealed."""
        blob = self._sealer.seal("transfer", cbor2.dumps(record))
        with self.transaction() as db:
            db.execute(
                "INSERT INTO transfers (id, sealed, created) VALUES (?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET sealed = excluded.sealed",
                (self._sealer.name(transfer_id), blob, time.time()),
            )

    def transfers(self) -> list[dict[str, Any]]:
        """Every persisted transfer record, oldest first."""
        rows = self._db.execute("SELECT sealed FROM transfers ORDER BY created").fetchall()
        return [cbor2.loads(self._sealer.open("transfer", row[0])) for row in rows]

    def delete_transfer(self, transfer_id: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM transfers WHERE id = ?", (self._sealer.name(transfer_id),))

    def history(self, peer: str, limit: int = 200) -> list[HistoryEntry]:
        """The last ``limit`` messages with ``peer``, oldest first."""
        rows = self._db.execute(
            "SELECT sealed FROM history WHERE peer = ? ORDER BY id DESC LIMIT ?",
            (self._sealer.name(peer), limit),
        ).fetchall()
        entries = [HistoryEntry(*cbor2.loads(self._sealer.open("history", r[0]))) for r in rows]
        return entries[::-1]
