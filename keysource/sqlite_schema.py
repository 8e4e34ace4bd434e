"""Schema versions of qsecret's SQLite files: migrate an older file on open, refuse a newer one.

Each store (profile store, relay store, KME key pool, transfer progress) describes its file
with a :class:`Schema`: version 1 is the schema every store had before versions were recorded,
then an ordered list of :class:`Migration` steps. :func:`open_schema` is called on a fresh
connection and leaves the file at the current version:

* a new, empty file gets version 1 and every migration, and is stamped current;
* a file without a version but with the store's tables was written before versions existed:
  it is version 1 (its CREATE ... IF NOT EXISTS baseline is re-run, as every open did then);
* an older file is migrated step by step, all steps and the new stamp in ONE transaction:
  a step that fails rolls everything back, leaving the file exactly as it was;
* a newer file is refused (:class:`SchemaTooNew`, saying which file, its version, the version
  this qsecret understands, and to update qsecret) before anything writes to it: no pragma
  that writes, no transaction, so it stays byte-for-byte unchanged.

The version lives in ``PRAGMA user_version`` (four bytes of the file header, written in the
same transaction as the migration). A store may also mirror it where older qsecret looked
(``Schema.mirror``: the profile store's ``meta`` row), so those refuse a newer file too.

To change a store's schema: append ``Migration(version=<current + 1>, ...)`` to its Schema;
never edit the baseline or an earlier step (files in the field went through them as they were).
Add a fixture file of the old version (tests/fixtures/make_store_fixtures.py ``--out``, run
with the old code) so tests/unit/test_store_fixtures.py proves the step on real data.

Standard library only, and nothing else from keysource: the relay (which may import keysource
only through keysource.pq), the client and the KME all import this one module, so it must
stay dependency-free. Errors are ValueErrors, which the relay's and the KME's command lines
already print as one line.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("qsecret.schema")

__all__ = [
    "Migration", "Opened", "Schema", "SchemaError", "SchemaTooNew", "inspect_schema",
    "open_schema", "split_statements",
]


class SchemaError(ValueError):
    """The file cannot be used as this store: not its kind of file, or a migration failed."""


class SchemaTooNew(SchemaError):
    """The file was written by a newer qsecret; it is left untouched."""

    def __init__(self, kind: str, path: Path | str, found: int, understood: int) -> None:
        self.kind, self.path, self.found, self.understood = kind, Path(path), found, understood
        super().__init__(
            f"{path}: this {kind} has schema version {found}, but this qsecret understands "
            f"versions up to {understood}; update qsecret to open it (the file was not changed)"
        )


@dataclass(frozen=True)
class Migration:
    """One step from ``version - 1`` to ``version``: SQL statements, then an optional function.

    Runs inside the migration transaction; it must not COMMIT, ROLLBACK or VACUUM.
    """

    version: int
    summary: str
    sql: str = ""
    run: Callable[[sqlite3.Connection], None] | None = None


@dataclass(frozen=True)
class Schema:
    """How one store's file is laid out, version by version."""

    kind: str  # named in messages: "profile store", "relay store", ...
    baseline: str  # version 1: the CREATE ... IF NOT EXISTS script of before versions
    marker_tables: frozenset[str]  # an unversioned file holding one of these is this store's
    migrations: tuple[Migration, ...] = ()
    # Extra work to bring an unversioned file to version 1 (after the baseline script).
    adopt: Callable[[sqlite3.Connection], None] | None = None
    # Also record the new version where an older qsecret looks for it.
    mirror: Callable[[sqlite3.Connection, int], None] | None = field(default=None)

    def __post_init__(self) -> None:
        for index, step in enumerate(self.migrations):
            if step.version != index + 2:
                raise ValueError(f"{self.kind}: migration {index} must produce version "
                                 f"{index + 2}, not {step.version}")
        if not self.marker_tables:
            raise ValueError(f"{self.kind}: marker_tables must name at least one table")

    @property
    def version(self) -> int:
        """The version this code writes and understands."""
        return 1 + len(self.migrations)


