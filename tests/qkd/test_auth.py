"""Wegman-Carter authentication of the classical channel, and its key accounting."""

from __future__ import annotations

import pytest

from keysource.qkd.auth import AuthError, AuthKeyExhausted, ChannelAuth, make_psk, split_psk
from keysource.qkd.net import AuthStore


def pair(psk: bytes | None = None) -> tuple[ChannelAuth, ChannelAuth]:
    psk = psk or make_psk()
    return ChannelAuth.from_psk(psk, "alice"), ChannelAuth.from_psk(psk, "bob")


def test_tag_verifies_and_consumes_one_pad_each_side() -> None:
    alice, bob = pair()
    index = alice.next_send_index()
    tag = alice.tag(index, b"hello bob")
    bob.verify(index, b"hello bob", tag)
    assert alice.used_bits == 256 and bob.used_bits == 256


def test_tampered_message_is_rejected_and_its_pad_burnt() -> None:
    alice, bob = pair()
    tag = alice.tag(0, b"sift: 0101")
    with pytest.raises(AuthError, match="tag mismatch"):
        bob.verify(0, b"sift: 0111", tag)
    # the pad is gone: the genuine message can no longer be accepted with it (no reuse)
    with pytest.raises(AuthError, match="already used"):
        bob.verify(0, b"sift: 0101", tag)
    # and the next message still authenticates: the link keeps going
    tag = alice.tag(1, b"next")
    bob.verify(1, b"next", tag)


def test_deferred_transcript_is_covered_by_the_next_tag() -> None:
    alice, bob = pair()
    for chunk in (b"q1", b"q2", b"q3"):
        alice.defer_send(chunk)
        bob.defer_recv(chunk if chunk != b"q2" else b"q2!")  # Eve changed one in transit
    tag = alice.tag(0, b"verify")
    with pytest.raises(AuthError):
        bob.verify(0, b"verify", tag)


def test_deferred_transcript_order_matters() -> None:
    alice, bob = pair()
    alice.defer_send(b"ab")
    alice.defer_send(b"c")
    bob.defer_recv(b"a")  # same bytes, different split: length prefixes tell them apart
    bob.defer_recv(b"bc")
    with pytest.raises(AuthError):
        bob.verify(0, b"m", alice.tag(0, b"m"))


def test_resync_window_and_exhaustion() -> None:
    alice, bob = pair(make_psk(256))  # 4 pads per direction
    for i in range(2):
        alice.tag(i, b"lost in transit")
    bob.verify(2, b"third", alice.tag(2, b"third"))  # skipped 0, 1 (burnt), accepted 2
    assert bob.recv.next_index == 3
    alice.tag(3, b"x")
    with pytest.raises(AuthKeyExhausted):
        alice.tag(4, b"no key left")


def test_refill_extends_both_ends_identically(tmp_path) -> None:
    alice, bob = pair(make_psk(256))
    for i in range(4):
        bob.verify(i, b"m", alice.tag(i, b"m"))
    fresh = bytes(range(64))
    alice.send.refill(fresh)
    bob.recv.refill(fresh)
    bob.verify(4, b"after refill", alice.tag(4, b"after refill"))
    # persisted state resumes where it was, never reusing a pad
    store = AuthStore(tmp_path / "auth.state")
    store.save(alice)
    restored = store.load(b"", "alice")
    assert restored.send.next_index == 5
    bob.verify(5, b"after restart", restored.tag(5, b"after restart"))
    assert (tmp_path / "auth.state").stat().st_mode & 0o777 == 0o600


def test_psk_must_be_usable() -> None:
    with pytest.raises(ValueError):
        split_psk(b"short")
