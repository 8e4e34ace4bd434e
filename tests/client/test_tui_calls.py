"""Calls in the TUI, with Pilot, against real relay, KME and ``qsecret call/answer`` processes.

alice runs the app in-process with a tone as her microphone and a sink that only measures
(there is no sound device here); bob uses the real CLI.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from client.call.audio import AudioError, ToneSource
from client.config import load_config
from client.messenger.api import CallState
from client.messenger.profile import ProfileGate, open_profile
from client.tui.app import QsecretApp
from client.tui.screens.call import CallScreen, IncomingCallScreen, meter
from client.tui.screens.chat import ChatScreen
from tests.client.pilot_helpers import online, until
from tests.e2e.stack import PASSPHRASE, Stack
from tests.e2e.test_calls import Caller

SIZE = (150, 40)
FULL_SOURCES = "QKD+ML-KEM-768+X25519"
pytestmark = pytest.mark.slow


class HeardSink:
    """What alice's speaker would play, kept to check that sound arrived."""

    def __init__(self) -> None:
        self.frames: list[np.ndarray] = []
        self.closed = False

    def write(self, frame: np.ndarray) -> None:
        self.frames.append(frame)

    def close(self) -> None:
        self.closed = True


def _app(stack: Stack, audio: Callable[[], tuple[Any, Any]]) -> QsecretApp:
    config = load_config(stack.profile("alice"), relay_url=stack.relay_url)
    return QsecretApp(ProfileGate(config), export_dir=stack.root / "exports",
                      messenger=open_profile(config, PASSPHRASE), audio=audio)




@pytest.fixture(scope="module", autouse=True)
def acquainted(stack: Stack) -> None:
    """alice writes to bob (who reads it): each is then the other's contact, whose calls
    ring (a stranger's are refused)."""
    stack.cli("alice", "send", "bob", "hello bob", check=True)
    stack.cli("bob", "recv", check=True)




async def test_alice_calls_bob_mutes_and_hangs_up(stack: Stack, tmp_path: Path) -> None:
    heard = HeardSink()
    app = _app(stack, lambda: (ToneSource(440), heard))
    bob = Caller(stack, "bob", "answer", "--tone", "880", "--out", str(tmp_path / "bob.wav"))
    bob.start()
    try:
        bob.event("waiting")
        async with app.run_test(size=SIZE) as pilot:
            chat = await online(pilot)
            chat.open_conversation("bob")
            await pilot.press("ctrl+g")
            await until(pilot, lambda: isinstance(app.screen, CallScreen))
            call = app.screen
            assert isinstance(call, CallScreen)
            await until(pilot, lambda: call.view.state is CallState.ACTIVE)
            assert call.view.sources == FULL_SOURCES
            # bob's tone plays here; alice's tone is measured on the way out
            await until(pilot, lambda: call.sink.level > -30 and call.source.level > -30)
            assert "connected" in str(call.query_one("#call-state").render())
            assert FULL_SOURCES in str(call.query_one("#call-keys").render())
            assert "rekeys 0" in str(call.query_one("#call-keys").render())
            await pilot.press("r")  # the caller rekeys now (the period is 60 s)
            await until(pilot, lambda: call.view.rekeys == 1)
            await until(pilot, lambda: "rekeys 1" in str(call.query_one("#call-keys").render()))
            await until(pilot, lambda: "media_round_trip_ms" in call.view.stats)
            assert "round trip" in str(call.query_one("#call-network").render())
            await pilot.press("m")
            await until(pilot, lambda: call.source.level <= -90)
            assert "(muted)" in str(call.query_one("#call-mic").render())
            await pilot.press("h")
            await until(pilot, lambda: call.view.state is CallState.ENDED)
            assert call.view.reason and not call.view.ended_by_peer
            await until(pilot, lambda: heard.closed)  # the app let go of the devices
            await pilot.press("ctrl+q")
        assert bob.exit_code(30) == 0
        bob_end = bob.event("ended")
        assert bob_end["ended_by_peer"] is True and bob_end["rekeys"] == 1
        assert bob_end["stats"]["refused_total"] == 0
    finally:
        bob.stop()
    assert heard.frames and max(np.abs(f).max() for f in heard.frames) > 1000


async def test_an_incoming_call_rings_and_is_answered_or_declined(stack: Stack) -> None:
    heard = HeardSink()
    app = _app(stack, lambda: (ToneSource(300), heard))
    async with app.run_test(size=SIZE) as pilot:
        await online(pilot)
        bob = Caller(stack, "bob", "call", "alice", "--tone", "660").start()
        try:
            await until(pilot, lambda: isinstance(app.screen, IncomingCallScreen))
            await pilot.press("a")
            await until(pilot, lambda: isinstance(app.screen, CallScreen))
            call = app.screen
            assert isinstance(call, CallScreen)
            await until(pilot, lambda: call.view.state is CallState.ACTIVE)
            # alice, the callee, asks; bob, the caller, rekeys (his period is 60 s)
            await pilot.press("r")
            await until(pilot, lambda: call.view.rekeys == 1)
            # Then bob hangs up (Ctrl+C): after the rekey, however long that took (a call
            # of a fixed --duration could end first on a busy machine).
            assert bob.process is not None
            os.killpg(bob.process.pid, signal.SIGINT)
            await until(pilot, lambda: call.view.state is CallState.ENDED)
            assert call.view.ended_by_peer
            assert bob.exit_code(30) == 130  # Ctrl+C
            assert bob.event("ended")["rekeys"] == 1
        finally:
            bob.stop()
        await pilot.press("escape")  # back to the chats
        assert isinstance(app.screen, ChatScreen)
        bob = Caller(stack, "bob", "call", "alice", "--tone", "660").start()
        try:
            await until(pilot, lambda: isinstance(app.screen, IncomingCallScreen))
            await pilot.press("d")
            assert bob.event("ended")["reason"] == "declined"
            assert bob.exit_code(30) != 0  # not answered
        finally:
            bob.stop()
        await pilot.press("ctrl+q")


async def test_no_sound_device_says_what_to_do(stack: Stack) -> None:
    def no_device() -> tuple[Any, Any]:
        raise AudioError("no sound device found")

    app = _app(stack, no_device)
    async with app.run_test(size=SIZE) as pilot:
        chat = await online(pilot)
        chat.open_conversation("bob")
        await pilot.press("ctrl+g")
        await until(pilot, lambda: any("qsecret call" in str(n.message)
                                        for n in app._notifications))
        assert isinstance(app.screen, ChatScreen)
        assert chat.messenger.live_call() is None
        await pilot.press("ctrl+q")


def test_meter_spans_silence_to_full_scale() -> None:
    assert meter(-90.0).startswith("░") and meter(-90.0).endswith("-∞ dB")
    assert meter(0.0).startswith("█" * 30)
    assert meter(-30.0).count("█") == 15
