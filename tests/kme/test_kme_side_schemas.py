"""The KME's smaller SQLite files (a network node's local key store, a pair KME's served-SAE
record) carry schema versions like the others (keysource/sqlite_schema.py): a new file is
stamped, an unversioned one is adopted, a newer one is refused and left unchanged."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from keysource.kme.pki import Pki, PkiSaeRegistry
from keysource.kme.pool import PoolKey
from keysource.kme.relay_store import LOCAL_KEYS_SCHEMA, LocalKeyStore
from keysource.kme.served_saes import SERVED_SCHEMA, ServedSaes
from keysource.sqlite_schema import SchemaTooNew
from tests.sqlite_files import user_version

# local_keys as written before keys named the path they took (no ``route`` column).
LOCAL_KEYS_BEFORE_ROUTES = """
CREATE TABLE local_keys (key_id TEXT PRIMARY KEY, master_sae TEXT NOT NULL,
    slave_sae TEXT NOT NULL, material BLOB, created REAL NOT NULL, delivered REAL);
"""


def _local_store(path: Path) -> LocalKeyStore:
    return LocalKeyStore(path, redelivery_grace_s=60.0, ttl_s=600.0)


def test_a_new_local_key_store_is_stamped_and_an_old_one_gets_its_route_column(
        tmp_path: Path) -> None:
    _local_store(tmp_path / "new.sqlite").close()
    assert user_version(tmp_path / "new.sqlite") == LOCAL_KEYS_SCHEMA.version

    old = tmp_path / "old.sqlite"
    db = sqlite3.connect(old)
    db.executescript(LOCAL_KEYS_BEFORE_ROUTES)
    db.execute("INSERT INTO local_keys VALUES ('k-old', 'sae-a', 'sae-b', ?, ?, NULL)",
               (b"\x01" * 32, time.time()))
    db.commit()
    db.close()
    store = _local_store(old)
    try:
        store.put("sae-a", "sae-b", [PoolKey("k-new", b"\x02" * 32)])
        taken = store.take_for_slave("sae-a", "sae-b", ["k-old", "k-new"])
        assert [(k.key_ID, k.key) for k in taken] == [("k-old", b"\x01" * 32),
                                                           ("k-new", b"\x02" * 32)]
    finally:
        store.close()
    assert user_version(old) == LOCAL_KEYS_SCHEMA.version


@pytest.mark.parametrize("kind", ["local keys", "served SAEs"])
def test_a_file_from_a_newer_qsecret_is_refused_untouched(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "kme.sqlite"
    pki = Pki(tmp_path / "pki")
    pki.ensure(kme_ids=["kme-alice"], sae_ids=["sae-alice"])

    def open_it() -> None:
        if kind == "local keys":
            _local_store(path).close()
        else:
            ServedSaes(PkiSaeRegistry(pki), path, defaults=["sae-alice"]).close()

    open_it()
    schema = LOCAL_KEYS_SCHEMA if kind == "local keys" else SERVED_SCHEMA
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.execute(f"PRAGMA user_version = {schema.version + 1}")
    db.close()
    before = path.read_bytes()
    with pytest.raises(SchemaTooNew, match="update qsecret"):
        open_it()
    assert path.read_bytes() == before