@dataclass(frozen=True)
class Opened:
    """What :func:`open_schema` found and did."""

    found: int  # the file's version before opening; 0 for a new, empty file
    version: int  # its version now (the current one)

    @property
    def fresh(self) -> bool:
        return self.found == 0

    @property
    def migrated(self) -> bool:
        return 0 < self.found < self.version


def open_schema(db: sqlite3.Connection, schema: Schema, path: Path | str,
                pragmas: Sequence[str] = ()) -> Opened:
    """Bring the file behind ``db`` to ``schema.version``, or refuse it (see module docstring).

    ``db`` must be in autocommit mode (``isolation_level=None``). ``pragmas`` (journal mode,
    synchronous, ...) run after the version check, so a refused file never sees them.
    """
    if db.isolation_level is not None:
        raise ValueError("open_schema needs a connection opened with isolation_level=None")
    if db.in_transaction:
        raise ValueError("open_schema needs a connection outside any transaction")
    found, stamped = _inspect(db, schema, path)
    for pragma in pragmas:
        db.execute(pragma)
    if stamped and found == schema.version:
        return Opened(found, found)
    db.execute("BEGIN IMMEDIATE")
    try:
        found, stamped = _version(db, schema)  # another process may have migrated it meanwhile
        _check(schema, path, found)
        upgrade = not stamped or found < schema.version
        if upgrade:
            _upgrade(db, schema, path, found)
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    if found and upgrade:
        log.info("%s: %s brought from schema version %d%s to %d", path, schema.kind, found,
                 "" if stamped else " (unversioned)", schema.version)
    return Opened(found, schema.version)


def inspect_schema(db: sqlite3.Connection, schema: Schema, path: Path | str) -> int:
    """The file's version (0: new and empty), read without writing anything; raises as
    :func:`open_schema` does for a newer or a foreign file.

    For a store that must check something before migrating (the profile store checks the
    passphrase first, so a wrong one leaves an old file untouched).
    """
    return _inspect(db, schema, path)[0]


def _inspect(db: sqlite3.Connection, schema: Schema, path: Path | str) -> tuple[int, bool]:
    try:
        found, stamped = _version(db, schema)
    except sqlite3.DatabaseError as exc:
        raise SchemaError(f"{path}: not a {schema.kind} ({exc})") from None
    _check(schema, path, found)
    return found, stamped


def _version(db: sqlite3.Connection, schema: Schema) -> tuple[int, bool]:
    """(version, stamped). Unversioned: 1 when it holds the store's tables, 0 when empty,
    -1 when it holds only other tables (somebody else's file)."""
    (stamped,) = db.execute("PRAGMA user_version").fetchone()
    if stamped:
        return int(stamped), True
    tables = {name for (name,) in db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")}
    if not tables:
        return 0, False
    return (1 if tables & schema.marker_tables else -1), False


def _check(schema: Schema, path: Path | str, found: int) -> None:
    if found > schema.version:
        raise SchemaTooNew(schema.kind, path, found, schema.version)
    if found < 0:
        raise SchemaError(f"{path}: not a {schema.kind} (none of its tables are there); "
                          "the file was not changed")


def _upgrade(db: sqlite3.Connection, schema: Schema, path: Path | str, found: int) -> None:
    if found <= 1:  # new, or written before versions: the baseline, as every open did then
        for statement in split_statements(schema.baseline):
            db.execute(statement)
        if found == 1 and schema.adopt is not None:
            schema.adopt(db)
    for step in schema.migrations[max(found, 1) - 1:]:
        try:
            for statement in split_statements(step.sql):
                db.execute(statement)
            if step.run is not None:
                step.run(db)
        except sqlite3.Error as exc:
            raise SchemaError(
                f"{path}: migrating this {schema.kind} to schema version {step.version} "
                f"({step.summary}) failed: {exc}; the file was left as it was"
            ) from exc
    db.execute(f"PRAGMA user_version = {int(schema.version)}")
    if schema.mirror is not None:
        schema.mirror(db, schema.version)


def split_statements(sql: str) -> Iterator[str]:
    """The statements of a script, one by one (``executescript`` would COMMIT first)."""
    pending = ""
    for piece in sql.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \t\r\n;"):
                yield pending.strip()
            pending = ""
    if pending.rstrip(";").strip():
        raise ValueError(f"incomplete SQL statement: {pending[:60]!r}")
