"""Unlocking a profile's sealed store, without the messenger's imports.

Kept apart from profile.py so a command can start the passphrase KDF (Argon2id, a tenth of a
second and more) on a worker thread while the main thread is still importing the messenger.
"""

from __future__ import annotations

from pathlib import Path

from client.config import ClientConfig
from client.store.sealed import StoreError, WrongPassphrase
from client.store.store import Store

from .api import MessengerError

STORE_FILE = "store.sqlite3"


def store_path(config: ClientConfig) -> Path:
    return config.data_dir / STORE_FILE


def unlock_store(config: ClientConfig, passphrase: str) -> Store:
    """Open the profile's sealed store with ``passphrase`` (blocking: runs the KDF)."""
    path = store_path(config)
    if not path.exists():
        raise MessengerError(f"no profile in {config.data_dir}: run 'qsecret init' first")
    try:
        return Store.open(passphrase, path, create=False)
    except WrongPassphrase:
        raise MessengerError("wrong passphrase (nothing was changed); try again") from None
    except StoreError as exc:  # a damaged store keeps its cause: its own exit status
        raise MessengerError(str(exc)) from exc
