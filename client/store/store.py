"""The local store: one SQLite file, every secret and every message sealed under the passphrase.

What is kept (all values sealed, row names keyed-hashed):
    identity        our handle and private identity
    prekeys         our published bundle and its private halves
    contacts        pinned peer identities (and whether the safety number was verified)
    sessions        each conversation's session state (ratchet, OTP pad)
    outbox          sealed wire messages not yet acknowledged by the transport
    history         decrypted and sent messages
    received        ids of messages already processed (de-duplication, persisted)
    groups          each group's signed membership log (schema version 2)
    group_keys      each group's sender keys: this member's chain and the others'
    group_outbox    group messages (one upload for every member) not yet acknowledged
    group_receipts  who each own group message went to, and who got and read it (version 3)

Crash safety of sending: ``commit_outgoing`` writes the new session state, the
outbox entry and the history line in ONE transaction, and only then may the
caller hand the wire bytes to the transport; ``mark_sent`` removes the outbox
entry once the relay acknowledged it; after a restart ``outbox()`` lists what
to resend. A crash before the commit loses a message that never left (its key
is reused for the next message, which is safe: the old ciphertext was never
seen); a crash after it resends the same bytes (the peer de-duplicates).
Nothing is ever sent under a state that was not durably stored first.

Damage (bit rot, truncation, a bad copy) is found before anything writes: :meth:`Store.open`
first checks the file's SQLite header (magic, page size, truncation) with a plain read, then
opens it read-only to run SQLite's ``quick_check``, tell a damaged KDF/check record from a
wrong passphrase (see :mod:`client.store.sealed`) and open the identity and prekeys; only a
file that passes is opened for writing (and migrated); see :mod:`client.store.check`. Every
failure is a :class:`CorruptStore` naming the file and what is wrong. Afterwards a damaged history,
session, outbox or transfer row costs that row only: lists skip it and log one warning with a
count; a damaged contact or session raises :class:`DamagedRow` for that peer alone.
:func:`~client.store.check.inspect_store` (``qsecret doctor --store``) lists every damaged
row without writing.
"""

from __future__ import annotations

import logging
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
from keysource.sqlite_schema import SchemaError, inspect_schema, open_schema

from .check import Damage, add_unlock_tag, damaged, damaged_rows, is_damage, unlock, verify
from .schema import SCHEMA, SCHEMA_VERSION, STORE_SCHEMA
from .sealed import (
    CHECK_PLAINTEXT,
    CorruptStore,
    DamagedRow,
    KdfParams,
    Sealer,
    StoreError,
    unlock_tag,
)

__all__ = ["SCHEMA", "SCHEMA_VERSION", "STORE_SCHEMA", "Contact", "GroupOutboxEntry",
           "GroupReceipts", "HistoryEntry", "OutboxEntry", "ReceiptOutcome", "Store",
           "default_path", "group_key"]

log = logging.getLogger("qsecret.store")


def group_key(group_id: bytes) -> str:
    """The name a group's rows go under in ``history`` and ``received``."""
    return "group:" + group_id.hex()


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
class GroupOutboxEntry:
    id: int
    group_id: bytes
    message_id: str
    recipients: tuple[str, ...]
    wire: bytes


@dataclass(frozen=True)
class GroupReceipts:
    """Who one of our group messages went to, and who confirmed getting and reading it."""

    message_id: str  # the text's payload ID (what receipts name)
    recipients: tuple[str, ...]
    delivered: frozenset[str]  # includes those who read it
    read: frozenset[str]


@dataclass(frozen=True)
class ReceiptOutcome:
    """What one member's receipt did: the messages whose counts moved, and what was refused."""

    changed: tuple[GroupReceipts, ...] = ()
    unknown: int = 0  # ids of no message of ours in this group
    not_recipient: int = 0  # ids of messages that did not go to this member


