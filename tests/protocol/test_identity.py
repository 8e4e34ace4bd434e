"""Identities, fingerprints, safety numbers and their QR codes."""

from __future__ import annotations

import re

import pytest

from client.protocol import BadSignature, Identity, PublicIdentity, safety_number
from client.protocol.errors import MalformedMessage
from client.protocol.identity import (
    matches_scanned_qr,
    qr_svg,
    qr_text,
    safety_qr,
    safety_qr_payload,
)

from .helpers import identity


def test_public_identity_round_trips_and_private_encoding_too() -> None:
    alice = identity("alice")
    assert PublicIdentity.decode(alice.public.encode()) == alice.public
    assert Identity.decode_private(alice.encode_private()) == alice
    assert "signing_secret" not in repr(alice)


def test_from_seed_is_deterministic_and_seeds_differ() -> None:
    assert Identity.from_seed(b"s" * 32) == Identity.from_seed(b"s" * 32)
    assert Identity.from_seed(b"s" * 32).public != Identity.from_seed(b"t" * 32).public


def test_sign_and_verify_with_both_halves() -> None:
    alice = identity("alice")
    signature = alice.sign(b"message")
    alice.public.verify(b"message", signature)
    with pytest.raises(BadSignature):
        alice.public.verify(b"other", signature)
    with pytest.raises(BadSignature):  # a classical-only forgery is not enough
        alice.public.verify(b"message", signature[:64] + bytes(len(signature) - 64))


def test_decode_rejects_truncated_and_trailing_bytes() -> None:
    data = identity("alice").public.encode()
    with pytest.raises(MalformedMessage):
        PublicIdentity.decode(data[:-1])
    with pytest.raises(MalformedMessage):
        PublicIdentity.decode(data + b"\x00")


def test_safety_number_is_order_independent_60_digits_in_groups_of_5() -> None:
    a, b = identity("alice").public, identity("bob").public
    number = safety_number("alice", a, "bob", b)
    assert number == safety_number("bob", b, "alice", a)
    assert re.fullmatch(r"(\d{5} ){11}\d{5}", number)


def test_safety_number_changes_with_identity_or_handle() -> None:
    a, b, c = identity("alice").public, identity("bob").public, identity("carol").public
    base = safety_number("alice", a, "bob", b)
    assert safety_number("alice", a, "bob", c) != base
    assert safety_number("alice", a, "bobby", b) != base
    # each half depends only on its own user: the other user's half is unchanged
    assert set(base.replace(" ", "")[i : i + 30] for i in (0, 30)) & set(
        safety_number("alice", a, "bob", c).replace(" ", "")[i : i + 30] for i in (0, 30))


def test_qr_code_text_and_svg_and_scanned_payload() -> None:
    a, b = identity("alice").public, identity("bob").public
    code = safety_qr("alice", a, "bob", b)
    text = qr_text(code)
    lines = text.splitlines()
    assert len({len(line) for line in lines}) == 1 and len(lines) >= 13
    assert set(text) <= {"█", "▀", "▄", " ", "\n"}
    svg = qr_svg(code)
    assert svg.startswith("<svg") and "</svg>" in svg
    payload = safety_qr_payload("bob", b, "alice", a)
    assert payload == safety_qr_payload("alice", a, "bob", b)
    assert matches_scanned_qr(payload, "alice", a, "bob", b)
    c = identity("carol").public
    assert not matches_scanned_qr(payload, "alice", a, "bob", c)
