"""Voice calls through real processes: relay, KME pair, ``qsecret call`` and ``qsecret answer``
as a user runs them, on a clean path and through a lossy, tampering proxy."""

from __future__ import annotations

import json
import os
import signal
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from client.processes import ServiceProcess
from tests.call.speech import RATE, segment_aligned_similarity, speech_with_pauses
from tests.e2e.mediaproxy import MediaProxy
from tests.e2e.stack import PASSPHRASE, Stack, start_stack

pytestmark = pytest.mark.slow
FULL_SOURCES = "QKD+ML-KEM-768+X25519"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, pq_backend: str) -> Iterator[Stack]:
    """The shared stack with a third user, carol (who has added bob), for a busy line, and
    dave (on bob's side of the QKD link, a stranger to alice) for a refused call.

    alice and carol have written to bob, so he takes their calls (a caller must be a contact:
    someone you exchanged a message with, or verified); dave has never written to alice."""
    stack = start_stack(tmp_path_factory.mktemp("stack"),
                        users=("alice", "bob", "carol", "dave"))
    try:
        for handle in ("alice", "carol"):
            stack.cli(handle, "send", "bob", f"hello bob, {handle} here", check=True)
        stack.cli("bob", "recv", check=True)
        yield stack
    finally:
        stack.stop()


# ------------------------------------------------------------------------------ helpers


def write_wav(path: Path, samples: np.ndarray) -> Path:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(RATE)
        wav.writeframes(samples.astype("<i2").tobytes())
    return path


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as wav:
        assert (wav.getnchannels(), wav.getframerate()) == (1, RATE)
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(float)


class Caller(ServiceProcess):
    """One user's ``qsecret call`` / ``answer`` process, with its JSON events."""

    def __init__(self, stack: Stack, handle: str, *args: str, relay_url: str = "") -> None:
        super().__init__(f"{handle}-{args[0]}",
                         [*args, "--json", "--data", str(stack.profile(handle)),
                          "--relay", relay_url or stack.relay_url],
                         log=stack.root / f"{handle}-{args[0]}.log",
                         env={"QSECRET_PASSPHRASE": PASSPHRASE, "QSECRET_LOG": "warning"})

    def event(self, name: str, timeout: float = 60.0) -> dict[str, Any]:
        line = self.wait_for(f'"event": "{name}"', timeout)
        return dict(json.loads(line[line.index("{"):]))

    def exit_code(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout)


def dominant_frequency(path: Path) -> float:
    """The loudest frequency (Hz) in a WAV file: which tone a user heard."""
    tone = read_wav(path)
    return float(np.argmax(np.abs(np.fft.rfft(tone))) * RATE / tone.size)


def assert_answerer_hung_up(answerer_end: dict[str, Any], caller_end: dict[str, Any]) -> None:
    """Both ``ended`` events of a call the answerer hung up."""
    assert (answerer_end["reason"], answerer_end["ended_by_peer"]) == ("hung up", False)
    assert (caller_end["reason"], caller_end["ended_by_peer"]) == ("hung up", True)


def call_kinds_in_history(stack: Stack, handle: str, peer: str) -> list[str]:
    """The kinds of call signalling in ``handle``'s stored history with ``peer``, of the
    newest call (read from the sealed store itself, the process being stopped)."""
    from client.call.signalling import CallMessage
    from client.config import load_config
    from client.messenger import payload as payloads
    from client.messenger.unlock import store_path
    from client.store.store import Store

    with Store.open(PASSPHRASE, store_path(load_config(stack.profile(handle))),
                    create=False) as store:
        entries = store.history(peer)
    messages = [CallMessage.decode(body.data) for body in
                (payloads.decode(entry.plaintext) for entry in entries)
                if isinstance(body, payloads.CallPayload)]
    newest = messages[-1].call_id
    return [m.kind.value for m in messages if m.call_id == newest]


