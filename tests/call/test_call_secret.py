"""A call's session secret comes from the ratchet message that carried its offer: both ends
derive the same 32 bytes although other messages are in flight both ways, another
conversation (or another call id) gives another secret, a tampered offer never opens, and an
old client's offer (with a secret beside it) is refused with "update qsecret"."""

from __future__ import annotations

import os

import cbor2
import pytest

from client.call.signalling import (
    CALL_ID_BYTES,
    LEGACY_VERSION,
    OUTDATED,
    Call,
    CallMessage,
    Kind,
    QkdKeys,
    Send,
    SignallingError,
    call_secret,
    refuse_outdated,
)
from client.messenger import payload as payloads
from client.protocol import MODE_OTP, Message, ProtocolError, Session
from client.protocol.exporter import export, message_secret
from tests.protocol.helpers import KeyLink, pair, receive

QKD = QkdKeys(("k-1",), os.urandom(32))


def _seal(sender: Session, link: KeyLink, plaintext: bytes) -> tuple[bytes, bytes]:
    """Seal as the outbox does; the wire and the message's exporter secret."""
    out = sender.encrypt(plaintext, link.enc_keys(sender.send_plan().qkd_keys))
    return out.wire, out.exporter


def _opened(receiver: Session, link: KeyLink, wire: bytes) -> list[tuple[bytes, bytes]]:
    """The messages a delivery opened (a message of a turn not yet here is held)."""
    return [(m.plaintext, m.exporter) for m in receive(receiver, link, wire)
            if isinstance(m, Message)]


def _offer(call_id: bytes) -> tuple[Call, bytes]:
    call, effects = Call.outgoing(QKD, now=0.0, call_id=call_id)
    (offer,) = [e.message for e in effects if isinstance(e, Send)]
    return call, payloads.call(offer.encode()).encode()


def test_both_ends_derive_the_same_secret_with_messages_in_flight_both_ways() -> None:
    alice, bob, link = pair()
    _opened(alice, link, _seal(bob, link, b"bob turns")[0])  # a conversation under way
    in_flight_to_bob = [_seal(alice, link, f"a{i}".encode())[0] for i in range(3)]
    in_flight_to_alice = [_seal(bob, link, f"b{i}".encode())[0] for i in range(2)]
    call_id = os.urandom(CALL_ID_BYTES)
    caller, plaintext = _offer(call_id)
    offer_wire, sealed_secret = _seal(alice, link, plaintext)
    caller.bind_session(call_secret(sealed_secret, call_id))
    after, after_secret = _seal(alice, link, b"after the offer")
    # bob reads out of order: a later message first (held: its turn message is not here),
    # then the earlier ones backwards (released, and the offer's key kept as skipped);
    # alice reads bob's messages in between (her next message turns the ratchet again).
    assert _opened(bob, link, after) == []
    for wire in in_flight_to_alice:
        _opened(alice, link, wire)
    for wire in reversed(in_flight_to_bob):
        _opened(bob, link, wire)
    ((opened, opened_secret),) = _opened(bob, link, offer_wire)
    assert opened == plaintext
    assert opened_secret == sealed_secret and len(sealed_secret) == 32
    assert caller.session_secret == call_secret(opened_secret, call_id)
    assert after_secret != sealed_secret  # each message has its own


def test_a_turn_message_and_the_one_time_pad_export_the_same_at_both_ends() -> None:
    alice, bob, link = pair()
    _opened(alice, link, _seal(bob, link, b"bob turns")[0])
    wire, sealed = _seal(alice, link, b"offer in a turn message")  # alice turns here
    assert wire[1] == 2  # a ratchet turn (type 2): the root step's chain key
    assert _opened(bob, link, wire) == [(b"offer in a turn message", sealed)]
    for session in (alice, bob):
        session.set_mode(MODE_OTP)
    alice.add_otp_keys(link.enc_keys(2))
    wire, sealed = _seal(alice, link, b"offer under the pad")
    ((_, opened),) = _opened(bob, link, wire)
    assert opened == sealed and len(sealed) == 32


