"""Shared helpers for the protocol tests: two parties and a QKD key source.

``KeyLink`` hands out random keys with UUID key_IDs on the sending side and the
same keys, once, by key_ID on the receiving side: the semantics of an ETSI 014
KME pair (enc_keys / dec_keys), as test data for the sans-I/O core. The real
KMEs are exercised in test_kme_integration.py.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from functools import lru_cache

from client.protocol import Identity, QkdKeys, RatchetConfig, Session
from client.protocol.bundle import PrekeyBundle, PrekeySecrets, generate_prekeys, parse_bundle


@dataclass
class KeyLink:
    """One KME pair's worth of shared keys between SAE_A and SAE_B."""

    issued: dict[str, bytes] = field(default_factory=dict)
    available: bool = True

    def enc_keys(self, count: int) -> QkdKeys | None:
        if not self.available or count == 0:
            return None
        pairs = [(str(uuid.uuid4()), os.urandom(32)) for _ in range(count)]
        self.issued.update(pairs)
        return QkdKeys.from_pairs(pairs)

    def dec_keys(self, key_ids: tuple[str, ...]) -> QkdKeys | None:
        if not key_ids:
            return None
        return QkdKeys(key_ids, tuple(self.issued.pop(k) for k in key_ids))


@lru_cache(maxsize=4)
def identity(name: str) -> Identity:
    return Identity.from_seed(name.encode().ljust(32, b"\x00"))


@dataclass
class Bob:
    identity: Identity
    bundle: PrekeyBundle
    secrets: PrekeySecrets


def make_bob(handle: str = "bob", one_time: int = 2, sae_id: str = "SAE_B") -> Bob:
    ident = identity(handle)
    bundle, secrets = generate_prekeys(ident, handle, sae_id=sae_id, kme_hint="127.0.0.1:0",
                                       one_time_count=one_time)
    return Bob(ident, bundle, secrets)


def pair(config: RatchetConfig | None = None, link: KeyLink | None = None,
         first: bytes = b"hello") -> tuple[Session, Session, KeyLink]:
    """Alice and Bob with an established session (Bob has read Alice's first message)."""
    link = link or KeyLink()
    bob = make_bob()
    fetched = parse_bundle(bob.bundle.with_one_time(1).encode(), expected_handle="bob")
    alice = Session.initiate(identity("alice"), "alice", "SAE_A", fetched,
                             link.enc_keys(1), config=config)
    out = alice.encrypt(first)
    initial = Session.peek_initial(out.wire)
    bob_session, events = Session.accept(out.wire, bob.identity, "bob", "SAE_B", bob.bundle,
                                         bob.secrets, link.dec_keys(initial.qkd_key_ids),
                                         config=config)
    assert [e.plaintext for e in events] == [first]
    return alice, bob_session, link


def send(sender: Session, link: KeyLink, plaintext: bytes) -> bytes:
    """Encrypt through the sans-I/O API as the I/O layer would (fetch QKD when planned)."""
    plan = sender.send_plan()
    return sender.encrypt(plaintext, link.enc_keys(plan.qkd_keys)).wire


def receive(receiver: Session, link: KeyLink, wire: bytes, held: dict | None = None) -> list:
    """Decrypt, fetching the QKD keys the header names (once: a KME hands a key out once)."""
    ids = receiver.qkd_needed(wire)
    keys = None
    if ids:
        if held is not None and wire in held:
            keys = held[wire]
        else:
            keys = link.dec_keys(ids)
            if held is not None:
                held[wire] = keys
    return receiver.decrypt(wire, keys)
