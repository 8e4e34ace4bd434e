"""Post-compromise recovery: an attacker with one party's full state loses the ability to
read after one ratchet turn, and each of the three sources alone suffices to heal.

The attacker is passive after the theft: it sees every wire message and holds a full
copy of Alice's state. ``derive_turn`` is the spec's root step; the attacker re-derives a
turn with it, given (injected) the true values of some secrets. A control run with all
three true secrets must decrypt, so a failure with one missing is due to that secret alone.
"""

from __future__ import annotations

import hmac
import os
import struct

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from client.protocol import (
    DecryptionFailed,
    Message,
    ProtocolError,
    QkdKeys,
    QkdMissing,
    RatchetConfig,
    Session,
)
from client.protocol.ratchet import (
    T_ORDINARY,
    T_TURN,
    derive_turn,
    open_first_message,
    parse_header,
)
from keysource import pq
from keysource.pq import x25519_shared

from .helpers import pair, receive, send


def _attacker_reads_chain(chain_key: bytes, start_n: int, wire: bytes) -> bytes:
    """Open an ordinary message of a chain whose key (at index start_n) the attacker holds."""
    header = parse_header(wire)
    ck = chain_key
    for _ in range(start_n, header.n):
        ck = hmac.digest(ck, b"\x02", "sha256")
    mk = hmac.digest(ck, b"\x01", "sha256")
    return AESGCM(mk).decrypt(struct.pack(">4xII", header.turn, header.n),
                              wire[header.header_end :], wire[: header.header_end])


def test_stolen_state_reads_until_one_turn_then_nothing() -> None:
    alice, bob, link = pair(RatchetConfig(refresh_interval=1000))
    receive(alice, link, send(bob, link, b"hi"))
    receive(bob, link, send(alice, link, b"turn"))
    stolen = Session.from_bytes(alice.to_bytes())  # the compromise: alice's full state
    # the theft is real: the attacker reads alice's current chain
    wire = send(alice, link, b"secret 1")
    assert parse_header(wire).kind == T_ORDINARY
    assert _attacker_reads_chain(stolen.ratchet.send_ck, stolen.ratchet.send_n, wire) == (
        b"secret 1")
    receive(bob, link, wire)
    # bob's turn targets alice's ratchet keys, which the attacker holds: only the fresh QKD
    # key protects it. Without it the attacker fails; handed it, the attacker reads.
    bob_turn = send(bob, link, b"secret 2")
    keys = link.dec_keys(alice.qkd_needed(bob_turn))
    alice.decrypt(bob_turn, keys)
    with pytest.raises(QkdMissing):
        stolen.decrypt(bob_turn)
    wrong = QkdKeys(keys.key_ids, tuple(os.urandom(32) for _ in keys.keys))
    with pytest.raises(DecryptionFailed):
        stolen.decrypt(bob_turn, wrong)
    assert [e.plaintext for e in stolen.decrypt(bob_turn, keys)] == [b"secret 2"]
    # alice turns: fresh X25519 key, KEM to bob's key, fresh QKD; her new keys advertised
    healed = send(alice, link, b"after heal 1")
    assert parse_header(healed).kind == T_TURN
    receive(bob, link, healed)
    reply = send(bob, link, b"after heal 2")  # bob's turn targets alice's NEW keys
    keys = link.dec_keys(alice.qkd_needed(reply))
    alice.decrypt(reply, keys)
    follow = send(alice, link, b"after heal 3")
    receive(bob, link, follow)
    # even handed the QKD keys of bob's turn, the stolen state cannot open it
    with pytest.raises(ProtocolError):
        stolen.decrypt(reply, keys)
    with pytest.raises(InvalidTag):  # nor alice's chain after her turn, from the old chain key
        _attacker_reads_chain(stolen.ratchet.send_ck, stolen.ratchet.send_n, follow)


def _true_turn_secrets(receiver: Session, wire: bytes, qkd_material: bytes):
    """God's view: the turn's DH and KEM secrets, from the receiver's private keys."""
    header = parse_header(wire)
    dh_secret, kem_secret = receiver.ratchet.own_keys[header.peer_version]
    return {
        "qkd": qkd_material,
        "kem_secret": pq.get_kem("ML-KEM-768").decapsulate(kem_secret, header.kem_ciphertext),
        "dh_secret": x25519_shared(dh_secret, header.dh_public),
    }


@pytest.mark.parametrize("fresh_source", ["qkd", "kem_secret", "dh_secret"])
@pytest.mark.parametrize("one_sided", [False, True], ids=["conversation-turn", "refresh-turn"])
def test_each_source_alone_heals(fresh_source: str, one_sided: bool) -> None:
    alice, bob, link = pair(RatchetConfig(refresh_interval=3))
    receive(alice, link, send(bob, link, b"hi"))
    receive(bob, link, send(alice, link, b"turn"))
    if one_sided:  # alice keeps sending until the refresh turn
        for i in range(2):
            receive(bob, link, send(alice, link, b"%d" % i))
    else:  # bob answers: alice's next message is a conversation turn
        receive(alice, link, send(bob, link, b"bob turns"))
    stolen = Session.from_bytes(alice.to_bytes())
    plan = alice.send_plan()
    assert plan.turn
    qkd = link.enc_keys(plan.qkd_keys)
    wire = alice.encrypt(b"healed", qkd).wire
    header_bytes = wire[: parse_header(wire).header_end]
    truth = _true_turn_secrets(bob, wire, qkd.material)

    def attempt(**secrets) -> bytes:
        mixed = derive_turn(stolen.ratchet.send_root, stolen.session_id, True, header_bytes,
                            **secrets)
        return open_first_message(mixed.key[32:], wire)

    assert attempt(**truth) == b"healed"  # control: the attacker's re-derivation is exact
    for guess in (None, os.urandom(len(truth[fresh_source]))):
        with pytest.raises(InvalidTag):
            attempt(**{**truth, fresh_source: guess})
    # and the receiver, who does hold every secret, reads it
    assert [e.plaintext for e in bob.decrypt(wire, link.dec_keys(qkd.key_ids))
            if isinstance(e, Message)] == [b"healed"]
