"""Call signalling: the offer/answer dance, keys both sides agree on, rekeys, the ways a call
ends, and messages that do not fit."""

from __future__ import annotations

import os

import cbor2
import pytest

from client.call.signalling import (
    CALL_ID_BYTES,
    REKEY_EVERY_S,
    RING_TIMEOUT_S,
    Call,
    CallMessage,
    Ended,
    InstallKeys,
    Kind,
    NeedQkd,
    QkdKeys,
    Send,
    SignallingError,
    State,
    derive_epoch_keys,
)
from keysource.mix import QkdPolicy, QkdRequired

SESSION = os.urandom(32)
QKD = QkdKeys(("k-1", "k-2"), os.urandom(64))


def outgoing(qkd: QkdKeys = QKD, policy: QkdPolicy = QkdPolicy.PREFER
             ) -> tuple[Call, list]:  # type: ignore[type-arg]
    """A caller whose offer went out (sealed: its session secret bound)."""
    call, effects = Call.outgoing(qkd, now=0.0, policy=policy)
    call.bind_session(SESSION)
    return call, effects


def sent(effects: list) -> CallMessage:  # type: ignore[type-arg]
    (message,) = [e.message for e in effects if isinstance(e, Send)]
    return CallMessage.decode(message.encode())  # every message goes through the wire format


def installed(effects: list) -> InstallKeys:  # type: ignore[type-arg]
    (install,) = [e for e in effects if isinstance(e, InstallKeys)]
    return install


def connect(qkd: QkdKeys = QKD, policy: QkdPolicy = QkdPolicy.PREFER
            ) -> tuple[Call, Call, InstallKeys, InstallKeys]:
    alice, effects = outgoing(qkd, policy)
    offer = sent(effects)
    bob, effects = Call.incoming(offer, SESSION, now=0.5, policy=policy)
    assert sent(effects).kind is Kind.RINGING
    assert alice.receive(sent(effects), now=0.6) == [] and alice.state is State.RINGING
    effects = bob.answer(qkd, now=3.0)
    bob_keys = installed(effects)
    alice_keys = installed(alice.receive(sent(effects), now=3.1))
    return alice, bob, alice_keys, bob_keys


def test_both_sides_agree_on_both_directions() -> None:
    alice, bob, a, b = connect()
    assert alice.state is bob.state is State.ACTIVE
    assert (a.keys.send_key, a.keys.send_kid) == (b.keys.receive_key, b.keys.receive_kid)
    assert (b.keys.send_key, b.keys.send_kid) == (a.keys.receive_key, a.keys.receive_kid)
    assert a.keys.send_key != a.keys.receive_key
    assert (a.keys.send_kid, a.keys.receive_kid) == (0, 1)
    assert a.keys.label == b.keys.label == "QKD+ML-KEM-768+X25519"
    assert a.retire_kid is None


def test_every_input_changes_the_keys() -> None:
    base = {"caller": True, "call_id": bytes(16), "epoch": 0, "session_secret": b"s" * 32,
            "qkd": b"q" * 32, "qkd_key_ids": ("a",), "kem_public": b"p", "kem_ciphertext": b"c",
            "kem_secret": b"k" * 32, "x25519_caller": b"x", "x25519_callee": b"y",
            "x25519_secret": b"e" * 32}
    reference = derive_epoch_keys(**base).send_key  # type: ignore[arg-type]
    for name, other in (("call_id", bytes([1]) * 16), ("epoch", 1), ("session_secret", b"t" * 32),
                        ("qkd", b"r" * 32), ("qkd_key_ids", ("b",)), ("kem_public", b"P"),
                        ("kem_ciphertext", b"C"), ("kem_secret", b"K" * 32),
                        ("x25519_caller", b"X"), ("x25519_callee", b"Y"),
                        ("x25519_secret", b"E" * 32)):
        changed = derive_epoch_keys(**{**base, name: other}).send_key  # type: ignore[arg-type]
        assert changed != reference, name


def test_without_qkd_keys_degraded_or_refused_by_policy() -> None:
    *_, a, _ = connect(QkdKeys())
    assert a.keys.label == "ML-KEM-768+X25519 (degraded: no QKD)"
    with pytest.raises(QkdRequired):
        connect(QkdKeys(), QkdPolicy.REQUIRE)