@dataclass(frozen=True)
class HistoryEntry:
    direction: str  # "in" or "out"
    message_id: str
    plaintext: bytes
    label: str
    created: float
    sender: str = ""  # a group message's sender ("" in a direct conversation)

    def __repr__(self) -> str:  # never print plaintext
        return f"HistoryEntry({self.direction}, {self.message_id!r}, bytes={len(self.plaintext)})"


@dataclass(frozen=True)
class Contact:
    handle: str
    identity: PublicIdentity
    verified: bool
    added_by_me: bool = False  # the user added them (not: they wrote first); calls ring


class Store:
    """The sealed store of one user. Open with :meth:`open`; close when done."""

    def __init__(self, connection: sqlite3.Connection, sealer: Sealer, path: Path) -> None:
        self._db = connection
        self._sealer = sealer
        self.path = path
        self._reported: set[tuple[str, object]] = set()  # damaged rows already logged

    # -- reading rows that may be damaged --------------------------------------------

    def _rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        """``fetchall`` with SQLite damage turned into the store's one clear error."""
        try:
            return self._db.execute(sql, params).fetchall()
        except sqlite3.DatabaseError as exc:
            if is_damage(exc):
                raise damaged(self.path, f"SQLite cannot read it ({exc})") from None
            raise

    def _open_row(self, table: str, row: object, context: str, blob: bytes) -> bytes:
        """The opened blob of one row, or DamagedRow naming the file, table and row."""
        try:
            return self._sealer.open(context, blob)
        except CorruptStore as exc:
            raise DamagedRow(f"{self.path}: {table} row {row} is damaged ({exc}); run "
                             "'qsecret doctor --store' for every damaged row",
                             table, row, self.path) from None

    def _skipped(self, table: str, rows: list[object]) -> None:
        """Log, once per row and process, that damaged rows were left out of a list."""
        fresh = [row for row in rows if (table, row) not in self._reported]
        if not fresh:
            return
        self._reported.update((table, row) for row in fresh)
        log.warning("%s: %d damaged %s row(s) skipped (rows %s); 'qsecret doctor --store' "
                    "lists them", self.path, len(fresh), table, ", ".join(map(str, fresh)))

    def _readable(self, table: str, context: str,
                  rows: list[tuple[object, bytes]]) -> list[bytes]:
        """The opened blobs of ``(row id, blob)`` rows, damaged ones skipped and logged."""
        out, bad = [], []
        for row, blob in rows:
            try:
                out.append(self._sealer.open(context, blob))
            except CorruptStore:
                bad.append(row)
        self._skipped(table, bad)
        return out

    # -- opening ----------------------------------------------------------------------

    @classmethod
    def open(cls, passphrase: str, path: Path | str | None = None, *, create: bool = True,
             opslimit: int | None = None, memlimit: int | None = None) -> Store:
        """Open (or create) the store; WrongPassphrase when the passphrase does not open it,
        CorruptStore (naming the file and the damage) when it is damaged: then nothing was
        written to it.

        ``opslimit``/``memlimit`` (Argon2id cost) apply when creating; tests pass the minimum.
        """
        path = Path(path) if path is not None else default_path()
        exists = path.exists()
        if not exists and not create:
            raise StoreError(f"no store at {path}: run 'qsecret init' first")
        # Every check that can fail runs read-only first (header, structure, passphrase,
        # identity): a wrong passphrase, a newer file or a damaged one stays byte-for-byte.
        verified = verify(passphrase, path) if exists else None
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Opened off the event loop (Argon2id is slow), then used from the loop: one user
        # at a time, never concurrently, so crossing threads is safe here.
        db = sqlite3.connect(path, isolation_level=None, timeout=10, check_same_thread=False)
        try:
            try:
                found = inspect_schema(db, STORE_SCHEMA, path)  # refuses a newer file
                sealer = verified
                if found and sealer is None:  # created by another process meanwhile
                    sealer = unlock(db, passphrase, path)
                open_schema(db, STORE_SCHEMA, path, pragmas=(
                    "PRAGMA journal_mode=WAL",
                    "PRAGMA synchronous=FULL",  # committed state survives power loss
                ))
            except SchemaError as exc:
                raise StoreError(str(exc)) from exc
            if sealer is None:
                params = KdfParams.fresh(opslimit, memlimit)
                sealer = Sealer(passphrase, params)
                kdf = cbor2.dumps([params.salt, params.opslimit, params.memlimit])
                check = sealer.seal("check", CHECK_PLAINTEXT)
                db.execute("BEGIN IMMEDIATE")
                db.executemany("INSERT INTO meta VALUES (?, ?)", [
                    ("schema", str(SCHEMA_VERSION).encode()),
                    ("kdf", kdf),
                    ("check", check),
                    ("unlock_tag", unlock_tag(kdf, check)),
                ])
                db.execute("COMMIT")
                path.chmod(0o600)
            else:
                add_unlock_tag(db)
        except sqlite3.DatabaseError as exc:
            db.close()
            if is_damage(exc):
                raise damaged(path, f"SQLite cannot read it ({exc})") from None
            raise
        except BaseException:
            db.close()
            raise
        return cls(db, sealer, path)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """All-or-nothing: commit on success, roll back on any exception. SQLite finding the
        file damaged mid-way is the store's one clear error (CorruptStore), not a traceback."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            if is_damage(exc):
                raise damaged(self.path, f"SQLite cannot read it ({exc})",
                              written=True) from None
            raise

    def _checkpoint(self, name: str) -> None:
        """Called at each step of the critical paths; tests override it to inject crashes."""

    # -- identity and prekeys ---------------------------------------------------------

    def _put_secret(self, db: sqlite3.Connection, name: str, data: bytes) -> None:
        db.execute("INSERT OR REPLACE INTO secrets VALUES (?, ?)",
                   (name, self._sealer.seal(name, data)))

    def _get_secret(self, name: str) -> bytes | None:
        rows = self._rows("SELECT sealed FROM secrets WHERE name = ?", (name,))
        if not rows:
            return None
        try:
            return self._sealer.open(name, rows[0][0])
        except CorruptStore:
            raise damaged(self.path, f"the sealed {name} does not open") from None

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
                     verified: bool = False, added_by_me: bool = False) -> None:
        """Pin (or re-pin) a contact. The sealed record is ``[handle, identity, verified,
        added_by_me]``; records from before the mark have three fields (not added)."""
        record = [handle, identity.encode(), verified, added_by_me]
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO contacts VALUES (?, ?)", (
                self._sealer.name(handle), self._sealer.seal("contact", cbor2.dumps(record)),
            ))

    def contact(self, handle: str) -> Contact | None:
        """The pinned contact, None if unknown; DamagedRow if its row is damaged (its pinned
        identity is unknown: never treated as absent, which would re-pin whatever comes)."""
        peer = self._sealer.name(handle)
        rows = self._rows("SELECT sealed FROM contacts WHERE peer = ?", (peer,))
        if not rows:
            return None
        try:
            name, identity, verified, *rest = cbor2.loads(
                self._open_row("contacts", f"of {handle}", "contact", rows[0][0]))
        except DamagedRow:
            self._skipped("contacts", [f"of {handle}"])
            raise
        added_by_me = bool(rest[0]) if rest else False  # a record from before the mark
        return Contact(name, PublicIdentity.decode(identity), verified, added_by_me)

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
        rows = self._rows("SELECT sealed FROM sessions WHERE peer = ?",
                          (self._sealer.name(peer),))
        if not rows:
            return None
        name, state = cbor2.loads(self._open_row("sessions", f"of {peer}", "session",
                                                 rows[0][0]))
        if name != peer:
            raise CorruptStore(f"session row of {peer!r} holds another peer's state")
        return Session.from_bytes(state)

    def peers(self) -> list[str]:
        """Peers with a session, most recent first (a damaged session row is skipped)."""
        rows = self._rows("SELECT rowid, sealed FROM sessions ORDER BY updated DESC")
        return [cbor2.loads(blob)[0] for blob in self._readable("sessions", "session", rows)]

    def accept_session(self, peer: str, session: Session, secrets: PrekeySecrets,
                       bundle: PrekeyBundle, message_id: str, messages: list[Message]) -> None:
        """Store a new responder session, the reduced prekey secrets and its first messages."""
        with self.transaction() as db:
            self._put_secret(db, "prekeys", cbor2.dumps([bundle.encode(), secrets.to_dict()]))
            self._incoming(db, peer, session, message_id, messages)

    # -- the crash-safe paths ---------------------------------------------------------

    def commit_outgoing(self, peer: str, session: Session, outgoing: Outgoing,
                        plaintext: bytes | None) -> int:
        """Persist the advanced session, the outbox entry and history atomically
        (``plaintext`` None: no history row, e.g. a call's rekey message).

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
            if plaintext is not None:
                self._history(db, peer, "out", outgoing.message_id, plaintext, outgoing.label)
            self._checkpoint("outgoing:history")
        self._checkpoint("outgoing:committed")
        return int(cursor.lastrowid or 0)

    def outbox(self) -> list[OutboxEntry]:
        """Messages committed but not yet acknowledged by the transport: resend these."""
        out, bad = [], []
        for row_id, message_id, sealed in self._rows(
                "SELECT id, message_id, sealed FROM outbox ORDER BY id"):
            try:
                peer, wire = cbor2.loads(self._sealer.open("outbox", sealed))
            except CorruptStore:
                bad.append(row_id)
                continue
            out.append(OutboxEntry(row_id, peer, message_id, wire))
        self._skipped("outbox", bad)
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
                 plaintext: bytes, label: str, sender: str = "") -> None:
        now = time.time()
        row = [direction, message_id, plaintext, label, now] + ([sender] if sender else [])
        db.execute("INSERT INTO history (peer, sealed, created) VALUES (?, ?, ?)", (
            self._sealer.name(peer), self._sealer.seal("history", cbor2.dumps(row)), now,
        ))

    # -- groups (schema version 2) ----------------------------------------------------

    def _group_rows(self, db: sqlite3.Connection, group_id: bytes,
                    log: dict[str, Any] | None, keys: dict[str, Any]) -> None:
        name, now = self._sealer.name(group_key(group_id)), time.time()
        if log is not None:
            db.execute("INSERT OR REPLACE INTO groups VALUES (?, ?, ?)", (
                name, self._sealer.seal("group", cbor2.dumps([group_id, log])), now))
        db.execute("INSERT OR REPLACE INTO group_keys VALUES (?, ?, ?)", (
            name, self._sealer.seal("group_keys", cbor2.dumps([group_id, keys])), now))

    def save_group(self, group_id: bytes, log: dict[str, Any] | None,
                   keys: dict[str, Any]) -> None:
        """A group's membership log (None: unchanged) and its sender keys, together."""
        with self.transaction() as db:
            self._group_rows(db, group_id, log, keys)

    def load_group(self, group_id: bytes) -> tuple[dict[str, Any] | None, dict[str, Any]] | None:
        """(log, keys) of a group; log None for a group known only by parked records."""
        name = self._sealer.name(group_key(group_id))
        keys = self._rows("SELECT sealed FROM group_keys WHERE id = ?", (name,))
        if not keys:
            return None
        stored_id, key_state = cbor2.loads(self._open_row("group_keys", group_id.hex(),
                                                          "group_keys", keys[0][0]))
        logs = self._rows("SELECT sealed FROM groups WHERE id = ?", (name,))
        log_state = None
        if logs:
            log_id, log_state = cbor2.loads(self._open_row("groups", group_id.hex(), "group",
                                                           logs[0][0]))
            if log_id != group_id:
                raise CorruptStore(f"group row {group_id.hex()} holds another group")
        if stored_id != group_id:
            raise CorruptStore(f"group key row {group_id.hex()} holds another group")
        return log_state, key_state

    def group_ids(self) -> list[bytes]:
        """Every group with a row, most recently changed first (damaged rows skipped)."""
        rows = self._rows("SELECT rowid, sealed FROM group_keys ORDER BY updated DESC")
        return [cbor2.loads(blob)[0] for blob in self._readable("group_keys", "group_keys",
                                                                 rows)]

    def commit_group_outgoing(self, group_id: bytes, keys: dict[str, Any], message_id: str,
                              recipients: tuple[str, ...], wire: bytes,
                              plaintext: bytes, label: str, *, text_id: str = "") -> int:
        """The advanced sender key, the group outbox entry and the history row at once
        (before the wire may leave); returns the id for :meth:`mark_group_sent`. With
        ``text_id`` (the text's payload ID), its receipts row too (who it goes to)."""
        with self.transaction() as db:
            if text_id:
                self._receipt_row(db, group_id, GroupReceipts(text_id, tuple(recipients),
                                                              frozenset(), frozenset()))
            self._group_rows(db, group_id, None, keys)
            cursor = db.execute(
                "INSERT INTO group_outbox (grp, message_id, sealed, created) VALUES (?, ?, ?, ?)",
                (self._sealer.name(group_key(group_id)), message_id,
                 self._sealer.seal("group_outbox", cbor2.dumps(
                     [group_id, list(recipients), wire])), time.time()))
            self._history(db, group_key(group_id), "out", message_id, plaintext, label)
        return int(cursor.lastrowid or 0)

    def group_outbox(self) -> list[GroupOutboxEntry]:
        out, bad = [], []
        for row_id, message_id, sealed in self._rows(
                "SELECT id, message_id, sealed FROM group_outbox ORDER BY id"):
            try:
                group_id, recipients, wire = cbor2.loads(self._sealer.open("group_outbox", sealed))
            except CorruptStore:
                bad.append(row_id)
                continue
            out.append(GroupOutboxEntry(row_id, group_id, message_id, tuple(recipients), wire))
        self._skipped("group_outbox", bad)
        return out

    def mark_group_sent(self, outbox_id: int) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM group_outbox WHERE id = ?", (outbox_id,))

    def commit_group_incoming(self, group_id: bytes, keys: dict[str, Any], message_id: str,
                              sender: str, plaintext: bytes, label: str) -> bool:
        """Record a group message as processed, the advanced sender key and the plaintext at
        once; False (nothing stored) when ``message_id`` was processed before."""
        key = group_key(group_id)
        with self.transaction() as db:
            try:
                db.execute("INSERT INTO received VALUES (?, ?)", (self._sealer.name(key),
                                                                  message_id))
            except sqlite3.IntegrityError:
                return False
            self._group_rows(db, group_id, None, keys)
            self._history(db, key, "in", message_id, plaintext, label, sender)
        return True

    def _receipt_name(self, group_id: bytes, text_id: str) -> str:
        return self._sealer.name(f"{group_key(group_id)}/{text_id}")

    def _receipt_row(self, db: sqlite3.Connection, group_id: bytes,
                     receipts: GroupReceipts) -> None:
        blob = self._sealer.seal("group_receipts", cbor2.dumps([
            group_id, receipts.message_id, list(receipts.recipients),
            sorted(receipts.delivered), sorted(receipts.read)]))
        db.execute("INSERT INTO group_receipts (id, grp, sealed, created) VALUES (?, ?, ?, ?) "
                   "ON CONFLICT(id) DO UPDATE SET sealed = excluded.sealed", (
                       self._receipt_name(group_id, receipts.message_id),
                       self._sealer.name(group_key(group_id)), blob, time.time()))

    @staticmethod
    def _receipts_of(blob: bytes) -> tuple[bytes, GroupReceipts]:
        group_id, text_id, recipients, delivered, read = cbor2.loads(blob)
        return group_id, GroupReceipts(text_id, tuple(recipients), frozenset(delivered),
                                       frozenset(read))

    def group_receipts(self, group_id: bytes) -> dict[str, GroupReceipts]:
        """Text payload ID -> receipts, for every group message of ours with a row (damaged
        rows skipped and logged)."""
        rows = self._rows("SELECT rowid, sealed FROM group_receipts WHERE grp = ? "
                          "ORDER BY created", (self._sealer.name(group_key(group_id)),))
        out = {}
        for blob in self._readable("group_receipts", "group_receipts", rows):
            stored_id, receipts = self._receipts_of(blob)
            if stored_id == group_id:
                out[receipts.message_id] = receipts
        return out

    def record_group_receipts(self, group_id: bytes, member: str, state: str,
                              text_ids: list[str]) -> ReceiptOutcome:
        """``member`` got (``delivered``) or read these texts of ours, in one transaction:
        only for messages that went to them; the rest is counted, never raised. Read
        implies delivered."""
        changed: list[GroupReceipts] = []
        unknown = not_recipient = 0
        with self.transaction() as db:
            for text_id in dict.fromkeys(text_ids):
                row = db.execute("SELECT rowid, sealed FROM group_receipts WHERE id = ?",
                                 (self._receipt_name(group_id, text_id),)).fetchone()
                if row is None:
                    unknown += 1
                    continue
                try:
                    stored_id, receipts = self._receipts_of(
                        self._sealer.open("group_receipts", row[1]))
                except CorruptStore:
                    self._skipped("group_receipts", [row[0]])
                    unknown += 1
                    continue
                if stored_id != group_id or receipts.message_id != text_id:
                    unknown += 1
                    continue
                if member not in receipts.recipients:
                    not_recipient += 1
                    continue
                read = receipts.read | {member} if state == "read" else receipts.read
                updated = GroupReceipts(text_id, receipts.recipients,
                                        receipts.delivered | {member}, read)
                if updated != receipts:
                    self._receipt_row(db, group_id, updated)
                    changed.append(updated)
        return ReceiptOutcome(tuple(changed), unknown, not_recipient)

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

    def claim_transfer(self, transfer_id: str, expected_state: str,
                       record: dict[str, Any]) -> dict[str, Any] | None:
        """Save ``record`` only if the stored record is still in ``expected_state``; else
        return the stored record and change nothing. One transaction (BEGIN IMMEDIATE), so
        of two qsecret processes on this profile (a chat window and ``receive-files``)
        accepting one offer, exactly one wins."""
        blob = self._sealer.seal("transfer", cbor2.dumps(record))
        name = self._sealer.name(transfer_id)
        with self.transaction() as db:
            row = db.execute("SELECT sealed FROM transfers WHERE id = ?", (name,)).fetchone()
            if row is not None:
                stored = cbor2.loads(self._open_row("transfers", name, "transfer", row[0]))
                if stored.get("state") != expected_state:
                    return stored
            db.execute(
                "INSERT INTO transfers (id, sealed, created) VALUES (?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET sealed = excluded.sealed",
                (name, blob, time.time()),
            )
        return None

    def transfers(self) -> list[dict[str, Any]]:
        """Every persisted transfer record, oldest first."""
        rows = self._rows("SELECT rowid, sealed FROM transfers ORDER BY created")
        return [cbor2.loads(blob) for blob in self._readable("transfers", "transfer", rows)]

    def delete_transfer(self, transfer_id: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM transfers WHERE id = ?", (self._sealer.name(transfer_id),))

    def history(self, peer: str, limit: int = 200) -> list[HistoryEntry]:
        """The last ``limit`` messages with ``peer``, oldest first; a damaged row is skipped
        (and logged once, with the count): the rest of the conversation stays readable."""
        rows = self._rows(
            "SELECT id, sealed FROM history WHERE peer = ? ORDER BY id DESC LIMIT ?",
            (self._sealer.name(peer), limit),
        )
        blobs = self._readable("history", "history", rows)
        return [HistoryEntry(*cbor2.loads(blob)) for blob in reversed(blobs)]

    def damaged_rows(self) -> list[Damage]:
        """Every row whose sealed blob does not open (what ``qsecret doctor --store`` shows)."""
        return damaged_rows(self._db, self._sealer)
