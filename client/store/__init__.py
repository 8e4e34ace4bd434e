"""The sealed local store (SQLite + Argon2id + secretbox); see :mod:`client.store.store`.

Modules: ``sealed`` (the passphrase key, sealing, errors), ``schema`` (tables and versions),
``check`` (finding damage without writing), ``store`` (the Store), ``backup`` (backup and
restore of the sealed file)."""

from .check import Damage, StoreReport, inspect_store
from .sealed import CorruptStore, DamagedRow, KdfParams, Sealer, StoreError, WrongPassphrase
from .store import Contact, HistoryEntry, OutboxEntry, Store, default_path

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
