"""What protects a call offer: it rides inside the conversation's ratchet, so an offer
altered on the way (or forged without the session's keys) never opens and never rings."""

from __future__ import annotations

import pytest

from client.call.signalling import Call, CallMessage, Kind, QkdKeys, Send
from client.messenger import payload as payloads
from client.protocol import ProtocolError
from tests.protocol.helpers import pair, receive, send


def _offer_plaintext() -> bytes:
    _call, effects = Call.outgoing(QkdKeys(), now=0.0)
    (offer,) = [e.message for e in effects if isinstance(e, Send)]
    return payloads.call(offer.encode()).encode()


def test_an_offer_opens_intact_and_a_tampered_one_is_refused_by_the_ratchet() -> None:
    alice, bob, link = pair()
    receive(alice, link, send(bob, link, b"hi"))  # an established, ordinary conversation
    plaintext = _offer_plaintext()
    wire = send(alice, link, plaintext)
    before = bob.to_bytes()
    for index in (len(wire) // 2, len(wire) - 1):  # the sealed body and its tag
        tampered = bytearray(wire)
        tampered[index] ^= 0x01
        with pytest.raises(ProtocolError):
            bob.decrypt(bytes(tampered), None)
        assert bob.to_bytes() == before  # nothing changed: the intact offer still opens
    (message,) = receive(bob, link, wire)
    body = payloads.decode(message.plaintext)
    assert isinstance(body, payloads.CallPayload)
    assert CallMessage.decode(body.data).kind is Kind.OFFER
