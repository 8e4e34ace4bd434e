"""The "added by me" mark of a contact (whose calls ring although nobody wrote yet): inside
the sealed contact record, old three-field records read as not added, verifying keeps it."""

from __future__ import annotations

from pathlib import Path

import cbor2
import nacl.pwhash

from client.messenger.api import ConversationId
from client.messenger.contacts import Contacts
from client.messenger.history import History
from client.store import Store
from tests.protocol.helpers import identity

FAST_KDF = {"opslimit": nacl.pwhash.argon2id.OPSLIMIT_MIN,
            "memlimit": nacl.pwhash.argon2id.MEMLIMIT_MIN}


def _store(tmp_path: Path) -> Store:
    store = Store.open("a passphrase", tmp_path / "store.sqlite3", **FAST_KDF)
    store.save_identity("bob", identity("bob"))
    return store


def test_a_record_from_before_the_mark_reads_as_not_added(tmp_path: Path) -> None:
    with _store(tmp_path) as store:
        old = cbor2.dumps(["erin", identity("erin").public.encode(), True])  # 3 fields
        with store.transaction() as db:
            db.execute("INSERT INTO contacts VALUES (?, ?)",
                       (store._sealer.name("erin"), store._sealer.seal("contact", old)))
        contact = store.contact("erin")
        assert contact is not None and contact.verified and not contact.added_by_me
        store.pin_identity("erin", contact.identity, verified=True, added_by_me=True)
        again = store.contact("erin")
        assert again is not None and again.verified and again.added_by_me


def test_verifying_keeps_the_mark_and_only_an_add_sets_it(tmp_path: Path) -> None:
    with _store(tmp_path) as store:
        contacts = Contacts(store, History(store, "bob", lambda _c: set()),
                            None, None, "bob", identity("bob"))  # type: ignore[arg-type]
        erin, carol = ConversationId.direct("erin"), ConversationId.direct("carol")
        store.pin_identity("erin", identity("erin").public, added_by_me=True)
        store.pin_identity("carol", identity("carol").public)  # pinned as she wrote first
        for verified in (True, False):
            contacts.set_verified(erin, verified)
            contacts.set_verified(carol, verified)
            assert contacts.added_by_me(erin) and not contacts.added_by_me(carol)
        assert not contacts.added_by_me(ConversationId.direct("nobody"))
