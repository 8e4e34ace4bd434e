"""Backups of a profile's store: a consistent copy of the sealed SQLite file, and putting one
back.

The copy is made with SQLite's online backup API from a read-only connection, so it is
consistent even while qsecret runs, and the source is never written. Every value in the file is
already sealed under the passphrase (the row names are keyed hashes), so the backup is exactly
as safe as the store: keep it anywhere; it opens with the passphrase the profile had when it
was made. Both ways the result is checked before it takes a name: a backup must open with the
passphrase (header, SQLite structure, passphrase records, identity), or it is removed and the
command fails. A restore never deletes the store it replaces: that file (and its WAL) is kept
beside it as ``store.sqlite3.replaced-<time>``.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

from .check import read_only, verify
from .sealed import StoreError


def _copy(source: Path, dest: Path) -> None:
    """``source`` (read-only) to the new file ``dest`` with SQLite's backup API, synced."""
    with read_only(source) as src:
        out = sqlite3.connect(dest, isolation_level=None)
        try:
            src.backup(out)
            # A rollback-journal file: opening it read-only (every check) leaves no -wal or
            # -shm beside it; the store turns WAL back on when it next opens for writing.
            out.execute("PRAGMA journal_mode=DELETE")
        finally:
            out.close()
    dest.chmod(0o600)
    with dest.open("rb+") as file:
        os.fsync(file.fileno())


def _sync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _checked_copy(passphrase: str, source: Path, dest: Path) -> None:
    """Copy ``source`` to ``dest`` through a temporary file that must open with
    ``passphrase`` before it is renamed into place."""
    partial = dest.with_name(dest.name + ".partial")
    partial.unlink(missing_ok=True)
    try:
        _copy(source, partial)
        verify(passphrase, partial)
    except BaseException:
        for leftover in (partial, *_sidecars(partial)):
            leftover.unlink(missing_ok=True)
        raise
    partial.replace(dest)
    _sync_dir(dest.parent)


def _sidecars(path: Path) -> tuple[Path, Path]:
    return path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")


def backup_store(passphrase: str, store: Path, dest: Path, *, force: bool = False) -> int:
    """Write a sealed, checked copy of ``store`` to ``dest``; its size in bytes.

    The store must open with ``passphrase`` (a backup nobody can open is no backup); a damaged
    one is refused with the store's own message.
    """
    if not store.exists():
        raise StoreError(f"no profile store at {store}: nothing to back up")
    verify(passphrase, store)
    if dest.exists() and not force:
        raise StoreError(f"{dest} already exists; choose another name or pass --force")
    if dest.resolve() == store.resolve():
        raise StoreError(f"{dest} is the store itself")
    dest.parent.mkdir(parents=True, exist_ok=True)
    _checked_copy(passphrase, store, dest)
    return dest.stat().st_size


def restore_store(passphrase: str, backup: Path, store: Path, *,
                  force: bool = False) -> Path | None:
    """Put the backup ``backup`` in place as ``store``; where the replaced store was kept.

    The backup must open with ``passphrase`` before anything changes. An existing store is
    replaced only with ``force``, and then kept (renamed, with its WAL) rather than deleted.
    Run it while no qsecret uses the profile.
    """
    if not backup.exists():
        raise StoreError(f"no backup at {backup}")
    if backup.resolve() == store.resolve():
        raise StoreError(f"{backup} is the profile's store itself")
    verify(passphrase, backup)  # the backup's own message if damaged or the passphrase wrong
    if store.exists() and not force:
        raise StoreError(f"a profile store already exists at {store}; 'qsecret restore' "
                         "replaces it only with --force (it is then kept beside, renamed)")
    store.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    incoming = store.with_name(store.name + ".restoring")
    _checked_copy(passphrase, backup, incoming)
    kept = None
    if store.exists():
        kept = store.with_name(f"{store.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
        store.replace(kept)
        for sidecar, moved in zip(_sidecars(store), _sidecars(kept), strict=True):
            if sidecar.exists():  # a WAL belongs to its file: it goes where the file goes
                sidecar.replace(moved)
    incoming.replace(store)
    _sync_dir(store.parent)
    return kept
