"""A small real profile for the damaged-store tests: identity, prekeys, one verified contact
(bob) with a session and a few texts each way, written with the store's own API."""

from __future__ import annotations

from pathlib import Path

from tests.fixtures.make_store_fixtures import (
    FAST_KDF,
    commit_received,
    commit_sent,
    start_profile,
)

PASSPHRASE = "damaged-store tests: a passphrase"
HANDLE, PEER = "alice", "bob"
TEXTS = ("first from alice", "first from bob", "second from alice", "second from bob")


def write_profile(data_dir: Path) -> Path:
    """Make ``data_dir/store.sqlite3`` (no WAL left behind); returns its path."""
    from client.messenger import payload
    from client.store import Store

    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "store.sqlite3"
    with Store.open(PASSPHRASE, path, **FAST_KDF) as store:
        alice, bob, link = start_profile(store, HANDLE, PEER)
        for index, text in enumerate(TEXTS):
            body = payload.text(text).encode()
            if index % 2 == 0:
                commit_sent(store, PEER, alice, bob, link, body)
            else:
                commit_received(store, PEER, alice, bob, link, body, f"in-{index}")
    return path
