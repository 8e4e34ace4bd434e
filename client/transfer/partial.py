"""The receiver's disk side: ``.part`` files, persisted progress, and the landing plan.

Layout inside the downloads folder::

    downloads/.qsecret-partial/<transfer id hex>/state.sqlite    progress, manifest, plan
    downloads/.qsecret-partial/<transfer id hex>/<file index>.part

Progress is one SQLite row updated (WAL, synchronous=NORMAL) after each chunk is written, and
only then acknowledged, so a killed receiver resumes from what it acknowledged. On load the
``.part`` file is checked against the row (a power loss can leave it shorter) and truncated to
whole chunks. No key material is stored here: only the manifest, the plan and positions.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from keysource.sqlite_schema import Schema, SchemaError, open_schema

from .errors import StateError, TransferError
from .fileio import open_write, read_at, write_at
from .manifest import Manifest
from .names import (
    PARTIAL_DIR_NAME,
    OnConflict,
    land_file,
    numbered,
    reserve_directory,
    safe_components,
)

STATE_FILE = "state.sqlite"
READ_BLOCK = 1 << 20
FSYNC_EVERY_BYTES = 16 << 20

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    idx INTEGER PRIMARY KEY, dest TEXT NOT NULL, landed TEXT, failures INTEGER NOT NULL DEFAULT 0
);
"""

# Version 1 is _SCHEMA (progress files from before versions were recorded hold it); see
# keysource.sqlite_schema for how a progress file is migrated or refused on open.
PROGRESS_SCHEMA = Schema(
    kind="transfer progress file",
    baseline=_SCHEMA,
    marker_tables=frozenset({"files"}),  # "meta" is in other stores too
    migrations=(),
)


def plan_destinations(manifest: Manifest) -> list[tuple[str, ...]]:
    """Safe relative destinations for every file, with clashes inside the offer resolved.

    A hostile manifest can name ``a`` and ``a/b``, or two names that sanitise (or case-fold)
    to the same one: later files get ``name (1)``, or are flattened to one component.
    """
    files: set[str] = set()
    dirs: set[str] = set()
    plan = []
    for entry in manifest.files:
        comps = safe_components(entry.path)
        prefixes = ["/".join(comps[:i]).casefold() for i in range(1, len(comps))]
        if any(prefix in files for prefix in prefixes):
            comps = ("_".join(comps),)
            prefixes = []
        base, attempt = comps[-1], 0
        while (key := "/".join(comps).casefold()) in files or key in dirs:
            attempt += 1
            comps = comps[:-1] + (numbered(base, attempt),)
        files.add(key)
        dirs.update(prefixes)
        plan.append(comps)
    return plan


@dataclass
class Position:
    """Next chunk wanted: all files before ``file_index`` are landed."""

    file_index: int
    chunk_index: int


