"""Group receipts in the store and on the wire: a version-2 store migrates to version 3 with
every group row, receipts count per message only from its recipients (the rest refused and
counted, never raised), and a receipt payload is bounded and checked."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from client.messenger import payload
from client.messenger.api import GroupCounts
from client.messenger.history import kept_in_history
from client.store import Store
from client.store.check import inspect_store
from client.store.schema import STORE_SCHEMA
from client.store.store import group_key
from tests.fixtures import make_group_store_v2 as v2
from tests.fixtures import make_store_fixtures as fx
from tests.sqlite_files import user_version

GROUP = bytes(range(16))


def test_a_version_2_store_with_a_group_migrates_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    shutil.copyfile(v2.OUT, path)
    assert user_version(path) == 2
    with Store.open(fx.PASSPHRASE, path) as store:
        assert user_version(path) == STORE_SCHEMA.version == 3
        assert store.group_ids() == [v2.GROUP]
        loaded = store.load_group(v2.GROUP)
        assert loaded is not None and loaded[0] is not None and loaded[1]["shown_in"] == 1
        texts = [payload.decode(e.plaintext) for e in store.history(group_key(v2.GROUP))]
        assert [t.text for t in texts if isinstance(t, payload.Text)] == [
            v2.SENT.text, v2.RECEIVED.text]
        # A message from before receipts has no row: its receipts are refused, not raised.
        assert store.group_receipts(v2.GROUP) == {}
        outcome = store.record_group_receipts(v2.GROUP, "bob", "read", [v2.SENT.id])
        assert (outcome.changed, outcome.unknown) == ((), 1)
    assert inspect_store(fx.PASSPHRASE, path).healthy


def test_receipts_count_per_message_from_its_recipients_only(tmp_path: Path) -> None:
    with Store.open("pw", tmp_path / "store.sqlite3", **fx.FAST_KDF) as store:
        store.commit_group_outgoing(GROUP, {}, "w1", ("bob", "carol", "dave"), b"\x10a",
                                    b"one", "sk", text_id="t1")
        store.commit_group_outgoing(GROUP, {}, "w2", ("bob", "carol"), b"\x10b", b"two", "sk",
                                    text_id="t2")
        first = store.record_group_receipts(GROUP, "bob", "delivered", ["t1", "t2", "t1"])
        assert [(r.message_id, r.delivered) for r in first.changed] == [
            ("t1", {"bob"}), ("t2", {"bob"})]
        again = store.record_group_receipts(GROUP, "bob", "delivered", ["t1"])
        assert again.changed == () and again.unknown == 0  # a repeat changes nothing
        read = store.record_group_receipts(GROUP, "carol", "read", ["t1"])  # read: delivered
        assert read.changed[0].read == {"carol"} and read.changed[0].delivered == {"bob",
                                                                                   "carol"}
        refused = store.record_group_receipts(GROUP, "dave", "read", ["t2", "nope"])
        assert (refused.changed, refused.not_recipient, refused.unknown) == ((), 1, 1)
        other = store.record_group_receipts(bytes(16), "bob", "read", ["t1"])
        assert other.unknown == 1  # another group's message IDs are not ours
        counted = store.group_receipts(GROUP)
        assert counted["t1"].recipients == ("bob", "carol", "dave")
        assert (len(counted["t1"].delivered), len(counted["t1"].read)) == (2, 1)
        assert (len(counted["t2"].delivered), len(counted["t2"].read)) == (1, 0)
    raw = (tmp_path / "store.sqlite3").read_bytes()
    assert b"carol" not in raw and b"dave" not in raw  # sealed and keyed, like every row


def test_a_group_receipt_payload_is_bounded_and_checked() -> None:
    body = payload.group_receipt(GROUP, "read", ["a" * 32, "b" * 32])
    decoded = payload.decode(body.encode())
    assert isinstance(decoded, payload.GroupReceipt)
    assert (decoded.group, decoded.state, decoded.ids) == (GROUP, "read", ("a" * 32, "b" * 32))
    assert not kept_in_history(body.encode())  # counted by the sender, not a history line
    with pytest.raises(payload.PayloadError):
        payload.group_receipt(GROUP, "seen", ["a"])
    with pytest.raises(payload.PayloadError):
        payload.group_receipt(GROUP, "read", ["a"] * (payload.MAX_RECEIPT_IDS + 1))
    for bad in ({"ids": []}, {"ids": ["x" * 65]}, {"ids": [1]}, {"group": b"short"},
                {"state": "seen"}):
        fields = {"group": GROUP, "state": "read", "ids": ["a"], **bad}
        data = payload.cbor2.dumps({"v": 1, "t": "group_receipt", "id": "x", "ts": 1.0,
                                    **fields})
        with pytest.raises(payload.PayloadError):
            payload.decode(data)


def test_counts_read_as_the_tui_shows_them() -> None:
    assert GroupCounts(3, 2, 4).describe() == "✓ 3/4 delivered · 2/4 read"
