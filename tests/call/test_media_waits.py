"""The receiver records where its playout waited for a late frame (as runs of playout
indices), so a recording can tell a late delivery, which loses nothing, from a lost frame."""

from __future__ import annotations

import os

import numpy as np

from client.call.jitter import FRAME_S
from client.call.media import MAX_WAIT_RUNS, MediaReceiver, MediaSender
from client.call.opus import FRAME_SAMPLES

TONE = (np.sin(2 * np.pi * 440 * np.arange(FRAME_SAMPLES) / 48000) * 8000).astype(np.int16)


def test_a_stalled_sender_shows_as_a_wait_run_and_loses_nothing() -> None:
    base = os.urandom(32)
    sender, receiver = MediaSender(base, 1), MediaReceiver(base, 1)
    now = 0.0
    for n in range(40):
        stalled = 10 <= n < 16  # the sender's process was not scheduled for 120 ms
        if not stalled:
            for _ in range(7 if n == 16 else 1):  # then it catches up: a burst
                assert receiver.receive(sender.frame(TONE), now)
        receiver.play()
        now += FRAME_S
    stats = receiver.stats.jitter
    assert receiver.played == 40 and stats.lost == 0
    assert receiver.waits and all(count >= 1 for _, count in receiver.waits)
    waited = sum(count for _, count in receiver.waits)
    first = receiver.waits[0][0]
    assert 10 <= first <= 16 and waited <= 6  # only after playout began, inside the stall


def test_wait_runs_are_bounded() -> None:
    """A path that delivers a frame every 40 ms: every other playout waits, each its own
    run; the record keeps the first MAX_WAIT_RUNS runs (the jitter statistics count all)."""
    base = os.urandom(32)
    sender, receiver = MediaSender(base, 1), MediaReceiver(base, 1)
    now = 0.0
    for _ in range(3):
        receiver.receive(sender.frame(TONE), now)
    for _ in range(2 * MAX_WAIT_RUNS + 10):
        receiver.receive(sender.frame(TONE), now)
        for _ in range(2):
            receiver.play()
            now += FRAME_S
    assert len(receiver.waits) == MAX_WAIT_RUNS
    assert receiver.stats.jitter.waits > MAX_WAIT_RUNS and receiver.stats.jitter.lost == 0
