"""The media round trip: each frame echoes the newest frame received and how long it was
held; the far side's clock never enters the figure."""

from __future__ import annotations

import os

import pytest

from client.call.jitter import FRAME_S
from client.call.media import SILENCE, MediaReceiver, MediaSender

ONE_WAY_S = 0.015


def test_echoes_give_the_round_trip_whatever_the_other_clock_says() -> None:
    a_key, b_key = os.urandom(32), os.urandom(32)
    a_send, b_receive = MediaSender(a_key, 0), MediaReceiver(a_key, 0)
    b_send, a_receive = MediaSender(b_key, 1), MediaReceiver(b_key, 1)
    b_offset = 1234.5  # b's clock is nowhere near a's
    samples = []
    for n in range(20):
        a_now = n * FRAME_S
        to_b = a_send.frame(SILENCE, a_now, a_receive.newest)
        assert b_receive.receive(to_b, a_now + ONE_WAY_S + b_offset)
        b_now = a_now + 0.007 + ONE_WAY_S + b_offset  # b sends 7 ms after a's frame came
        to_a = b_send.frame(SILENCE, b_now, b_receive.newest)
        assert a_receive.receive(to_a, b_now - b_offset + ONE_WAY_S)
        echo = a_receive.peer_echo
        assert echo is not None and echo[0] == n
        samples.append(a_send.echoed(echo[0], echo[1], b_now - b_offset + ONE_WAY_S))
    assert samples == pytest.approx([2 * ONE_WAY_S] * 20, abs=0.0011)  # ms resolution
    assert a_send.round_trip_s == pytest.approx(2 * ONE_WAY_S, abs=0.0011)


def test_an_echo_of_a_frame_never_sent_gives_no_sample() -> None:
    sender = MediaSender(os.urandom(32), 0)
    sender.frame(SILENCE, 1.0)
    assert sender.echoed(99, 0.0, 2.0) is None and sender.round_trip_s is None
    assert sender.echoed(0, 0.004, 1.030) == pytest.approx(0.026)


def test_the_first_frame_carries_no_echo() -> None:
    key = os.urandom(32)
    receiver = MediaReceiver(key, 0)
    assert receiver.receive(MediaSender(key, 0).frame(SILENCE, 0.0), 0.01)
    assert receiver.peer_echo is None and receiver.newest is not None
