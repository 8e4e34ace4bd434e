"""The four SQLite stores open files written before they had schema versions.

The files under tests/fixtures/stores/ were written by the code of commit 75798eb
(tests/fixtures/make_store_fixtures.py). Each test opens a COPY with today's code and checks
the rows survived and still work; that a file stamped with a future version is refused with a
clear message and left byte-for-byte unchanged; and that a new file gets the current version.
"""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
import uuid
from pathlib import Path

import pytest

from client.protocol.session import Session
from client.store import Store, StoreError, WrongPassphrase
from client.store.store import STORE_SCHEMA
from client.transfer.errors import TransferError
from client.transfer.partial import PROGRESS_SCHEMA, STATE_FILE, PartialStore, Position
from keysource.kme.pool import POOL_SCHEMA, BindingLimits, KeyPool
from keysource.sqlite_schema import SchemaTooNew
from relay.store import EnqueueStatus, SqliteStore, StreamStatus
from relay.store.sqlite import RELAY_SCHEMA
from tests.fixtures import make_store_fixtures as fx
from tests.protocol.helpers import KeyLink, identity
from tests.sqlite_files import user_version

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "stores"


def _copy(name: str, to: Path) -> Path:
    to.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(FIXTURES / name, to)
    return to


def _stamp_future(path: Path, version: int) -> dict[str, bytes]:
    """Pretend a newer qsecret wrote ``path``; return every file of its folder, byte for byte."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute(f"PRAGMA user_version = {version}")
    db.close()
    return _snapshot(path.parent)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _assert_clear_refusal(message: str, path: Path, kind: str, found: int, current: int) -> None:
    assert str(path) in message and kind in message
    assert f"schema version {found}" in message and f"versions up to {current}" in message
    assert "update qsecret" in message


def test_the_fixtures_are_unversioned_files_of_today() -> None:
    names = {"profile.sqlite3", "kme-pool.sqlite", "relay.sqlite3", "partial-state.sqlite"}
    assert names <= {p.name for p in FIXTURES.iterdir()}
    assert all(user_version(FIXTURES / name) == 0 for name in names)


# -- profile store ---------------------------------------------------------------------------

def test_profile_store_from_before_versions_opens_with_everything_in_it(tmp_path: Path) -> None:
    path = _copy("profile.sqlite3", tmp_path / "store.sqlite3")
    with Store.open(fx.PASSPHRASE, path) as store:
        handle, ident = store.load_identity()
        assert (handle, ident) == (fx.PROFILE_HANDLE, identity(fx.PROFILE_HANDLE))
        assert store.load_prekeys() is not None
        contact = store.contact(fx.PROFILE_PEER)
        assert contact.verified and contact.identity == identity(fx.PROFILE_PEER).public
        assert store.peers() == [fx.PROFILE_PEER]
        assert [(e.direction, e.plaintext) for e in store.history(fx.PROFILE_PEER)] == [
            ("out", fx.PROFILE_SENT), ("in", fx.PROFILE_RECEIVED)]
        assert store.outbox() == []
        assert store.seen(fx.PROFILE_PEER, "reply-1")
        assert store.transfers() == [fx.PROFILE_TRANSFER]
        # The session still works: send one more message under it.
        session = store.load_session(fx.PROFILE_PEER)
        assert isinstance(session, Session)
        link = KeyLink()
        outgoing = session.encrypt(b"after the upgrade",
                                   link.enc_keys(session.send_plan().qkd_keys))
        store.commit_outgoing(fx.PROFILE_PEER, session, outgoing, b"after the upgrade")
    assert user_version(path) == STORE_SCHEMA.version
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM meta WHERE name='schema'").fetchone() == (
        str(STORE_SCHEMA.version).encode(),)
    db.close()
    with Store.open(fx.PASSPHRASE, path) as store:
        assert store.history(fx.PROFILE_PEER)[-1].plaintext == b"after the upgrade"


def test_profile_store_wrong_passphrase_leaves_an_old_file_untouched(tmp_path: Path) -> None:
    path = _copy("profile.sqlite3", tmp_path / "store.sqlite3")
    before = _snapshot(tmp_path)
    with pytest.raises(WrongPassphrase, match="nothing was changed"):
        Store.open("not the passphrase", path)
    assert _snapshot(tmp_path) == before and user_version(path) == 0


def test_profile_store_of_a_newer_qsecret_is_refused_untouched(tmp_path: Path) -> None:
    path = _copy("profile.sqlite3", tmp_path / "store.sqlite3")
    newer = STORE_SCHEMA.version + 1
    before = _stamp_future(path, newer)
    with pytest.raises(StoreError) as caught:
        Store.open(fx.PASSPHRASE, path)
    _assert_clear_refusal(str(caught.value), path, "profile store", newer, STORE_SCHEMA.version)
    assert _snapshot(tmp_path) == before


def test_new_profile_store_gets_the_current_version(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    Store.open("pw", path, **fx.FAST_KDF).close()
    assert user_version(path) == STORE_SCHEMA.version


# -- KME key pool ----------------------------------------------------------------------------

def test_kme_pool_from_before_versions_hands_out_the_same_keys(tmp_path: Path) -> None:
    path = _copy("kme-pool.sqlite", tmp_path / "pool.sqlite")
    # The fixture's binding was made when the fixture was; a lifetime that long keeps it.
    with KeyPool(path, binding_limits=BindingLimits(ttl_s=100 * 365 * 86400)) as pool:
        stats = pool.stats()
        assert (stats.free, stats.bound_master, stats.delivered) == (3, 2, 1)
        assert pool.ready_count(fx.POOL_MASTER, fx.POOL_SLAVE, 256) == 2
        bound = pool.take_bound_for_master(fx.POOL_MASTER, fx.POOL_SLAVE, 256, 2)
        assert [(k.key_ID, k.key) for k in bound] == [fx.pool_key(1), fx.pool_key(2)]
        binding = pool.bind(binding_id=str(uuid.uuid4()), master_SAE_ID="SAE_C",
                            slave_SAE_ID=fx.POOL_SLAVE, master_kme="kme-a", local_kme="kme-a",
                            sizes=[256] * 3)
        pool.mark_acked(binding.binding_id)
        free = pool.take_bound_for_master("SAE_C", fx.POOL_SLAVE, 256, 3)
        assert [(k.key_ID, k.key) for k in free] == [fx.pool_key(i) for i in (3, 4, 5)]
        # The delivered journal survived: a replayed link batch brings no key back.
        assert pool.add_keys([fx.pool_key(i) for i in range(fx.POOL_KEYS)]) == 0
    assert user_version(path) == POOL_SCHEMA.version == 4


def test_kme_pool_migration_to_v2_indexes_unacked_bindings(tmp_path: Path) -> None:
    path = _copy("kme-pool.sqlite", tmp_path / "pool.sqlite")
    KeyPool(path).close()
    db = sqlite3.connect(path)
    plan = db.execute("EXPLAIN QUERY PLAN SELECT body, created FROM bindings"
                      " WHERE acked = 0 ORDER BY created").fetchall()
    db.close()
    assert any("bindings_unacked" in row[-1] for row in plan), plan


def test_kme_pool_migration_to_v3_keeps_dec_keys_answers_for_their_sae(tmp_path: Path) -> None:
    path = _copy("kme-pool.sqlite", tmp_path / "pool.sqlite")
    with KeyPool(path) as pool:
        assert pool.stats().redeliverable == 0 and pool.next_redelivery_expiry() is None
    db = sqlite3.connect(path)
    columns = [row[1] for row in db.execute("PRAGMA table_info(redeliverable)")]
    plan = db.execute("EXPLAIN QUERY PLAN SELECT MIN(at) FROM redeliverable").fetchall()
    db.close()
    assert columns == ["key_id", "master_sae", "slave_sae", "material", "at"]
    assert any("redeliverable_at" in row[-1] for row in plan), plan


def test_kme_pool_migration_to_v4_keeps_the_link_state_with_the_keys(tmp_path: Path) -> None:
    path = _copy("kme-pool.sqlite", tmp_path / "pool.sqlite")
    with KeyPool(path) as pool:
        assert pool.link_state("qkd-link") is None
        assert pool.add_keys([fx.pool_key(fx.POOL_KEYS)], link_state=("qkd-link", b"s1")) == 1
    with KeyPool(path) as pool:
        assert pool.link_state("qkd-link") == b"s1"


def test_kme_pool_of_a_newer_qsecret_is_refused_untouched(tmp_path: Path) -> None:
    path = _copy("kme-pool.sqlite", tmp_path / "pool.sqlite")
    newer = POOL_SCHEMA.version + 1
    before = _stamp_future(path, newer)
    with pytest.raises(SchemaTooNew) as caught:
        KeyPool(path)
    _assert_clear_refusal(str(caught.value), path, "KME key pool", newer, POOL_SCHEMA.version)
    assert _snapshot(tmp_path) == before


def test_new_kme_pool_gets_the_current_version(tmp_path: Path) -> None:
    KeyPool(tmp_path / "pool.sqlite").close()
    assert user_version(tmp_path / "pool.sqlite") == POOL_SCHEMA.version


# -- relay store -----------------------------------------------------------------------------

async def test_relay_store_from_before_versions_drains_its_queue(tmp_path: Path) -> None:
    path = _copy("relay.sqlite3", tmp_path / "relay.sqlite3")
    store = SqliteStore(path, synchronous="NORMAL")
    await store.open()
    try:
        assert await store.identity_of(fx.RELAY_SENDER) == fx.RELAY_SENDER.encode()
        queued = await store.pending(fx.RELAY_RECIPIENT, 10)
        assert [(e.sender, e.msg, e.body) for e in queued] == [
            (fx.RELAY_SENDER, fx.RELAY_MSG, fx.RELAY_BODY)]
        assert await store.ack(fx.RELAY_RECIPIENT, [queued[0].seq]) == 1
        assert await store.pending(fx.RELAY_RECIPIENT, 10) == []
        repeat = store.new_envelope(fx.RELAY_SENDER, fx.RELAY_RECIPIENT, fx.RELAY_MSG, b"again")
        assert (await store.enqueue(repeat)).status is EnqueueStatus.DUPLICATE
        assert await store.prekey_count(fx.RELAY_RECIPIENT) == fx.RELAY_ONE_TIME
        fetched = await store.take_bundle(fx.RELAY_RECIPIENT)
        assert fetched is not None
        expected = fx.relay_bundle()
        assert (fetched.bundle.identity, fetched.bundle.signed) == (expected.identity,
                                                                   expected.signed)
        assert [k.key_id for k in fetched.bundle.one_time] == [0]
        new = await store.enqueue(store.new_envelope(fx.RELAY_SENDER, fx.RELAY_RECIPIENT,
                                                     "8" * 32, b"new"))
        assert new.status is EnqueueStatus.STORED and new.envelope.seq > queued[0].seq
        # Version 2's streams.ended: an ended upload with nothing spooled goes at once.
        stream = bytes(16)
        assert await store.register_stream(stream, fx.RELAY_SENDER, fx.RELAY_RECIPIENT, 1,
                                           2**62, 1) is StreamStatus.NEW
        assert await store.end_upload(stream)
        assert await store.file_streams(2) == []
    finally:
        await store.close()
    assert user_version(path) == RELAY_SCHEMA.version


async def test_relay_store_of_a_newer_qsecret_is_refused_untouched(tmp_path: Path) -> None:
    path = _copy("relay.sqlite3", tmp_path / "relay.sqlite3")
    newer = RELAY_SCHEMA.version + 1
    before = _stamp_future(path, newer)
    store = SqliteStore(path)
    with pytest.raises(SchemaTooNew) as caught:
        await store.open()
    await store.close()
    _assert_clear_refusal(str(caught.value), path, "relay store", newer, RELAY_SCHEMA.version)
    assert _snapshot(tmp_path) == before


async def test_new_relay_store_gets_the_current_version(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "relay.sqlite3")
    await store.open()
    await store.close()
    assert user_version(tmp_path / "relay.sqlite3") == RELAY_SCHEMA.version


# -- transfer progress -----------------------------------------------------------------------

def _partial_downloads(tmp_path: Path) -> tuple[Path, Path]:
    downloads = tmp_path / "downloads"
    folder = PartialStore.folder_for(downloads, fx.PARTIAL_TRANSFER_ID)
    state = _copy("partial-state.sqlite", folder / STATE_FILE)
    _copy("partial-0.part", folder / "0.part")
    return downloads, state


def test_transfer_progress_from_before_versions_resumes_and_lands(tmp_path: Path) -> None:
    downloads, state = _partial_downloads(tmp_path)
    assert PartialStore.pending(downloads) == [fx.PARTIAL_TRANSFER_ID]
    store = PartialStore.load(downloads, fx.PARTIAL_TRANSFER_ID)
    try:
        assert store.manifest == fx.partial_manifest()
        assert store.status == "receiving"
        assert store.position() == Position(0, 1)
        assert store.seqs() == (64, 5)
        assert store.destination(0) == (fx.PARTIAL_NAME,)
        digest = store.prepare(0, 1)
        assert digest.digest() == hashlib.sha256(fx.PARTIAL_CONTENT[:fx.PARTIAL_CHUNK]).digest()
        store.write(0, fx.PARTIAL_CHUNK, fx.PARTIAL_CONTENT[fx.PARTIAL_CHUNK:])
        landed, renamed = store.land(0)
    finally:
        store.close()
    assert landed.read_bytes() == fx.PARTIAL_CONTENT and not renamed
    assert user_version(state) == PROGRESS_SCHEMA.version


def test_transfer_progress_of_a_newer_qsecret_is_refused_untouched(tmp_path: Path) -> None:
    downloads, state = _partial_downloads(tmp_path)
    newer = PROGRESS_SCHEMA.version + 1
    before = _stamp_future(state, newer)
    with pytest.raises(TransferError) as caught:
        PartialStore.load(downloads, fx.PARTIAL_TRANSFER_ID)
    _assert_clear_refusal(str(caught.value), state, "transfer progress file", newer,
                          PROGRESS_SCHEMA.version)
    assert _snapshot(state.parent) == before


def test_new_transfer_progress_gets_the_current_version(tmp_path: Path) -> None:
    store = PartialStore.create(tmp_path / "downloads", fx.partial_manifest())
    state = store.folder / STATE_FILE
    store.close()
    assert user_version(state) == PROGRESS_SCHEMA.version


def test_a_store_pointed_at_another_stores_file_refuses_it_untouched(tmp_path: Path) -> None:
    for name in ("relay.sqlite3", "kme-pool.sqlite", "partial-state.sqlite"):
        path = _copy(name, tmp_path / name / "store.sqlite3")
        before = _snapshot(path.parent)
        with pytest.raises(StoreError, match="not a profile store"):
            Store.open(fx.PASSPHRASE, path)
        assert _snapshot(path.parent) == before, name
    path = _copy("profile.sqlite3", tmp_path / "p" / "pool.sqlite")
    before = _snapshot(path.parent)
    with pytest.raises(ValueError, match="not a KME key pool"):
        KeyPool(path)
    assert _snapshot(path.parent) == before
