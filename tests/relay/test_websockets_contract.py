"""The websockets internals the relay's hot path uses (relay/session.py) are still there.

relay/session.py frames text with the connection's sans-I/O protocol and writes once
per loop pass, and handles frequent frames inside ``process_event``. pyproject.toml
pins the websockets versions this was written for; this test fails when the pin
and the installed version disagree, or when those internals stop working.
"""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path

import websockets
from websockets.asyncio.server import ServerConnection

from relay.config import RelayConfig
from relay.server import Relay
from relay.session import RelayConnection
from tests.relay.harness import Client, Identity

ROOT = Path(__file__).resolve().parents[2]


def _pinned_range() -> tuple[tuple[int, ...], tuple[int, ...]]:
    text = (ROOT / "pyproject.toml").read_text()
    match = re.search(r'"websockets>=([0-9.]+),<([0-9.]+)"', text)
    assert match, "pyproject.toml must pin websockets to a range (relay/session.py)"
    low, high = (tuple(int(part) for part in v.split(".")) for v in match.groups())
    return low, high


def test_the_installed_websockets_is_in_the_pinned_range() -> None:
    low, high = _pinned_range()
    installed = tuple(int(part) for part in re.findall(r"\d+", version("websockets"))[:2])
    assert low <= installed < high, (websockets.__version__, low, high)


def test_the_internals_exist() -> None:
    for name in ("process_event", "send_data"):
        assert callable(getattr(ServerConnection, name, None)), name
        assert getattr(RelayConnection, name) is not getattr(ServerConnection, name), name


async def test_the_fast_paths_carry_traffic(tmp_path: Path) -> None:
    """A send, its delivery and the ack go through the inline handler and the cork."""
    relay = Relay(RelayConfig(tmp_path / "relay", port=0, sync="NORMAL"))
    await relay.start()
    try:
        url = f"ws://127.0.0.1:{relay.port}/"
        alice = await Client(url, Identity("alice")).connect()
        bob = await Client(url, Identity("bob")).connect()
        for session in relay.sessions:
            ws = session.ws
            assert isinstance(ws, RelayConnection)
            assert ws.inline is not None and len(ws.recv_messages.frames) == 0
            assert isinstance(ws.paused, bool) and ws.transport is not None
        writes = relay.cork.writes
        msgs = [await alice.send("bob", b"sealed %d" % i) for i in range(20)]
        await bob.wait(lambda: len(bob.delivered) == 20)
        await alice.wait(lambda: all(m in alice.stored for m in msgs))
        assert [d.msg for d in bob.delivered] == msgs
        assert relay.frames_inline >= 20  # the sends (and acks) were handled where read
        assert relay.cork.writes > writes  # deliveries and confirmations went out corked
        await alice.close()
        await bob.close()
    finally:
        await relay.stop()


async def test_writes_flushed_inside_a_loop_pass_reach_the_client(tmp_path: Path) -> None:
    """With ``max_wait`` 0 every corked frame is written where it was framed (Cork)."""
    relay = Relay(RelayConfig(tmp_path / "relay", port=0, sync="NORMAL"))
    relay.cork.max_wait = 0.0
    await relay.start()
    try:
        url = f"ws://127.0.0.1:{relay.port}/"
        alice = await Client(url, Identity("alice")).connect()
        bob = await Client(url, Identity("bob")).connect()
        msgs = [await alice.send("bob", b"sealed %d" % i) for i in range(20)]
        await bob.wait(lambda: len(bob.delivered) == 20)
        assert [d.msg for d in bob.delivered] == msgs
        assert relay.cork.early_flushes >= 20
        await alice.close()
        await bob.close()
    finally:
        await relay.stop()
