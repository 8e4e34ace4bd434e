"""Calls between users on two relays over one Redis (issue 19, "a client connected to either
relay reaches any other"), as real processes: redis-server (strict), two ``qsecret relay
--store redis://…``, the KME pair, ``qsecret call`` by alice on relay A and ``qsecret answer``
by bob on relay B."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.test_calls import FULL_SOURCES, Caller, assert_answerer_hung_up, dominant_frequency
from tests.e2e.test_redis_file_transfer import TwoRelays, start_two_relays

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, pq_backend: str) -> Iterator[TwoRelays]:
    stack = start_two_relays(tmp_path_factory.mktemp("two-relay-calls"))
    try:
        # alice has written to bob, so he takes her calls (a caller must be a contact).
        stack.cli("alice", "send", "bob", "hello bob", check=True)
        stack.cli("bob", "recv", check=True)
        yield stack
    finally:
        stack.stop()


def _answer(stack: TwoRelays, *args: str) -> Caller:
    answerer = Caller(stack, "bob", "answer", *args, relay_url=stack.relay_b_url).start()
    answerer.event("waiting")
    return answerer


def _call(stack: TwoRelays, *args: str) -> Caller:
    return Caller(stack, "alice", "call", "bob", *args, relay_url=stack.relay_url).start()


def test_a_call_from_relay_a_to_relay_b_carries_sound_both_ways(stack: TwoRelays) -> None:
    heard_by_alice = stack.root / "tone-heard.wav"
    answerer = _answer(stack, "--tone", "300", "--duration", "2",
                       "--out", str(stack.root / "bob-heard.wav"))
    caller = _call(stack, "--tone", "440", "--out", str(heard_by_alice))
    try:
        assert caller.event("connected")["sources"] == FULL_SOURCES
        bob_end = answerer.event("ended")
        alice_end = caller.event("ended")
        assert answerer.exit_code() == 0 and caller.exit_code() == 0
    finally:
        caller.stop()
        answerer.stop()
    assert_answerer_hung_up(bob_end, alice_end)
    for end in (bob_end, alice_end):
        assert end["stats"]["refused_total"] == 0
        assert end["stats"]["frames_opened"] >= 50  # over a second of 20 ms frames
    # alice heard bob's 300 Hz tone: through relay B, Redis pub/sub and relay A.
    assert abs(dominant_frequency(heard_by_alice) - 300) < 5


def test_a_killed_caller_on_relay_a_ends_the_call_on_relay_b(stack: TwoRelays) -> None:
    answerer = _answer(stack, "--mute", "--out", str(stack.root / "killed.wav"))
    caller = _call(stack, "--tone", "440", "--out", str(stack.root / "killed-alice.wav"))
    try:
        caller.event("connected")
        caller.kill()  # no hang-up message: relay A's close crosses Redis to relay B
        by_bob = answerer.event("ended")
        assert answerer.exit_code() == 0
    finally:
        caller.stop()
        answerer.stop()
    assert (by_bob["reason"], by_bob["ended_by_peer"]) == ("connection lost", True)


def test_calling_bob_connected_to_no_relay_says_offline(stack: TwoRelays) -> None:
    caller = _call(stack, "--tone", "440", "--out", str(stack.root / "never.wav"))
    try:
        ended = caller.event("ended", timeout=30)
        assert caller.exit_code() == 1
    finally:
        caller.stop()
    assert (ended["reason"], ended["answered"]) == ("offline", False)
