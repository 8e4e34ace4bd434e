"""x25519_ephemeral: a fresh key pair and its agreement in one step, as a ratchet turn
uses it, checked like x25519_shared and one scalar multiplication cheaper."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import x25519

from keysource import pq
from keysource.pq import InvalidKey
from tests.protocol.helpers import pair, send


def test_ephemeral_pair_agrees_with_the_peer_and_is_a_real_pair() -> None:
    peer = pq.x25519_keypair()
    fresh, shared = pq.x25519_ephemeral(peer.public_key)
    assert shared == pq.x25519_shared(peer.secret_key, fresh.public_key)
    assert shared == pq.x25519_shared(fresh.secret_key, peer.public_key)
    assert pq.x25519_public(fresh.secret_key) == fresh.public_key
    assert pq.x25519_ephemeral(peer.public_key)[0] != fresh  # fresh every time


def test_ephemeral_refuses_what_x25519_shared_refuses() -> None:
    with pytest.raises(InvalidKey, match="rejected"):
        pq.x25519_ephemeral(bytes(32))  # the all-zero point is low order
    with pytest.raises(InvalidKey, match="32 bytes"):
        pq.x25519_ephemeral(b"short")


def test_a_ratchet_turn_loads_no_x25519_secret_from_bytes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The key a turn makes is used as made: re-loading it from its bytes would derive its
    public key again (a scalar multiplication per turn, for nothing)."""
    alice, bob, link = pair()
    loads = []
    load = x25519.X25519PrivateKey.from_private_bytes

    def counting(data: bytes) -> x25519.X25519PrivateKey:
        loads.append(1)
        return load(data)

    monkeypatch.setattr(x25519.X25519PrivateKey, "from_private_bytes", counting)
    assert bob.send_plan().turn
    turns_before = bob.ratchet.send_turn
    wire = send(bob, link, b"reply")
    assert bob.ratchet.send_turn == turns_before + 1 and not loads
    monkeypatch.undo()
    assert [m.plaintext for m in alice.decrypt(wire, link.dec_keys(alice.qkd_needed(wire)))] \
        == [b"reply"]