def _answer(stack: Stack, *args: str) -> Caller:
    answerer = Caller(stack, "bob", "answer", *args).start()
    answerer.event("waiting")
    return answerer


# -------------------------------------------------------------------------------- tests


def test_speech_arrives_aligned_and_alike_and_the_caller_hangs_up(stack: Stack) -> None:
    sent = speech_with_pauses(4.0)
    speech = write_wav(stack.root / "speech.wav", sent)
    heard = stack.root / "heard.wav"
    answerer = _answer(stack, "--mute", "--out", str(heard))
    caller = Caller(stack, "alice", "call", "bob", "--in", str(speech), "--out",
                    str(stack.root / "alice-heard.wav")).start()
    try:
        assert caller.event("connected")["sources"] == FULL_SOURCES
        ended = caller.event("ended")
        by_bob = answerer.event("ended")
        assert caller.exit_code() == 0 and answerer.exit_code() == 0
    finally:
        caller.stop()
        answerer.stop()
    assert (ended["reason"], ended["ended_by_peer"]) == ("hung up", False)
    assert (by_bob["reason"], by_bob["ended_by_peer"]) == ("hung up", True)
    assert ended["sources"] == by_bob["sources"] == FULL_SOURCES
    assert not by_bob["degraded"]
    stats = by_bob["stats"]
    assert stats["refused_total"] == 0
    assert stats["frames_opened"] >= sent.size / 960 - 5
    similarity = segment_aligned_similarity(sent.astype(float), read_wav(heard))
    print(f"clean path: spectral correlation {similarity:.3f}; stats {stats}")
    assert similarity >= 0.9


def test_the_answerer_hangs_up_and_both_calls_end(stack: Stack) -> None:
    heard = stack.root / "tone-heard.wav"
    answerer = _answer(stack, "--tone", "300", "--duration", "1.5")
    caller = Caller(stack, "alice", "call", "bob", "--tone", "440", "--out", str(heard)).start()
    try:
        bob_end = answerer.event("ended")
        alice_end = caller.event("ended")
        assert answerer.exit_code() == 0 and caller.exit_code() == 0
    finally:
        caller.stop()
        answerer.stop()
    assert_answerer_hung_up(bob_end, alice_end)
    assert abs(dominant_frequency(heard) - 300) < 5, "alice heard bob's tone"


def test_a_second_caller_hears_busy_and_the_first_call_goes_on(stack: Stack) -> None:
    # The first call lasts until carol has heard busy (then alice presses Ctrl+C): a fixed
    # duration would race carol's start-up on a loaded machine, and an offer that comes
    # after the first call ended is not busy.
    answerer = _answer(stack, "--mute", "--out", str(stack.root / "busy-bob.wav"))
    first = Caller(stack, "alice", "call", "bob", "--tone", "440",
                   "--out", str(stack.root / "busy-alice.wav")).start()
    try:
        first.event("connected")
        second = Caller(stack, "carol", "call", "bob", "--tone", "500", "--out",
                        str(stack.root / "busy-carol.wav")).start()
        try:
            busy = second.event("ended")
            assert second.exit_code() == 1
        finally:
            second.stop()
        assert first.process is not None and first.process.poll() is None, (
            "the first call ended while carol called")
        os.killpg(first.process.pid, signal.SIGINT)  # alice hangs up
        bob_end = answerer.event("ended")
        assert first.exit_code() == 130 and answerer.exit_code() == 0
    finally:
        first.stop()
        answerer.stop()
    assert (busy["reason"], busy["ended_by_peer"], busy["answered"]) == ("busy", True, False)
    assert (bob_end["peer"], bob_end["reason"], bob_end["ended_by_peer"]) == (
        "alice", "hung up", True)
    assert bob_end["stats"]["refused_total"] == 0


