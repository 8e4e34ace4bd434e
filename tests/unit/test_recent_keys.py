"""keysource.pq.recent: a key object a ratchet turn made is found again when the peer's
next turn uses its secret, instead of being loaded again from bytes (an X25519 scalar
multiplication, an ML-KEM seed expansion)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from keysource import pq
from keysource.pq import openssl_backend
from keysource.pq.recent import MADE, RecentKeys
from tests.protocol.helpers import pair, receive, send


def test_take_forgets_and_the_oldest_go_first() -> None:
    keys = RecentKeys(limit=2)
    keys.remember("k", b"1", "one")
    keys.remember("k", b"2", "two")
    keys.remember("other", b"2", "other two")  # a kind of its own; "one" goes
    assert keys.take("k", b"1") is None
    assert keys.take("k", b"2") == "two" and keys.take("k", b"2") is None
    assert keys.take("other", b"2") == "other two" and len(keys) == 0


class _Loads:
    """Counts loads of secret keys from bytes."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.x25519 = 0
        self.mlkem = 0
        from_private = x25519.X25519PrivateKey.from_private_bytes
        from_seed = mlkem.MLKEM768PrivateKey.from_seed_bytes

        def x25519_load(data: bytes) -> x25519.X25519PrivateKey:
            self.x25519 += 1
            return from_private(data)

        def mlkem_load(data: bytes) -> mlkem.MLKEM768PrivateKey:
            self.mlkem += 1
            return from_seed(data)

        monkeypatch.setattr(x25519.X25519PrivateKey, "from_private_bytes", x25519_load)
        monkeypatch.setattr(mlkem.MLKEM768PrivateKey, "from_seed_bytes", mlkem_load)


def test_keys_made_here_are_used_without_loading_them(monkeypatch: pytest.MonkeyPatch) -> None:
    loads = _Loads(monkeypatch)
    peer = pq.x25519_keypair()
    fresh, shared = pq.x25519_ephemeral(peer.public_key)
    assert pq.x25519_shared(fresh.secret_key, peer.public_key) == shared
    assert loads.x25519 == 0
    assert pq.x25519_shared(fresh.secret_key, peer.public_key) == shared  # taken: loaded now
    assert loads.x25519 == 1

    kem = openssl_backend.OpenSslMlKem("ML-KEM-768")
    pair_ = kem.generate_keypair()
    ciphertext, secret = kem.encapsulate(pair_.public_key)
    assert kem.decapsulate(pair_.secret_key, ciphertext) == secret
    assert kem.decapsulate(pair_.secret_key, ciphertext) == secret  # the expansion cache
    assert loads.mlkem == 0


def test_a_turn_received_uses_the_keys_of_our_last_turn_as_made(
        monkeypatch: pytest.MonkeyPatch) -> None:
    alice, bob, link = pair()
    reply = send(bob, link, b"bob turns")  # bob's keys of version 1, made now
    assert [m.plaintext for m in receive(alice, link, reply)] == [b"bob turns"]
    turn = send(alice, link, b"alice turns, to bob's version 1")
    loads = _Loads(monkeypatch)
    assert [m.plaintext for m in receive(bob, link, turn)] == [b"alice turns, to bob's version 1"]
    assert loads.x25519 == 0
    if pq.get_kem("ML-KEM-768").backend == "openssl":
        assert loads.mlkem == 0


@pytest.fixture(autouse=True)
def _no_keys_from_other_tests() -> None:
    MADE.clear()
