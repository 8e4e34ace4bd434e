"""A small real profile for the damaged-store tests: identity, prekeys, one verified contact
(bob) with a session and a few texts each way, written with the store's own API."""

from __future__ import annotations

from pathlib import Path

from tests.fixtures.make_store_fixtures import FAST_KDF

PASSPHRASE = "damaged-store tests: a passphrase"
HANDLE, PEER = "alice", "bob"
TEXTS = ("first from alice", "first from bob", "second from alice", "second from bob")


def write_profile(data_dir: Path) -> Path:
    """Make ``data_dir/store.sqlite3`` (no WAL left behind); returns its path."""
    from client.messenger import payload
    from client.store import Store
    from tests.protocol.helpers import identity, make_bob, pair, receive, send

    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "store.sqlite3"
    alice, bob, link = pair()
    with Store.open(PASSPHRASE, path, **FAST_KDF) as store:
        store.save_identity(HANDLE, identity(HANDLE))
        own = make_bob(HANDLE)
        store.save_prekeys(own.bundle, own.secrets)
        store.pin_identity(PEER, identity(PEER).public, verified=True)
        for index, text in enumerate(TEXTS):
            body = payload.text(text).encode()
            if index % 2 == 0:
                outgoing = alice.encrypt(body, link.enc_keys(alice.send_plan().qkd_keys))
                store.commit_outgoing(PEER, alice, outgoing, body)
                for entry in store.outbox():
                    store.mark_sent(entry.id)
                receive(bob, link, outgoing.wire)
            else:
                messages = receive(alice, link, send(bob, link, body))
                store.commit_incoming(PEER, alice, f"in-{index}", messages)
    return path