def test_ctrl_c_hangs_up_and_a_killed_caller_ends_the_call_too(stack: Stack) -> None:
    answerer = _answer(stack, "--mute", "--out", str(stack.root / "ctrl-c.wav"))
    caller = Caller(stack, "alice", "call", "bob", "--tone", "440", "--out",
                    str(stack.root / "ctrl-c-alice.wav")).start()
    try:
        caller.event("connected")
        assert caller.process is not None
        os.killpg(caller.process.pid, signal.SIGINT)  # Ctrl+C
        by_bob = answerer.event("ended")
        assert caller.exit_code() == 130 and answerer.exit_code() == 0
        mine = caller.event("ended")  # the summary comes after Ctrl+C too
        assert (mine["reason"], mine["ended_by_peer"], mine["answered"]) == (
            "hung up", False, True)
    finally:
        caller.stop()
        answerer.stop()
    assert (by_bob["reason"], by_bob["ended_by_peer"]) == ("hung up", True)

    answerer = _answer(stack, "--mute", "--out", str(stack.root / "killed.wav"))
    caller = Caller(stack, "alice", "call", "bob", "--tone", "440", "--out",
                    str(stack.root / "killed-alice.wav")).start()
    try:
        caller.event("connected")
        caller.kill()  # no hang-up message: the relay closes the media stream
        by_bob = answerer.event("ended")
        assert answerer.exit_code() == 0
    finally:
        answerer.stop()
    assert (by_bob["reason"], by_bob["ended_by_peer"]) == ("connection lost", True)


def test_a_call_survives_rekeys_without_losing_a_frame(stack: Stack) -> None:
    heard_by_bob, heard_by_alice = stack.root / "rekey-bob.wav", stack.root / "rekey-alice.wav"
    answerer = _answer(stack, "--tone", "300", "--out", str(heard_by_bob))
    caller = Caller(stack, "alice", "call", "bob", "--tone", "440", "--duration", "5.5",
                    "--rekey-every", "1.5", "--out", str(heard_by_alice)).start()
    try:
        alice_end = caller.event("ended")
        bob_end = answerer.event("ended")
        assert caller.exit_code() == 0 and answerer.exit_code() == 0
    finally:
        caller.stop()
        answerer.stop()
    assert 0 < alice_end["stats"]["signalling_round_trip_ms"] < 5000
    for end in (alice_end, bob_end):
        assert end["rekeys"] >= 2, end
        assert end["sources"] == FULL_SOURCES
        stats = end["stats"]
        assert 0 < stats["media_round_trip_ms"] < 1000, stats  # echoes in the media frames
        # Not one frame refused (none sealed under a key the other side lacked yet), lost
        # or late: every 20 ms of the sender's sound was played, across every rekey. (The
        # playout may still wait a frame when a busy machine stalls a process: a delay the
        # jitter buffer absorbs, not a key's gap, so it is not counted here.)
        assert (stats["refused_total"], stats["lost"], stats["late"]) == (0, 0, 0), stats
    # The history keeps what the call was and how it ended, not its ringing and rekeys.
    assert call_kinds_in_history(stack, "alice", "bob") == ["offer", "answer", "hangup"]
    assert call_kinds_in_history(stack, "bob", "alice") == ["offer", "answer", "hangup"]
    for path in (heard_by_bob, heard_by_alice):
        tone = read_wav(path)
        start = int(np.argmax(np.abs(tone) > 1000))  # the first sound heard
        seconds = tone[start + 4800:][:4 * RATE].reshape(4, RATE)  # four whole seconds
        levels = np.sqrt((seconds ** 2).mean(axis=1))
        assert levels.min() >= 0.5 * np.median(levels), levels  # the sound never stopped


