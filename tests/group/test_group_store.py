"""Groups in the profile store (schema version 2): an older store opens and migrates, the
group rows are sealed and round-trip, a group message is committed once, and a member's
group session survives a restart mid-chain."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from client.group.roster import Change, GroupLog, Op
from client.group.session import Distribution, GroupSession
from client.store import Store
from client.store.check import inspect_store
from client.store.schema import STORE_SCHEMA
from client.store.store import group_key
from tests.fixtures import make_store_fixtures as fx
from tests.protocol.helpers import identity
from tests.sqlite_files import user_version

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "stores" / "profile.sqlite3"
GROUP = bytes(range(16))


def _tables(path: Path) -> set[str]:
    db = sqlite3.connect(path)
    try:
        return {n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        db.close()


def _sessions(members: tuple[str, ...] = ("alice", "bob", "carol")) -> dict[str, GroupSession]:
    create = Change.make(identity("alice"), group_id=GROUP, op=Op.CREATE, author="alice",
                         parents=(), name="trio",
                         members=[(h, identity(h).public.encode()) for h in members])
    return {h: GroupSession(h, GroupLog(Change.decode(create.encode()))) for h in members}


@pytest.mark.parametrize("stamp", [0, 1], ids=["unversioned", "version-1"])
def test_a_store_of_version_1_opens_migrated_with_its_rows_and_takes_groups(
        tmp_path: Path, stamp: int) -> None:
    path = tmp_path / "store.sqlite3"
    shutil.copyfile(FIXTURE, path)
    if stamp:  # as qsecret of schema version 1 left it
        db = sqlite3.connect(path)
        db.execute(f"PRAGMA user_version = {stamp}")
        db.close()
    assert "groups" not in _tables(path)
    report = inspect_store(fx.PASSPHRASE, path)  # doctor reads an old file without writing
    assert report.healthy and "groups" not in report.counts
    assert user_version(path) == stamp
    with Store.open(fx.PASSPHRASE, path) as store:
        assert user_version(path) == STORE_SCHEMA.version >= 2
        assert [e.plaintext for e in store.history(fx.PROFILE_PEER)] == [
            fx.PROFILE_SENT, fx.PROFILE_RECEIVED]  # what was there is still there
        alice = _sessions()["alice"]
        store.save_group(GROUP, {"changes": alice.log.export(), "counts": {}},
                         {"session": alice.keys_to_dict()})
        assert store.group_ids() == [GROUP]
    assert {"groups", "group_keys", "group_outbox"} <= _tables(path)
    with Store.open(fx.PASSPHRASE, path) as store:
        loaded = store.load_group(GROUP)
        assert loaded is not None and loaded[0] is not None
        assert GroupLog.restore(loaded[0]["changes"]).roster.name == "trio"
    assert inspect_store(fx.PASSPHRASE, path).healthy


def test_group_rows_are_sealed_and_a_group_message_is_committed_once(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    with Store.open("pw", path, **fx.FAST_KDF) as store:
        store.save_group(GROUP, {"changes": [], "counts": {}}, {"secret": b"chain key 123"})
        assert store.commit_group_incoming(GROUP, {"secret": b"k"}, "m1", "bob", b"hi", "sk")
        assert not store.commit_group_incoming(GROUP, {"secret": b"k"}, "m1", "bob", b"hi", "sk")
        outbox_id = store.commit_group_outgoing(GROUP, {"secret": b"k"}, "m2", ("bob", "carol"),
                                                b"\x10wire", b"mine", "sk")
        (entry,) = store.group_outbox()
        assert (entry.group_id, entry.recipients, entry.wire) == (
            GROUP, ("bob", "carol"), b"\x10wire")
        store.mark_group_sent(outbox_id)
        assert store.group_outbox() == []
        history = store.history(group_key(GROUP))
        assert [(e.direction, e.sender, e.plaintext) for e in history] == [
            ("in", "bob", b"hi"), ("out", "", b"mine")]
    raw = path.read_bytes() + (tmp_path / "store.sqlite3-wal").read_bytes() \
        if (tmp_path / "store.sqlite3-wal").exists() else path.read_bytes()
    assert b"chain key 123" not in raw and b"trio" not in raw


def test_a_group_session_restored_mid_chain_reads_on_and_resends_from_the_start() -> None:
    sessions = _sessions()
    out = sessions["alice"].encrypt(b"one")
    for member in ("bob", "carol"):
        sessions[member].receive_distribution("alice", out.distributions[member].encode())
        assert sessions[member].decrypt(out.wire)[1] == b"one"
    # alice and bob restart from what the store keeps.
    alice = GroupSession.restore("alice", sessions["alice"].log,
                                 sessions["alice"].keys_to_dict())
    bob = GroupSession.restore("bob", sessions["bob"].log, sessions["bob"].keys_to_dict())
    second = alice.encrypt(b"two")
    assert second.distributions == {}  # bob and carol hold the key already
    assert bob.decrypt(second.wire)[1] == b"two"
    # carol's copy was lost (say, with a pairwise session): sent again from iteration 0,
    # it opens the messages she missed, and is the same key (same generation).
    lost = _sessions()["carol"]
    again = alice.resend("carol")
    assert isinstance(again, Distribution) and again.record.iteration == 0
    lost.receive_distribution("alice", again.encode())
    assert lost.decrypt(out.wire)[1] == b"one"
    assert lost.decrypt(second.wire)[1] == b"two"
    assert alice.resend("dave") is None  # never a member: nothing to resend
