"""Finding damage in a profile store without writing to it.

:func:`verify` is what :meth:`client.store.store.Store.open` runs before it may write: the
file's SQLite header (magic, page size, truncation) with a plain read, then on a read-only
connection SQLite's ``quick_check``, the KDF/check records (a wrong passphrase told from
damaged records: :mod:`client.store.sealed`) and the vital sealed secrets. Every failure is a
:class:`CorruptStore` naming the file and what is wrong, and the file is left as it was.
:func:`inspect_store` (``qsecret doctor --store``) goes further and lists every damaged row.
"""

from __future__ import annotations

import logging
import sqlite3
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import cbor2

from keysource.sqlite_schema import SchemaError, inspect_schema

from .schema import SEALED_TABLES, STORE_SCHEMA
from .sealed import (
    CHECK_PLAINTEXT,
    CHECK_SEALED_BYTES,
    CorruptStore,
    KdfParams,
    Sealer,
    StoreError,
    WrongPassphrase,
    unlock_tag,
)

log = logging.getLogger("qsecret.store")
RESTORE_HINT = "restore the profile from a backup ('qsecret restore FILE', see the README)"
# SQLite result codes that mean the file itself is damaged (not busy, locked or full).
_DAMAGE_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB,
                           sqlite3.SQLITE_IOERR_SHORT_READ})
SQLITE_MAGIC = b"SQLite format 3\x00"
# The sealed rows without which the profile is not usable (the others cost one row each).
VITAL_SECRETS = ("identity", "prekeys")


def add_unlock_tag(db: sqlite3.Connection) -> None:
    """Give a store from before the checksum its ``unlock_tag`` (called once the passphrase
    opened the check value, so both records are known good)."""
    meta = dict(db.execute(
        "SELECT name, value FROM meta WHERE name IN ('kdf', 'check', 'unlock_tag')"))
    if "unlock_tag" not in meta:
        db.execute("INSERT OR IGNORE INTO meta VALUES ('unlock_tag', ?)",
                   (unlock_tag(meta["kdf"], meta["check"]),))