def test_a_lossy_tampering_path_degrades_the_sound_never_the_keys(stack: Stack) -> None:
    sent = speech_with_pauses(4.0, seed=11)
    speech = write_wav(stack.root / "speech-lossy.wav", sent)
    heard = stack.root / "heard-lossy.wav"
    proxy = MediaProxy(stack.relay_url, loss=0.10, max_delay=0.030, tamper_every=37,
                       replay_every=41).start()
    answerer = _answer(stack, "--mute", "--out", str(heard))
    caller = Caller(stack, "alice", "call", "bob", "--in", str(speech), "--out",
                    str(stack.root / "alice-lossy.wav"), relay_url=proxy.url).start()
    try:
        assert caller.event("connected")["sources"] == FULL_SOURCES
        caller.event("ended")
        by_bob = answerer.event("ended")
        assert caller.exit_code() == 0 and answerer.exit_code() == 0
    finally:
        caller.stop()
        answerer.stop()
        proxy.stop()
    stats = by_bob["stats"]
    assert proxy.dropped > 0 and proxy.tampered > 0 and proxy.replayed > 0
    # Every altered or replayed frame that reached bob during the call was refused, none
    # was played (one in flight at the hang-up may come after the end: dropped as stray).
    refused = stats["refused"]
    assert set(refused) <= {"auth_failed", "replayed"}
    assert proxy.tampered - 2 <= refused.get("auth_failed", 0) <= proxy.tampered
    assert proxy.replayed - 2 <= refused.get("replayed", 0) <= proxy.replayed
    assert stats["duplicates"] == 0  # no replay got as far as the jitter buffer
    assert stats["lost"] > 0 and stats["recovered_fec"] > 0
    similarity = segment_aligned_similarity(sent.astype(float), read_wav(heard))
    print(f"lossy path: correlation {similarity:.3f}; dropped {proxy.dropped}, tampered "
          f"{proxy.tampered}, replayed {proxy.replayed} of {proxy.media_frames}; "
          f"stats {stats}")
    assert similarity >= 0.7


def test_calling_someone_offline_says_so_at_once_and_leaves_a_missed_call(
        stack: Stack) -> None:
    caller = Caller(stack, "alice", "call", "bob", "--tone", "440", "--out",
                    str(stack.root / "never.wav")).start()
    try:
        ended = caller.event("ended", timeout=30)
        assert caller.exit_code() == 1
    finally:
        caller.stop()
    assert (ended["reason"], ended["answered"]) == ("offline", False)
    received = stack.cli("bob", "recv", "--json", check=True)
    lines = [json.loads(line) for line in received.stdout.splitlines()]
    assert any(line["from"] == "alice" and "missed call from alice (offline)" in line["text"]
               for line in lines), received.stdout
    assert any("missed call from alice" in m["text"] for m in stack.history("bob", "alice"))
    assert any("call not answered (offline)" in m["text"]
               for m in stack.history("alice", "bob"))


def refused_call(stack: Stack, caller: str, callee: str) -> tuple[dict[str, Any],
                                                                  dict[str, Any]]:
    """``caller`` calls ``callee``, who waits with ``qsecret answer``; the call must not be
    answered. The caller's ``ended`` event and the callee's ``refused`` event."""
    answerer = Caller(stack, callee, "answer", "--mute", "--out",
                      str(stack.root / f"{callee}-refused-{caller}.wav")).start()
    try:
        answerer.event("waiting")
        calling = Caller(stack, caller, "call", callee, "--tone", "440", "--out",
                         str(stack.root / f"{caller}-refused-by-{callee}.wav")).start()
        try:
            ended = calling.event("ended")
            assert calling.exit_code() == 1  # not answered
        finally:
            calling.stop()
        refused = answerer.event("refused")
    finally:
        answerer.stop()
    return ended, refused


def test_a_call_from_a_stranger_is_refused_at_once_with_the_reason(stack: Stack) -> None:
    """dave never exchanged a message with alice: his call never rings, he hears why."""
    ended, refused = refused_call(stack, "dave", "alice")
    assert (ended["reason"], ended["ended_by_peer"], ended["answered"]) == (
        "declined: not a contact", True, False)
    assert refused["peer"] == "dave"
    assert any("refused a call from dave (not a contact)" in m["text"]
               for m in stack.history("alice", "dave"))
    assert any("call declined by alice (not a contact)" in m["text"]
               for m in stack.history("dave", "alice"))
