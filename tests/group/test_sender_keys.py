"""Sender keys: chains, signatures, skipped and replayed messages, rotation, persistence."""

from __future__ import annotations

import os

import pytest

from client.group.sender_keys import (
    MAX_SKIP,
    ROTATE_AFTER_MESSAGES,
    ROTATE_AFTER_SECONDS,
    OwnSenderKey,
    PeerSenderKey,
    SenderKeyRecord,
    parse_group_message,
)
from client.protocol.errors import (
    BadSignature,
    DecryptionFailed,
    MalformedMessage,
    ReplayedMessage,
    TooManySkipped,
    UnsupportedVersion,
)

GROUP = os.urandom(16)


def _pair() -> tuple[OwnSenderKey, PeerSenderKey]:
    own = OwnSenderKey.new(GROUP, "alice", generation=1)
    record = SenderKeyRecord.decode(own.record().encode())  # as it travels
    return own, PeerSenderKey.from_record(record)


def test_messages_open_in_order_and_out_of_order() -> None:
    own, peer = _pair()
    wires = [own.encrypt(f"m{i}".encode()) for i in range(5)]
    assert peer.decrypt(wires[0]) == b"m0"
    assert peer.decrypt(wires[3]) == b"m3"  # 1 and 2 skipped: their keys are kept
    assert peer.decrypt(wires[1]) == b"m1"
    assert peer.decrypt(wires[4]) == b"m4"
    assert peer.decrypt(wires[2]) == b"m2"
    assert peer.skipped == {}


def test_a_replay_is_refused_and_changes_nothing() -> None:
    own, peer = _pair()
    wire = own.encrypt(b"once")
    assert peer.decrypt(wire) == b"once"
    before = peer.to_dict()
    with pytest.raises(ReplayedMessage):
        peer.decrypt(wire)
    assert peer.to_dict() == before


def test_a_member_who_joins_later_reads_from_where_the_record_starts() -> None:
    own = OwnSenderKey.new(GROUP, "alice", generation=1)
    early = own.encrypt(b"before you joined")
    late = PeerSenderKey.from_record(own.record())
    assert late.decrypt(own.encrypt(b"welcome")) == b"welcome"
    with pytest.raises(ReplayedMessage):  # the chain key it got cannot go back
        late.decrypt(early)


def test_tampered_ciphertext_or_header_fails_and_leaves_the_state() -> None:
    own, peer = _pair()
    wire = bytearray(own.encrypt(b"hello group"))
    header, signed, aad, ciphertext, signature = parse_group_message(bytes(wire))
    before = peer.to_dict()
    for index in (len(aad) + 5, len(signed) - 1, len(wire) - 1, 20):
        bad = bytearray(wire)
        bad[index] ^= 1
        with pytest.raises((BadSignature, MalformedMessage)):
            peer.decrypt(bytes(bad))
        assert peer.to_dict() == before
    assert peer.decrypt(bytes(wire)) == b"hello group"


def test_a_member_cannot_forge_another_members_message() -> None:
    """Every member holds alice's chain key; without her signing key a forgery fails."""
    own, peer = _pair()
    forger = OwnSenderKey(GROUP, "alice", 1, own.chain_key, *_other_signing_key())
    with pytest.raises(BadSignature):
        peer.decrypt(forger.encrypt(b"alice did not say this"))
    assert peer.iteration == 0


def _other_signing_key() -> tuple[bytes, bytes]:
    other = OwnSenderKey.new(GROUP, "mallory", generation=1)
    return other.signing_secret, other.signing_public


def test_a_correctly_signed_message_with_a_wrong_key_fails_authentication() -> None:
    own, peer = _pair()
    peer.chain_key = os.urandom(32)  # a member with a damaged copy of the chain
    with pytest.raises(DecryptionFailed):
        peer.decrypt(own.encrypt(b"x"))


def test_too_far_ahead_is_refused_without_work() -> None:
    own, peer = _pair()
    own.iteration = MAX_SKIP + 1
    with pytest.raises(TooManySkipped):
        peer.decrypt(own.encrypt(b"far"))
    assert peer.skipped == {} and peer.iteration == 0


def test_messages_for_another_group_sender_or_generation_are_refused() -> None:
    own, peer = _pair()
    for other in (OwnSenderKey(os.urandom(16), "alice", 1, own.chain_key, own.signing_secret,
                               own.signing_public),
                  OwnSenderKey(GROUP, "bob", 1, own.chain_key, own.signing_secret,
                               own.signing_public),
                  OwnSenderKey(GROUP, "alice", 2, own.chain_key, own.signing_secret,
                               own.signing_public)):
        with pytest.raises(MalformedMessage, match="another group, sender or generation"):
            peer.decrypt(other.encrypt(b"x"))


def test_unknown_versions_are_refused() -> None:
    own, peer = _pair()
    with pytest.raises(UnsupportedVersion):
        peer.decrypt(b"\x02" + own.encrypt(b"x")[1:])
    with pytest.raises(UnsupportedVersion):
        SenderKeyRecord.decode(b"\x09" + own.record().encode()[1:])


def test_rotation_is_due_after_1000_messages_or_7_days() -> None:
    own = OwnSenderKey.new(GROUP, "alice", generation=1, now=1000.0)
    assert not own.due_for_rotation(now=1000.0)
    assert own.due_for_rotation(now=1000.0 + ROTATE_AFTER_SECONDS)
    own.iteration = ROTATE_AFTER_MESSAGES
    assert own.due_for_rotation(now=1000.0)


def test_state_survives_a_round_trip_through_its_dict() -> None:
    own, peer = _pair()
    wires = [own.encrypt(b"a"), own.encrypt(b"b"), own.encrypt(b"c")]
    peer.decrypt(wires[2])
    own2 = OwnSenderKey.from_dict(own.to_dict())
    peer2 = PeerSenderKey.from_dict(peer.to_dict())
    assert peer2.decrypt(wires[0]) == b"a"
    assert peer2.decrypt(own2.encrypt(b"d")) == b"d"
    assert "chain" not in repr(own2) and "chain" not in repr(own2.record())
