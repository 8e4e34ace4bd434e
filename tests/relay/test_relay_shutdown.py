"""A stopping relay does not wait on a client that never answers its close frame.

The demo's own TUI is such a client when the demo is killed: its process sits in the
demo's shutdown, holding the websocket open without reading it. With the service close
timeout the relay waited twice that (close frame, then TCP) and was SIGKILLed instead of
stopping.
"""

from __future__ import annotations

import asyncio
import base64
import os
from pathlib import Path

import pytest

from relay import server
from relay.config import RelayConfig
from relay.server import Relay

SERVICE_CLOSE_TIMEOUT_S = 60.0  # stands for "long": the bug would make stop() take twice this
STOP_BOUND_S = 30.0  # far above SHUTDOWN_CLOSE_TIMEOUT_S, far below the bug's 120 s


async def _silent_websocket_client(port: int) -> asyncio.StreamWriter:
    """Open a websocket (handshake only), then never read again: no answer to a close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    await writer.drain()
    status = await reader.readuntil(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 101"), status
    return writer


async def test_stop_does_not_wait_the_service_close_timeout_for_a_silent_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server, "CLOSE_TIMEOUT_S", SERVICE_CLOSE_TIMEOUT_S)
    relay = Relay(RelayConfig(tmp_path / "relay", port=0, sync="NORMAL"))
    await relay.start()
    writer = await _silent_websocket_client(relay.port)
    try:
        assert relay.server is not None
        assert [c.close_timeout for c in relay.server.connections] == [SERVICE_CLOSE_TIMEOUT_S]
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.wait_for(relay.stop(), STOP_BOUND_S)
        print(f"relay stopped in {loop.time() - started:.2f}s with a silent client")
    finally:
        writer.close()
