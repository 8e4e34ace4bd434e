"""One-time-pad mode: never a reused pad byte, clear exhaustion, one-time MAC."""

from __future__ import annotations

import pytest

from client.protocol import (
    MODE_OTP,
    DecryptionFailed,
    OtpExhausted,
    ProtocolError,
    QkdMissing,
    ReplayedMessage,
    Session,
)
from client.protocol.otp import OtpPad

from .helpers import pair


def _otp_pair():
    alice, bob, link = pair()
    alice.set_mode(MODE_OTP)
    bob.set_mode(MODE_OTP)
    return alice, bob, link


def _fill(session: Session, link, length: int) -> None:
    short = session.otp_shortfall(length)
    if short:
        session.add_otp_keys(link.enc_keys(-(-short // 32)))


def _deliver(receiver: Session, link, wire: bytes, fetched: dict) -> bytes:
    ids = receiver.qkd_needed(wire)
    keys = None
    if ids:
        keys = link.dec_keys(ids)
        fetched[wire] = keys
    (message,) = receiver.decrypt(wire, keys)
    assert message.otp and message.label == "QKD one-time pad"
    return message.plaintext


def test_messages_round_trip_and_no_pad_byte_is_ever_used_twice() -> None:
    alice, bob, link = _otp_pair()
    used: dict[str, list[tuple[int, int]]] = {}
    wires = []
    for i, length in enumerate([0, 1, 31, 32, 33, 100, 7, 64, 250, 3]):
        _fill(alice, link, length)
        wire = alice.encrypt(bytes([i]) * length).wire
        wires.append((i, length, wire))
        for key_id, start, size in OtpPad.parse(wire)[1]:
            for s, e in used.get(key_id, []):
                assert start + size <= s or e <= start, "pad bytes reused"
            used.setdefault(key_id, []).append((start, start + size))
    fetched: dict = {}
    for i, length, wire in reversed(wires):  # out of order is fine
        assert _deliver(bob, link, wire, fetched) == bytes([i]) * length
    assert alice.status().otp_send_bytes < 32 + 250


def test_pool_that_cannot_cover_a_message_refuses_clearly_and_changes_nothing() -> None:
    alice, _, link = _otp_pair()
    alice.add_otp_keys(link.enc_keys(2))  # 64 bytes: covers 32 of plaintext
    assert alice.otp_shortfall(32) == 0 and alice.otp_shortfall(33) == 1
    before = alice.to_bytes()
    with pytest.raises(OtpExhausted, match="needs 132 .*fetch at least 68 more bytes"):
        alice.encrypt(b"x" * 100)
    assert alice.to_bytes() == before
    alice.encrypt(b"y" * 32)
    with pytest.raises(OtpExhausted):
        alice.encrypt(b"")  # even an empty message needs a fresh MAC key


def test_replayed_and_tampered_otp_messages_are_rejected() -> None:
    alice, bob, link = _otp_pair()
    _fill(alice, link, 20)
    wire = alice.encrypt(b"attack at dawn, 0600").wire
    keys = link.dec_keys(bob.qkd_needed(wire))
    for index in range(len(wire)):
        tampered = bytearray(wire)
        tampered[index] ^= 0x04
        with pytest.raises(ProtocolError):
            bob.decrypt(bytes(tampered), keys)
    assert bob.decrypt(wire, keys)[0].plaintext == b"attack at dawn, 0600"
    with pytest.raises(ReplayedMessage):
        bob.decrypt(wire)


def test_otp_message_without_its_keys_asks_for_them() -> None:
    alice, bob, link = _otp_pair()
    _fill(alice, link, 5)
    wire = alice.encrypt(b"hello").wire
    with pytest.raises(QkdMissing, match="dec_keys"):
        bob.decrypt(wire)
    assert bob.decrypt(wire, link.dec_keys(bob.qkd_needed(wire)))[0].plaintext == b"hello"


def test_otp_is_bound_to_its_session() -> None:
    alice, bob, link = _otp_pair()
    other_alice, other_bob, _ = _otp_pair()
    _fill(alice, link, 5)
    wire = alice.encrypt(b"hello").wire
    keys = link.dec_keys(bob.qkd_needed(wire))
    with pytest.raises(DecryptionFailed):
        other_bob.decrypt(wire, keys)


def test_consumed_ranges_survive_persistence() -> None:
    alice, bob, link = _otp_pair()
    _fill(alice, link, 10)
    first = alice.encrypt(b"0123456789").wire
    alice = Session.from_bytes(alice.to_bytes())
    _fill(alice, link, 10)
    second = alice.encrypt(b"abcdefghij").wire
    assert not set(OtpPad.parse(first)[1]) & set(OtpPad.parse(second)[1])
    fetched: dict = {}
    assert _deliver(bob, link, first, fetched) == b"0123456789"
    bob = Session.from_bytes(bob.to_bytes())
    with pytest.raises(ReplayedMessage):
        bob.decrypt(first)
    assert _deliver(bob, link, second, fetched) == b"abcdefghij"