class PartialStore:
    """Partial files and persisted progress of one incoming transfer."""

    def __init__(self, downloads: Path, folder: Path, db: sqlite3.Connection,
                 manifest: Manifest) -> None:
        self.downloads = downloads
        self.folder = folder
        self._db = db
        self.manifest = manifest
        self._fd: int | None = None
        self._fd_index = -1
        self._unsynced = 0
        self._syncing: threading.Thread | None = None  # a background fsync (see write)
        self._sync_error: OSError | None = None

    # ----------------------------------------------------------------- creation / loading

    @staticmethod
    def folder_for(downloads: Path, transfer_id: bytes) -> Path:
        return Path(downloads) / PARTIAL_DIR_NAME / transfer_id.hex()

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        # Used from one thread at a time, but not always the one that opened it (the asyncio
        # driver runs disk work in a worker thread).
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            open_schema(db, PROGRESS_SCHEMA, path,
                        pragmas=("PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL"))
        except SchemaError as exc:
            db.close()
            raise TransferError(str(exc)) from exc
        except BaseException:
            db.close()
            raise
        return db

    @classmethod
    def create(cls, downloads: str | os.PathLike[str], manifest: Manifest,
               on_conflict: OnConflict = OnConflict.RENAME) -> PartialStore:
        """Accept an offer: plan where files land, reserve top folders, persist the plan."""
        downloads = Path(downloads)
        downloads.mkdir(parents=True, exist_ok=True)
        folder = cls.folder_for(downloads, manifest.transfer_id)
        if (folder / STATE_FILE).exists():
            raise StateError("this transfer was already accepted here: resume it instead")
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        plan = plan_destinations(manifest)
        tops = {comps[0] for comps in plan if len(comps) > 1}
        renamed_tops = {top: reserve_directory(downloads, top) for top in sorted(tops)}
        plan = [
            (renamed_tops[c[0]],) + c[1:] if len(c) > 1 else c for c in plan
        ]
        db = cls._connect(folder / STATE_FILE)
        with db:
            db.execute("BEGIN")
            meta = {
                "manifest": manifest.encode(),
                "reserved": json.dumps(sorted(renamed_tops.values())).encode(),
                "on_conflict": on_conflict.value.encode(),
                "status": b"receiving",
                "file_index": b"0",
                "chunk_index": b"0",
                "seq": b"0",
                "peer_seq": b"-1",
            }
            db.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
            db.executemany("INSERT INTO files (idx, dest) VALUES (?, ?)",
                           [(i, json.dumps(list(c))) for i, c in enumerate(plan)])
        return cls(downloads, folder, db, manifest)

    @classmethod
    def load(cls, downloads: str | os.PathLike[str], transfer_id: bytes) -> PartialStore:
        """Reopen an accepted transfer after a restart."""
        downloads = Path(downloads)
        folder = cls.folder_for(downloads, transfer_id)
        if not (folder / STATE_FILE).exists():
            raise StateError(f"no partial transfer {transfer_id.hex()} in {downloads}")
        db = cls._connect(folder / STATE_FILE)
        row = db.execute("SELECT value FROM meta WHERE key='manifest'").fetchone()
        if row is None:
            db.close()
            raise TransferError(f"progress of transfer {transfer_id.hex()} is damaged")
        return cls(downloads, folder, db, Manifest.decode(row[0], stored=True))

    @staticmethod
    def pending(downloads: str | os.PathLike[str]) -> list[bytes]:
        """Transfer IDs with persisted state in this downloads folder (to resume on start)."""
        root = Path(downloads) / PARTIAL_DIR_NAME
        if not root.is_dir():
            return []
        found = []
        for child in sorted(root.iterdir()):
            try:
                tid = bytes.fromhex(child.name)
            except ValueError:
                continue
            if len(tid) == 16 and (child / STATE_FILE).exists():
                found.append(tid)
        return found

    # ---------------------------------------------------------------------------- meta

    def _meta(self, key: str) -> bytes:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        if row is None:
            raise TransferError(f"progress field {key!r} missing")
        return bytes(row[0])

    def _set_meta(self, **values: bytes) -> None:
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany("UPDATE meta SET value=? WHERE key=?",
                                 [(v, k) for k, v in values.items()])

    @property
    def status(self) -> str:
        return self._meta("status").decode()

    def set_status(self, status: str) -> None:
        self._set_meta(status=status.encode())

    @property
    def on_conflict(self) -> OnConflict:
        return OnConflict(self._meta("on_conflict").decode())

    def seqs(self) -> tuple[int, int]:
        """(first own control sequence number free to use, highest peer sequence seen).

        Own numbers are reserved in blocks (``reserve_seqs``), so after a crash a restarted
        receiver never reuses a number the sender may already have seen.
        """
        return int(self._meta("seq")), int(self._meta("peer_seq"))

    def reserve_seqs(self, upto: int) -> None:
        self._set_meta(seq=str(upto).encode())

    def save_peer_seq(self, peer: int) -> None:
        self._set_meta(peer_seq=str(peer).encode())

    def destination(self, file_index: int) -> tuple[str, ...]:
        row = self._db.execute("SELECT dest FROM files WHERE idx=?", (file_index,)).fetchone()
        return tuple(json.loads(row[0]))

    def landed_paths(self) -> dict[int, Path]:
        rows = self._db.execute("SELECT idx, landed FROM files WHERE landed IS NOT NULL")
        return {idx: Path(path) for idx, path in rows}

    def failures(self, file_index: int) -> int:
        row = self._db.execute("SELECT failures FROM files WHERE idx=?", (file_index,)).fetchone()
        return int(row[0])

    # ------------------------------------------------------------------------ progress

    def position(self) -> Position:
        """The persisted position, reconciled with what the ``.part`` file really holds."""
        pos = Position(int(self._meta("file_index")), int(self._meta("chunk_index")))
        if pos.file_index < len(self.manifest.files):
            part = self.part_path(pos.file_index)
            have = part.stat().st_size if part.exists() else 0
            whole = min(pos.chunk_index, have // self.manifest.chunk_size)
            if whole != pos.chunk_index:
                pos.chunk_index = whole
                self.save_position(pos)
        return pos

    def save_position(self, pos: Position) -> None:
        self._set_meta(file_index=str(pos.file_index).encode(),
                       chunk_index=str(pos.chunk_index).encode())

    # ------------------------------------------------------------------------ part files

    def part_path(self, file_index: int) -> Path:
        return self.folder / f"{file_index}.part"

    def _fd_for(self, file_index: int) -> int:
        if self._fd_index != file_index:
            self.close_part()
            self._fd = open_write(self.part_path(file_index))
            self._fd_index = file_index
        assert self._fd is not None
        return self._fd

    def prepare(self, file_index: int, chunk_index: int) -> hashlib._Hash:
        """Truncate the part file to ``chunk_index`` whole chunks; return its running SHA-256."""
        fd = self._fd_for(file_index)
        length = chunk_index * self.manifest.chunk_size
        os.ftruncate(fd, length)
        digest = hashlib.sha256()
        for block in self._read(fd, length):
            digest.update(block)
        return digest

    @staticmethod
    def _read(fd: int, length: int) -> Iterator[bytes]:
        offset = 0
        while offset < length:
            block = read_at(fd, min(READ_BLOCK, length - offset), offset)
            if not block:
                raise TransferError("partial file shrank while being read")
            offset += len(block)
            yield block

    def write(self, file_index: int, offset: int, data: bytes | bytearray | memoryview) -> None:
        fd = self._fd_for(file_index)
        write_at(fd, data, offset)
        self._unsynced += len(data)
        if self._unsynced >= FSYNC_EVERY_BYTES:
            self._sync_behind(fd)
            self._unsynced = 0

    def _sync_behind(self, fd: int) -> None:
        """Flush what is written so far without stalling the writes that follow: the fsync
        runs on its own thread, on a duplicate descriptor; at most one at a time."""
        self._wait_sync()
        duplicate = os.dup(fd)

        def sync() -> None:
            try:
                os.fsync(duplicate)
            except OSError as exc:  # reported by the next _wait_sync (before any landing)
                self._sync_error = exc
            finally:
                os.close(duplicate)

        self._syncing = threading.Thread(target=sync, name="part-fsync", daemon=True)
        self._syncing.start()

    def _wait_sync(self) -> None:
        if self._syncing is not None:
            self._syncing.join()
            self._syncing = None
        error, self._sync_error = self._sync_error, None
        if error is not None:
            raise TransferError(f"cannot write the partial file to disk: {error.strerror}")

    def close_part(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd, self._fd_index = None, -1

    def land(self, file_index: int) -> tuple[Path, bool]:
        """fsync and move a verified part file into place; return (path, renamed)."""
        fd = self._fd_for(file_index)
        self._wait_sync()
        os.fsync(fd)
        self.close_part()
        comps = self.destination(file_index)
        path = land_file(self.part_path(file_index), self.downloads, comps, self.on_conflict)
        relative = path.relative_to(self.downloads)
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute("UPDATE files SET landed=? WHERE idx=?", (str(path), file_index))
            self._db.execute("UPDATE meta SET value=? WHERE key='file_index'",
                             (str(file_index + 1).encode(),))
            self._db.execute("UPDATE meta SET value=? WHERE key='chunk_index'", (b"0",))
        sent_name = self.manifest.files[file_index].path
        return path, relative.as_posix() != sent_name

    def record_failure(self, file_index: int) -> int:
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute("UPDATE files SET failures = failures + 1 WHERE idx=?",
                             (file_index,))
        return self.failures(file_index)

    def discard_parts(self) -> None:
        """Cancel: delete partial files and reserved folders that stayed empty."""
        self.close_part()
        for part in self.folder.glob("*.part"):
            part.unlink(missing_ok=True)
        for top in json.loads(self._meta("reserved")):
            _remove_empty_tree(self.downloads / top)

    def remove(self) -> None:
        """Forget this transfer completely (after completion or cancel)."""
        self.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def close(self) -> None:
        if self._syncing is not None:
            self._syncing.join()
        self.close_part()
        self._db.close()


def _remove_empty_tree(folder: Path) -> None:
    if not folder.is_dir() or folder.is_symlink():
        return
    for child in folder.iterdir():
        if child.is_dir() and not child.is_symlink():
            _remove_empty_tree(child)
    try:
        folder.rmdir()
    except OSError:
        pass  # not empty: a landed file stays where it is