def test_rekeys_make_new_kids_and_retire_the_old_ones_after_a_grace() -> None:
    alice, bob, first, _ = connect()
    assert alice.tick(3.1 + REKEY_EVERY_S - 1) == []
    (need,) = alice.tick(3.1 + REKEY_EVERY_S)
    assert need == NeedQkd(1)
    fresh = QkdKeys(("k-3",), os.urandom(32))
    rekey = sent(alice.rekey(fresh))
    assert rekey.kind is Kind.REKEY and rekey.epoch == 1
    effects = bob.receive(rekey, now=64.0, qkd=fresh)
    b = installed(effects)
    a = installed(alice.receive(sent(effects), now=64.1))
    assert (a.keys.send_kid, a.keys.receive_kid) == (2, 3)
    assert a.keys.send_key == b.keys.receive_key and a.keys.send_key != first.keys.send_key
    assert a.retire_kid == 1 and b.retire_kid == 0 and a.retire_at == pytest.approx(66.1)
    assert alice.rekeys == bob.rekeys == 1
    # On demand too: a second rekey.
    (need,) = alice.request_rekey()
    effects = bob.receive(sent(alice.rekey(QKD)), now=70.0, qkd=QKD)
    assert installed(alice.receive(sent(effects), now=70.1)).keys.send_kid == 4
    assert alice.epoch == bob.epoch == 2


def test_a_rekey_with_other_qkd_keys_than_named_is_refused() -> None:
    alice, bob, *_ = connect()
    rekey = sent(alice.rekey(QkdKeys(("k-9",), os.urandom(32))))
    with pytest.raises(SignallingError, match="not the ones the caller named"):
        bob.receive(rekey, now=5.0, qkd=QkdKeys(("k-8",), os.urandom(32)))


@pytest.mark.parametrize("by", ["caller", "callee"])
def test_hang_up_ends_both(by: str) -> None:
    alice, bob, *_ = connect()
    me, other = (alice, bob) if by == "caller" else (bob, alice)
    effects = me.hang_up()
    assert me.state is State.ENDED and Ended("hung up", False) in effects
    assert other.receive(sent(effects), now=9.0) == [Ended("hung up", True)]
    assert other.state is State.ENDED and me.hang_up() == []


@pytest.mark.parametrize(("busy", "reason"), [(False, "declined"), (True, "busy")])
def test_decline_and_busy(busy: bool, reason: str) -> None:
    alice, effects = outgoing()
    bob, _ = Call.incoming(sent(effects), SESSION, now=0.1)
    effects = bob.decline(busy=busy)
    assert alice.receive(sent(effects), now=1.0) == [Ended(reason, True)]


def test_an_unanswered_call_is_missed_at_both_ends() -> None:
    alice, effects = outgoing()
    bob, _ = Call.incoming(sent(effects), SESSION, now=0.1)
    assert alice.tick(RING_TIMEOUT_S - 1) == []
    effects = alice.tick(RING_TIMEOUT_S)
    missed = sent(effects)
    assert missed.kind is Kind.MISSED and Ended("no answer", False) in effects
    assert bob.receive(missed, now=31.0) == [Ended("missed", True)]
    # A callee that never hears the MISSED stops ringing by itself.
    carol, _ = Call.incoming(_offer(), SESSION, now=0.0)
    assert carol.tick(RING_TIMEOUT_S) == [Ended("missed", True)]


def _offer() -> CallMessage:
    _, effects = outgoing()
    return sent(effects)


def test_messages_that_do_not_fit_are_refused() -> None:
    alice, bob, *_ = connect()
    answer_again = CallMessage(Kind.ANSWER, alice.call_id, 0, kem_ciphertext=b"\0" * 1088,
                               x25519_public=b"\0" * 32)
    with pytest.raises(SignallingError, match="does not fit"):
        alice.receive(answer_again, now=5.0)
    with pytest.raises(SignallingError, match="another call"):
        alice.receive(CallMessage(Kind.HANGUP, os.urandom(CALL_ID_BYTES)), now=5.0)
    with pytest.raises(SignallingError, match="after 0"):
        bob.receive(CallMessage(Kind.REKEY, bob.call_id, 5, kem_public=b"\0" * 1184,
                                x25519_public=b"\0" * 32), now=5.0)
    with pytest.raises(SignallingError):
        bob.answer(QKD, now=6.0)  # already active
    with pytest.raises(SignallingError):
        Call.incoming(CallMessage(Kind.HANGUP, os.urandom(CALL_ID_BYTES)), SESSION, now=0.0)


@pytest.mark.parametrize("data", [
    b"", b"\xff", b"\xa0",
    cbor2.dumps({"v": 3, "k": "hangup", "c": bytes(16), "e": 0}),  # a future version
])
def test_malformed_messages_are_refused(data: bytes) -> None:
    with pytest.raises(SignallingError):
        CallMessage.decode(data)


def test_wire_checks() -> None:
    good = _offer()
    for change in ({"kem_public": b"short"}, {"x25519_public": b""},
                   {"call_id": b"short"}, {"qkd_key_ids": ("x" * 65,)}):
        bad = CallMessage(**{**good.__dict__, **change})
        with pytest.raises(SignallingError):
            CallMessage.decode(bad.encode())
    assert "kem" not in repr(good).lower() and good.kem_public.hex() not in repr(good)
