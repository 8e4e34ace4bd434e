"""Several relays in relay_url: a client moves to the next at once when one fails, keeps a
pin per relay, and leaves out (only) a relay whose certificate is not the pinned one."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from client.config import ConfigError, load_config
from client.messenger.api import Connection, ConnectionEvent
from client.messenger.relay_link import RelayCallbacks, RelayLink
from relay import wire
from tests.e2e.stack import free_port
from tests.relay.harness import Identity, start_relay


class Recorder:
    def __init__(self) -> None:
        self.states: list[ConnectionEvent] = []
        self.pins: list[str] = []

    def callbacks(self) -> RelayCallbacks:
        async def ready(auth: wire.AuthOk) -> None:
            return None

        async def event(event: object) -> None:
            return None

        return RelayCallbacks(ready, event, self.states.append, self.pins.append)

    def online(self) -> list[str]:
        return [s.detail for s in self.states if s.state is Connection.ONLINE]


def _link(urls: list[str], recorder: Recorder, pins: str = "") -> RelayLink:
    me = Identity("alice")
    return RelayLink(",".join(urls), "alice", me.keypair.public_key, me.sign,
                     recorder.callbacks(), pinned_fingerprint=pins)


async def _until(predicate, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def test_a_dead_relay_is_skipped_at_once_and_a_failing_one_left_for_the_next(
        tmp_path: Path) -> None:
    first, second = start_relay(tmp_path / "a"), start_relay(tmp_path / "b")
    dead = f"ws://127.0.0.1:{free_port()}"
    recorder = Recorder()
    link = _link([dead, first.url, second.url], recorder)
    runner = asyncio.create_task(link.run())
    try:
        await link.wait_ready(20)
        assert link.url == first.url
        # The dead relay cost no backoff: no "offline, retrying in ..." before the login.
        assert not [s for s in recorder.states if s.state is Connection.OFFLINE]
        first.kill9()
        await _until(lambda: link.ready and link.url == second.url)
        assert recorder.online() == [first.url, second.url]
    finally:
        await link.close()
        await asyncio.wait_for(runner, 10)
        first.stop()
        second.stop()


async def test_each_relay_keeps_its_own_pin_and_a_mismatch_leaves_only_that_one_out(
        tmp_path: Path) -> None:
    first = start_relay(tmp_path / "a", "--self-signed")
    second = start_relay(tmp_path / "b", "--self-signed")
    assert first.fingerprint and second.fingerprint
    recorder = Recorder()
    wrong = "ab" * 32  # pinned for the first relay, which presents another certificate
    link = _link([first.url, second.url], recorder, pins=f"{wrong},")
    runner = asyncio.create_task(link.run())
    try:
        await link.wait_ready(20)
        assert link.url == second.url
        (pins,) = recorder.pins  # the second relay pinned on first use, the first kept
        first_pin, second_pin = pins.split(",")
        assert first_pin == wrong
        assert wire.parse_fingerprint(second_pin) == wire.parse_fingerprint(second.fingerprint)
        second.kill9()  # the only relay left goes away: retried with backoff, never the first
        await _until(lambda: any(s.state is Connection.OFFLINE and s.retry_in
                                 for s in recorder.states))
        assert link.fatal is None and first.url not in recorder.online()
    finally:
        await link.close()
        await asyncio.wait_for(runner, 15)
        first.stop()
        second.stop()


async def test_when_no_relay_can_be_used_the_link_stops_with_every_reason(
        tmp_path: Path) -> None:
    relay = start_relay(tmp_path / "a", "--self-signed")
    recorder = Recorder()
    link = _link([relay.url], recorder, pins="cd" * 32)
    try:
        await asyncio.wait_for(link.run(), 20)
        assert link.fatal is not None and "does not match the pinned fingerprint" in link.fatal
    finally:
        relay.stop()


def test_relay_url_lists_and_pins_are_checked(tmp_path: Path) -> None:
    good = load_config(tmp_path, relay_url="ws://127.0.0.1:1,wss://relay-b.example:443")
    assert good.relay_url.count(",") == 1
    for bad in ("ws://127.0.0.1:1,,ws://127.0.0.1:2", "ws://127.0.0.1:1,http://x",
                "ws://a:1,ws://a:1", "ws://a:1, ws://b:2"):
        with pytest.raises(ConfigError):
            load_config(tmp_path, relay_url=bad)
