"""The sealed local store (SQLite + Argon2id + secretbox); see :mod:`client.store.store`."""

from .sealed import CorruptStore, DamagedRow, KdfParams, Sealer, StoreError, WrongPassphrase
from .store import (
    Contact,
    Damage,
    HistoryEntry,
    OutboxEntry,
    Store,
    StoreReport,
    default_path,
    inspect_store,
)

__all__ = [
    "Contact",
    "CorruptStore",
    "Damage",
    "DamagedRow",
    "HistoryEntry",
    "KdfParams",
    "OutboxEntry",
    "Sealer",
    "Store",
    "StoreError",
    "StoreReport",
    "WrongPassphrase",
    "default_path",
    "inspect_store",
]