def is_damage(exc: sqlite3.Error) -> bool:
    """Whether an SQLite error means the file is damaged (not locked, busy or full)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code in _DAMAGE_CODES or (code is None and "malformed" in str(exc))


def damaged(path: Path, what: str, *, written: bool = False) -> CorruptStore:
    """The one error for a damaged store file: which file, what is wrong, what to do."""
    note = "" if written else "nothing was written to it; "
    return CorruptStore(f"{path}: the profile store is damaged: {what}; {note}{RESTORE_HINT}",
                        path)


def header_problem(path: Path) -> str | None:
    """What is wrong with the file's SQLite header, read without SQLite; None if it is fine.

    Catches a damaged header and a truncated file before SQLite sees them (SQLite would say
    "file is not a database", or read zeros past the end and fail later, or treat an empty
    file as a new database and write one). The size is judged only when the WAL is empty:
    no checkpoint can then be changing the file under us.
    """
    size = path.stat().st_size
    with path.open("rb") as file:
        header = file.read(100)
    if size == 0:
        return "the file is empty (truncated to 0 bytes)"
    if len(header) < 100:
        return f"the file is truncated ({size} bytes, shorter than an SQLite header)"
    if header[:16] != SQLITE_MAGIC:
        return "the SQLite header is damaged (it does not start with the SQLite signature)"
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    if page_size < 512 or page_size & (page_size - 1):
        return f"the SQLite header is damaged (page size {page_size})"
    if header[21:24] != b"\x40\x20\x20":
        return "the SQLite header is damaged (payload fractions)"
    wal = path.with_name(path.name + "-wal")
    if wal.exists() and wal.stat().st_size:
        # Frames in the WAL: a checkpoint by another process may be extending the file right
        # now (page 1, with the new size, is written first); quick_check judges the size.
        return None
    pages = int.from_bytes(header[28:32], "big")
    size_valid = pages and header[24:28] == header[92:96]
    if size_valid and size < pages * page_size:
        return (f"the file is truncated ({size} bytes; its header says "
                f"{pages * page_size})")
    if size % page_size:
        return f"the file is truncated or padded ({size} bytes is not whole {page_size}-byte pages)"
    return None


@contextmanager
def read_only(path: Path) -> Iterator[sqlite3.Connection]:
    """A connection that cannot write to the file (SQLite's mode=ro), closed on exit.

    Reading a WAL file read-only makes SQLite create its ``-wal`` and ``-shm`` beside it and,
    being read-only, leave them; when they were not there before and the WAL is still empty,
    a plain connection that only reads is opened and closed so SQLite itself removes them
    (under its own locks: never while another process uses them). Nothing in the database
    file changes: an empty WAL has nothing to copy back.
    """
    sidecars = (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm"))
    had_sidecars = any(p.exists() for p in sidecars)
    uri = f"file:{urllib.parse.quote(str(path.resolve()))}?mode=ro"
    db = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=10,
                         check_same_thread=False)
    try:
        yield db
    finally:
        db.close()
        wal = sidecars[0]
        if not had_sidecars and wal.exists() and wal.stat().st_size == 0:
            tidy = sqlite3.connect(path, isolation_level=None, timeout=0)
            try:
                tidy.execute("SELECT count(*) FROM sqlite_master").fetchone()
            except sqlite3.Error as exc:  # damaged or busy: the empty files stay, harmless
                log.debug("%s: left its empty -wal/-shm (%s)", path, exc)
            finally:
                tidy.close()


def unlock(db: sqlite3.Connection, passphrase: str, path: Path) -> Sealer | None:
    """The sealer of an existing store, or None when it was never initialised. Tells a wrong
    passphrase from damaged KDF parameters or check value (client.store.sealed). Reads only
    ``meta`` (kdf, check, unlock_tag), whose layout every schema version keeps."""
    meta = dict(db.execute("SELECT name, value FROM meta").fetchall())
    if not meta:
        return None
    kdf, check, tag = meta.get("kdf"), meta.get("check"), meta.get("unlock_tag")
    if not isinstance(kdf, bytes) or not isinstance(check, bytes):
        raise damaged(path, "its KDF parameters or passphrase check value are missing")
    if tag is not None and tag != unlock_tag(kdf, check):
        raise damaged(path, "its KDF parameters or passphrase check value are damaged (their "
                            "checksum does not match), so no passphrase can open it")
    try:
        salt, ops, mem = cbor2.loads(kdf)
        params = KdfParams(salt, ops, mem)
    except (ValueError, TypeError, EOFError, cbor2.CBORDecodeError):
        raise damaged(path, "its KDF parameters do not decode") from None
    problem = params.problem()
    if problem is not None:
        raise damaged(path, f"its KDF parameters are damaged ({problem})")
    if len(check) != CHECK_SEALED_BYTES:
        raise damaged(path, f"its passphrase check value is damaged ({len(check)} bytes, "
                            f"not {CHECK_SEALED_BYTES})")
    sealer = Sealer(passphrase, params)
    try:
        opened = sealer.open("check", check)
    except CorruptStore:
        if tag is None:
            raise WrongPassphrase(
                f"wrong passphrase for the profile store {path}, or its passphrase check "
                "value is damaged (this store predates the checksum that tells them apart); "
                "nothing was changed") from None
        raise WrongPassphrase(
            f"wrong passphrase for the profile store {path} (nothing was changed)") from None
    if opened != CHECK_PLAINTEXT:
        raise damaged(path, "its passphrase check value holds the wrong text")
    return sealer


def verify(passphrase: str, path: Path) -> Sealer | None:
    """Everything :meth:`Store.open` checks before it may write: header, SQLite structure,
    KDF/check records, the vital secrets; on a read-only connection. None: not initialised."""
    problem = header_problem(path)
    if problem is not None:
        raise damaged(path, problem)
    with read_only(path) as db:
        return _verify_open(db, passphrase, path)


def _verify_open(db: sqlite3.Connection, passphrase: str, path: Path) -> Sealer | None:
    try:
        found = inspect_schema(db, STORE_SCHEMA, path)
        if not found:
            return None
        problems = [row[0] for row in db.execute("PRAGMA quick_check(5)")]
        if problems != ["ok"]:
            raise damaged(path, "SQLite finds its pages inconsistent (" +
                          "; ".join(problems) + ")")
        sealer = unlock(db, passphrase, path)
        if sealer is None:
            return None
        for name in VITAL_SECRETS:
            row = db.execute("SELECT sealed FROM secrets WHERE name = ?", (name,)).fetchone()
            if row is None:
                continue
            try:
                sealer.open(name, row[0])
            except CorruptStore:
                raise damaged(path, f"the sealed {name} does not open (one bit is enough), and "
                                    "the profile cannot be used without it") from None
        return sealer
    except SchemaError as exc:
        if any(word in str(exc) for word in ("not a database", "malformed")):
            reason = str(exc)[str(exc).rfind("("):]  # "(database disk image is malformed)"
            raise damaged(path, f"SQLite cannot read it {reason}") from None
        raise StoreError(str(exc)) from None
    except sqlite3.DatabaseError as exc:
        if is_damage(exc):
            raise damaged(path, f"SQLite cannot read it ({exc})") from None
        raise StoreError(f"{path}: {exc}") from None


@dataclass(frozen=True)
class Damage:
    """One damaged row: its table, its row id, and what is wrong with it."""

    table: str
    row: object
    what: str
    fatal: bool = False  # the identity or prekeys: the profile cannot be used without it


@dataclass
class StoreReport:
    """What :func:`inspect_store` found. ``fatal``: the store cannot be opened (and why);
    ``rows``: damaged rows of a store that opens; ``counts``: rows per table."""

    path: Path
    fatal: str | None = None
    wrong_passphrase: bool = False
    rows: list[Damage] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def healthy(self) -> bool:
        return self.fatal is None and not self.rows


def damaged_rows(db: sqlite3.Connection, sealer: Sealer) -> list[Damage]:
    out = []
    present = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = "
                                              "'table'")}
    for table, context in SEALED_TABLES.items():
        if table not in present:  # a file of an older schema version (read, not migrated)
            continue
        key = {"secrets": "name", "contacts": "peer", "sessions": "peer"}.get(table, "rowid")
        for row_id, name, blob in db.execute(f"SELECT rowid, {key}, sealed FROM {table} "
                                             "ORDER BY rowid"):
            try:
                sealer.open(context or name, blob)
            except CorruptStore as exc:
                row = name if table == "secrets" else row_id
                what = str(exc)
                if table in ("contacts", "sessions"):
                    what += f" (peer key {name[:12]}…)"
                fatal = table == "secrets" and name in VITAL_SECRETS
                if fatal:
                    what += f": the profile cannot be used; {RESTORE_HINT}"
                out.append(Damage(table, row, what, fatal))
    return out


def inspect_store(passphrase: str, path: Path | str) -> StoreReport:
    """Check a profile store thoroughly without writing to it: header, SQLite's
    ``integrity_check``, the KDF/check records and every sealed row (``qsecret doctor
    --store``)."""
    path = Path(path)
    report = StoreReport(path)
    if not path.exists():
        report.fatal = f"{path}: no profile store here"
        return report
    problem = header_problem(path)
    if problem is not None:
        report.fatal = str(damaged(path, problem))
        return report
    with read_only(path) as db:
        _inspect_into(report, db, passphrase, path)
    return report


def _inspect_into(report: StoreReport, db: sqlite3.Connection, passphrase: str,
                  path: Path) -> None:
    try:
        if not inspect_schema(db, STORE_SCHEMA, path):
            report.fatal = f"{path}: the profile store was never initialised"
            return
        problems = [row[0] for row in db.execute("PRAGMA integrity_check(20)")]
        if problems != ["ok"]:
            report.fatal = str(damaged(path, "SQLite finds its pages inconsistent (" +
                                       "; ".join(problems) + ")"))
            return
        sealer = unlock(db, passphrase, path)
        if sealer is None:
            report.fatal = f"{path}: the profile store was never initialised"
            return
        report.rows = damaged_rows(db, sealer)
        present = {name for (name,) in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        report.counts = {table: db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                         for table in SEALED_TABLES if table in present}
    except WrongPassphrase as exc:
        report.fatal, report.wrong_passphrase = str(exc), True
    except (StoreError, SchemaError) as exc:
        report.fatal = str(exc)
    except sqlite3.DatabaseError as exc:
        report.fatal = str(damaged(path, f"SQLite cannot read it ({exc})"))
