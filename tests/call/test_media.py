"""A call's audio in one direction, in process: speech through Opus, SFrame, a simulated
path (loss, jitter) and the jitter buffer comes out alike; tampered frames are never played;
a rekey leaves no gap."""

from __future__ import annotations

import os
import random

import numpy as np

from client.call.jitter import FRAME_S, Kind, Playout
from client.call.media import MediaReceiver, MediaSender
from client.call.opus import FRAME_SAMPLES
from tests.call.speech import spectral_correlation, speech_like

SPEECH = speech_like(6.0, seed=3)
FRAMES = SPEECH.size // FRAME_SAMPLES


def call(*, loss: float = 0.0, jitter: float = 0.0, seed: int = 1, tamper: float = 0.0,
         rekey_at: tuple[int, ...] = ()) -> tuple[np.ndarray, MediaReceiver, list[Kind]]:
    """Send SPEECH one way; return what the speaker played, the receiver, and what kind of
    playout each 20 ms was."""
    rng = random.Random(seed)
    base, kid = os.urandom(32), 1
    sender, receiver = MediaSender(base, kid), MediaReceiver(base, kid)
    arrivals: list[tuple[float, int, bytes]] = []
    for n in range(FRAMES):
        if n in rekey_at:
            kid += 1
            new_base = os.urandom(32)
            receiver.add_key(new_base, kid)  # the offer/answer gave the receiver the key first
            sender.rekey(new_base, kid)
        sealed = sender.frame(SPEECH[n * FRAME_SAMPLES:(n + 1) * FRAME_SAMPLES])
        if rng.random() < tamper:
            forged = bytearray(sealed)
            forged[rng.randrange(len(forged))] ^= 1 << rng.randrange(8)
            arrivals.append((n * FRAME_S + 0.030, n, bytes(forged)))
        if rng.random() < loss:
            continue
        arrivals.append((n * FRAME_S + 0.030 + rng.uniform(0, jitter), n, sealed))
    arrivals.sort()
    kinds: list[Kind] = []
    pull = receiver.jitter.pull

    def recorded(behind_s: float = 0.0) -> Playout:
        playout = pull(behind_s)
        kinds.append(playout.kind)
        return playout

    receiver.jitter.pull = recorded  # type: ignore[method-assign]
    played, index = [], 0
    for tick in range(FRAMES + 30):
        now = tick * FRAME_S
        while index < len(arrivals) and arrivals[index][0] <= now:
            receiver.receive(arrivals[index][2], arrivals[index][0])
            index += 1
        played.append(receiver.play())
    return np.concatenate(played), receiver, kinds


def test_a_clean_path_carries_speech() -> None:
    out, receiver, _ = call()
    assert spectral_correlation(SPEECH, out) >= 0.9
    assert receiver.stats.opened == FRAMES and receiver.stats.jitter.lost == 0


def test_ten_percent_loss_and_30_ms_jitter_still_carry_speech() -> None:
    out, receiver, _ = call(loss=0.10, jitter=0.030, seed=4)
    stats = receiver.stats.jitter
    assert spectral_correlation(SPEECH, out) >= 0.7
    assert 0.05 < stats.loss < 0.16 and stats.recovered > 0
    assert 0.040 <= stats.target_s <= 0.200


def test_tampered_frames_are_counted_and_never_played() -> None:
    out, receiver, _ = call(tamper=0.2, seed=6)
    refused = sum(receiver.stats.refused.values())
    assert refused > 0.15 * FRAMES
    assert receiver.stats.opened == FRAMES  # every genuine frame, and nothing else
    assert spectral_correlation(SPEECH, out) >= 0.9


def test_two_rekeys_leave_no_gap() -> None:
    out, receiver, kinds = call(rekey_at=(100, 200))
    first = kinds.index(Kind.FRAME)
    last = len(kinds) - kinds[::-1].index(Kind.FRAME)
    assert kinds[first:last] == [Kind.FRAME] * FRAMES  # 20 ms after 20 ms, no gap at all
    assert receiver.stats.jitter.lost == 0
    assert spectral_correlation(SPEECH, out) >= 0.9
    # The old keys can go after the grace: frames under them are refused from then on.
    receiver.retire(1)
    receiver.retire(2)
    assert receiver.kids == (3,)


def test_a_receiver_without_the_new_key_refuses_its_frames() -> None:
    base = os.urandom(32)
    sender, receiver = MediaSender(base, 1), MediaReceiver(base, 1)
    assert receiver.receive(sender.frame(SPEECH[:FRAME_SAMPLES]), 0.0)
    sender.rekey(os.urandom(32), 2)
    assert not receiver.receive(sender.frame(SPEECH[FRAME_SAMPLES:2 * FRAME_SAMPLES]), 0.02)
    assert receiver.stats.refused == {"unknown_kid": 1}
