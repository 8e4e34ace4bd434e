"""Call signalling, second part: a refusal that says why, and a rekey the callee asks for."""

from __future__ import annotations

from client.call.signalling import Call, Ended, Kind, NeedQkd, State
from tests.call.test_signalling import QKD, SESSION, connect, installed, outgoing, sent


def test_a_refused_call_tells_the_caller_why() -> None:
    alice, effects = outgoing()
    bob, _ = Call.incoming(sent(effects), SESSION, now=0.1)
    effects = bob.decline(reason="not a contact")
    assert Ended("declined: not a contact", False) in effects and bob.state is State.ENDED
    message = sent(effects)
    assert (message.kind, message.reason) == (Kind.DECLINE, "not a contact")
    assert alice.receive(message, now=0.2) == [Ended("declined: not a contact", True)]


def test_the_callee_asks_and_the_caller_rekeys() -> None:
    alice, bob, *_ = connect()
    ask = sent(bob.request_rekey())
    assert (ask.kind, ask.epoch) == (Kind.REKEY_ASK, 0)
    # Within a second of the call's keys (installed at 3.1): it waits for that second.
    assert alice.receive(ask, now=3.5) == [] and alice.tick(4.0) == []
    assert alice.tick(4.1) == [NeedQkd(1)]
    assert alice.receive(ask, now=5.0) == [NeedQkd(1)]  # asked again (tick's is not done)
    effects = bob.receive(sent(alice.rekey(QKD)), now=5.1, qkd=QKD)
    assert installed(alice.receive(sent(effects), now=5.2)).keys.epoch == 1
    assert alice.rekeys == bob.rekeys == 1
    # An ask that crossed that rekey (it names epoch 0) starts no second one.
    assert alice.receive(ask, now=9.0) == []
    # While a rekey is under way the caller starts no other.
    alice.rekey(QKD)
    assert alice.request_rekey() == []


def test_no_rekey_before_the_call_is_up() -> None:
    alice, effects = outgoing()
    bob, _ = Call.incoming(sent(effects), SESSION, now=0.1)
    assert alice.request_rekey() == [] and bob.request_rekey() == []
