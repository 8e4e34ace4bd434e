"""keysource.sqlite_schema on a test store with two real migrations (v1 -> v2 -> v3)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from keysource.sqlite_schema import (
    Migration,
    Schema,
    SchemaError,
    SchemaTooNew,
    open_schema,
    split_statements,
)
from tests.sqlite_files import user_version

# Version 1: notes with a free-text "tags" column, as a store written before versions had it.
V1 = """
CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL, tags TEXT);
CREATE TABLE IF NOT EXISTS log (line TEXT NOT NULL);
"""


def _split_tags(db: sqlite3.Connection) -> None:
    rows = db.execute("SELECT id, tags FROM notes WHERE tags IS NOT NULL").fetchall()
    db.executemany("INSERT INTO note_tags VALUES (?, ?)",
                   [(note, tag) for note, tags in rows for tag in tags.split(",")])


STEPS = (
    # v2: tags move to their own table (SQL, then Python over the rows).
    Migration(2, "tags in their own table",
              """CREATE TABLE note_tags (note INTEGER NOT NULL, tag TEXT NOT NULL);
                 INSERT INTO log VALUES ('to v2');""",
              _split_tags),
    # v3: a column with a default, and an index; a trigger proves statements are split right.
    Migration(3, "pinned notes",
              """ALTER TABLE notes ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0;
                 CREATE INDEX notes_pinned ON notes(pinned) WHERE pinned;
                 CREATE TRIGGER notes_log AFTER INSERT ON notes BEGIN
                     INSERT INTO log VALUES ('note ' || new.id); END;
                 INSERT INTO log VALUES ('to v3');"""),
)
NOTES = Schema(kind="notes store", baseline=V1, marker_tables=frozenset({"notes"}),
               migrations=STEPS)


def _connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def _write_v1(path: Path) -> None:
    """A file as the code of version 1 wrote it: no stamp, WAL, two notes."""
    db = _connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(V1)
    db.execute("INSERT INTO notes VALUES (1, 'first', 'a,b')")
    db.execute("INSERT INTO notes VALUES (2, 'second', NULL)")
    db.close()


def _open(path: Path, schema: Schema = NOTES) -> tuple[sqlite3.Connection, object]:
    db = _connect(path)
    try:
        return db, open_schema(db, schema, path, pragmas=("PRAGMA journal_mode=WAL",))
    except BaseException:
        db.close()
        raise


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_fresh_file_gets_every_migration_and_the_current_version(tmp_path: Path) -> None:
    db, opened = _open(tmp_path / "n.db")
    assert (opened.found, opened.version, opened.fresh) == (0, 3, True)
    assert [r[0] for r in db.execute("SELECT line FROM log")] == ["to v2", "to v3"]
    db.execute("INSERT INTO notes (id, body) VALUES (5, 'x')")
    assert db.execute("SELECT pinned FROM notes").fetchone() == (0,)
    db.close()
    assert user_version(tmp_path / "n.db") == 3


def test_an_unversioned_file_is_version_1_and_is_migrated_with_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "n.db"
    _write_v1(path)
    db, opened = _open(path)
    assert (opened.found, opened.version, opened.migrated) == (1, 3, True)
    assert db.execute("SELECT id, body, tags, pinned FROM notes ORDER BY id").fetchall() == [
        (1, "first", "a,b", 0), (2, "second", None, 0)]
    assert sorted(db.execute("SELECT note, tag FROM note_tags")) == [(1, "a"), (1, "b")]
    db.close()
    assert user_version(path) == 3
    db, opened = _open(path)  # already current: nothing runs again
    assert (opened.found, opened.migrated) == (3, False)
    assert [r[0] for r in db.execute("SELECT line FROM log")] == ["to v2", "to v3"]
    db.close()


def test_a_file_at_version_2_gets_only_the_steps_after_it(tmp_path: Path) -> None:
    path = tmp_path / "n.db"
    two = Schema(kind="notes store", baseline=V1, marker_tables=frozenset({"notes"}),
                 migrations=STEPS[:1])
    db, opened = _open(path, two)
    assert opened.version == 2
    db.execute("INSERT INTO notes VALUES (1, 'kept', NULL)")
    db.close()
    db, opened = _open(path)
    assert (opened.found, opened.version) == (2, 3)
    assert db.execute("SELECT body, pinned FROM notes").fetchall() == [("kept", 0)]
    assert [r[0] for r in db.execute("SELECT line FROM log")] == ["to v2", "to v3"]
    db.close()


def test_a_failed_migration_leaves_the_file_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "n.db"
    _write_v1(path)
    before = path.read_bytes()

    def broken(db: sqlite3.Connection) -> None:
        db.execute("DELETE FROM notes")  # real work first, then the failure
        db.execute("INSERT INTO no_such_table VALUES (1)")

    failing = Schema(kind="notes store", baseline=V1, marker_tables=frozenset({"notes"}),
                     migrations=(STEPS[0], Migration(3, "a step that fails", run=broken)))
    with pytest.raises(SchemaError, match=r"to schema version 3 \(a step that fails\) failed"
                                          r".*no such table.*left as it was"):
        _open(path, failing)
    assert path.read_bytes() == before  # v2's work and step 3's delete were rolled back
    assert user_version(path) == 0
    db, opened = _open(path)  # the fixed code migrates the untouched file
    assert opened.found == 1
    assert db.execute("SELECT count(*) FROM notes").fetchone() == (2,)
    db.close()


def test_an_interrupted_migration_is_rolled_back_too(tmp_path: Path) -> None:
    path = tmp_path / "n.db"
    _write_v1(path)
    before = path.read_bytes()

    def interrupted(db: sqlite3.Connection) -> None:
        raise KeyboardInterrupt

    schema = Schema(kind="notes store", baseline=V1, marker_tables=frozenset({"notes"}),
                    migrations=(STEPS[0], Migration(3, "interrupted", run=interrupted)))
    with pytest.raises(KeyboardInterrupt):
        _open(path, schema)
    assert path.read_bytes() == before and user_version(path) == 0


def test_a_newer_file_is_refused_with_a_clear_message_and_not_changed(tmp_path: Path) -> None:
    path = tmp_path / "n.db"
    db, _ = _open(path)
    db.execute("PRAGMA user_version = 7")
    db.close()
    before = _files(tmp_path)
    with pytest.raises(SchemaTooNew) as caught:
        _open(path)
    message = str(caught.value)
    assert str(path) in message and "notes store" in message
    assert "schema version 7" in message and "versions up to 3" in message
    assert "update qsecret" in message and "not changed" in message
    assert (caught.value.found, caught.value.understood) == (7, 3)
    assert _files(tmp_path) == before  # no byte changed, no -wal or -shm left behind


def test_a_newer_file_in_rollback_journal_mode_is_not_switched_to_wal(tmp_path: Path) -> None:
    path = tmp_path / "n.db"
    db = _connect(path)
    db.executescript(V1 + "PRAGMA user_version = 9;")
    db.close()
    before = _files(tmp_path)
    with pytest.raises(SchemaTooNew):
        _open(path)  # the WAL pragma would rewrite the header: it must not run
    assert _files(tmp_path) == before


def test_somebody_elses_file_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    db = _connect(path)
    db.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY)")
    db.close()
    before = path.read_bytes()
    with pytest.raises(SchemaError, match="not a notes store"):
        _open(path)
    assert path.read_bytes() == before
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database" * 200)
    with pytest.raises(SchemaError, match="not a notes store"):
        _open(garbage)


def test_concurrent_openers_of_a_new_file_migrate_it_once(tmp_path: Path) -> None:
    path = tmp_path / "n.db"
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def opener() -> None:
        try:
            db = sqlite3.connect(path, isolation_level=None, timeout=30)
            start.wait()
            open_schema(db, NOTES, path)
            db.close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=opener) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    db = _connect(path)
    assert [r[0] for r in db.execute("SELECT line FROM log")] == ["to v2", "to v3"]
    db.close()


def test_the_mirror_records_the_version_where_older_code_looks(tmp_path: Path) -> None:
    seen: list[int] = []
    schema = Schema(kind="notes store", baseline=V1, marker_tables=frozenset({"notes"}),
                    migrations=STEPS, mirror=lambda db, version: seen.append(version))
    db, _ = _open(tmp_path / "n.db", schema)
    db.close()
    assert seen == [3]


def test_misnumbered_migrations_and_transactions_are_programming_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must produce version 2"):
        Schema(kind="x", baseline=V1, marker_tables=frozenset({"notes"}),
               migrations=(STEPS[1],))
    db = sqlite3.connect(tmp_path / "n.db")  # Python's implicit transactions: refused
    with pytest.raises(ValueError, match="isolation_level=None"):
        open_schema(db, NOTES, tmp_path / "n.db")
    db.close()


def test_split_statements_keeps_triggers_whole() -> None:
    statements = list(split_statements(STEPS[1].sql))
    assert len(statements) == 4
    assert statements[2].startswith("CREATE TRIGGER") and statements[2].endswith("END;")
    with pytest.raises(ValueError, match="incomplete"):
        list(split_statements("CREATE TRIGGER t AFTER INSERT ON n BEGIN SELECT 1;"))