def test_another_conversation_or_call_id_gives_another_secret() -> None:
    alice, bob, link = pair()
    carol_link = KeyLink()
    alice2, carol, _ = pair(link=carol_link)  # the same plaintext in another conversation
    call_id = os.urandom(CALL_ID_BYTES)
    _, plaintext = _offer(call_id)
    wire, secret = _seal(alice, link, plaintext)
    other_wire, other_secret = _seal(alice2, carol_link, plaintext)
    assert _opened(bob, link, wire)[0][1] == secret
    assert _opened(carol, carol_link, other_wire)[0][1] == other_secret
    assert secret != other_secret
    assert call_secret(secret, call_id) != call_secret(other_secret, call_id)
    assert call_secret(secret, call_id) != call_secret(secret, os.urandom(CALL_ID_BYTES))
    assert call_secret(secret, call_id) != secret  # the message secret itself never leaves


def test_a_tampered_offer_never_opens_so_no_secret_is_exported() -> None:
    alice, bob, link = pair()
    _, plaintext = _offer(os.urandom(CALL_ID_BYTES))
    wire, _ = _seal(alice, link, plaintext)
    tampered = bytearray(wire)
    tampered[-20] ^= 0x01
    with pytest.raises(ProtocolError):
        bob.decrypt(bytes(tampered), None)


def test_exporter_functions_refuse_bad_input_and_separate_labels() -> None:
    secret = message_secret(os.urandom(32))
    assert export(secret, "qsecret call v1", b"x") != export(secret, "qsecret file v1", b"x")
    with pytest.raises(ValueError):
        message_secret(b"short")
    with pytest.raises(ValueError):
        export(b"short", "label", b"")
    with pytest.raises(ValueError):
        export(secret, "", b"")
    with pytest.raises(SignallingError):
        call_secret(b"", os.urandom(CALL_ID_BYTES))  # a message without an exporter


def test_a_caller_cannot_key_the_call_before_its_offer_is_sealed() -> None:
    caller, effects = Call.outgoing(QKD, now=0.0)
    (offer,) = [e.message for e in effects if isinstance(e, Send)]
    secret = os.urandom(32)
    callee, _ = Call.incoming(CallMessage.decode(offer.encode()), secret, now=0.1)
    answer_effects = callee.answer(QKD, now=1.0)
    (answer,) = [e.message for e in answer_effects if isinstance(e, Send)]
    with pytest.raises(SignallingError, match="before the offer was sealed"):
        caller.receive(answer, now=1.1)
    with pytest.raises(SignallingError):
        Call.incoming(offer, b"", now=0.1)  # nor a callee without the secret
    caller.bind_session(secret)
    with pytest.raises(SignallingError, match="once"):
        caller.bind_session(secret)


def test_an_old_clients_offer_is_refused_with_update_qsecret_in_its_own_version() -> None:
    """A version-1 offer (its random secret beside it in the payload) never rings; the
    decline goes back as version 1, which the old client reads ("declined: update ...")."""
    _, effects = Call.outgoing(QKD, now=0.0)
    (new_offer,) = [e.message for e in effects if isinstance(e, Send)]
    body = cbor2.loads(new_offer.encode())
    old = CallMessage.decode(cbor2.dumps({**body, "v": LEGACY_VERSION}))
    assert old.version == LEGACY_VERSION and old.kind is Kind.OFFER
    with pytest.raises(SignallingError, match="update qsecret"):
        Call.incoming(old, os.urandom(32), now=0.1)
    refusal = refuse_outdated(old)
    wire = cbor2.loads(refusal.encode())
    assert (wire["v"], wire["k"], wire["c"], wire["r"]) == (1, "decline", old.call_id,
                                                           OUTDATED)
    assert "update qsecret" in OUTDATED
