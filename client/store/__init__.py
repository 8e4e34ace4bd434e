"""The sealed local store (SQLite + Argon2id + secretbox); see :mod:`client.store.store`."""

from .sealed import CorruptStore, KdfParams, Sealer, StoreError, WrongPassphrase
from .store import Contact, HistoryEntry, OutboxEntry, Store, default_path

__all__ = [
    "Contact",
    "CorruptStore",
    "HistoryEntry",
    "KdfParams",
    "OutboxEntry",
    "Sealer",
    "Store",
    "StoreError",
    "WrongPassphrase",
    "default_path",
]
