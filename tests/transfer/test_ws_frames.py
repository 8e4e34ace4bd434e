"""client/messenger/ws_frames.py: file chunks framed for the websocket in place.

The frames must be exactly what websockets would send (a relay parses them with websockets),
and the websockets internals the fast path writes through must be there."""

from __future__ import annotations

import asyncio
import os
import secrets

import pytest
from websockets import frames, utils
from websockets.asyncio.client import ClientConnection
from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol, Side
from websockets.streams import StreamReader

from client.messenger.ws_frames import (
    WS_HEADROOM,
    ChunkConnection,
    client_frame_header,
    masked_client_frame,
)

LENGTHS = [0, 1, 125, 126, 127, 65535, 65536, 65537, (256 << 10) + 32]


def _parse_as_server(data: bytes) -> Frame:
    """What a websockets server reads from these bytes (masked client frames)."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    parser = Frame.parse(reader.read_exact, mask=True, max_size=None, extensions=None)
    try:
        next(parser)
    except StopIteration as done:
        return done.value
    raise AssertionError("the frame is incomplete")


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("headroom", [WS_HEADROOM, WS_HEADROOM + 3])
def test_a_frame_built_in_place_is_the_frame_websockets_would_send(
        length: int, headroom: int, monkeypatch: pytest.MonkeyPatch) -> None:
    payload = os.urandom(length)
    mask = secrets.token_bytes(4)
    buffer = bytearray(headroom) + payload
    wire = masked_client_frame(buffer, headroom, mask)
    monkeypatch.setattr(frames.secrets, "token_bytes", lambda n: mask)
    assert wire == Frame(Opcode.BINARY, payload).serialize(mask=True)
    assert wire[:-length or None] == client_frame_header(length, mask)
    frame = _parse_as_server(wire)
    assert frame.opcode is Opcode.BINARY and frame.fin
    assert bytes(frame.data) == payload


def test_a_frame_needs_its_headroom() -> None:
    with pytest.raises(ValueError, match="free bytes"):
        masked_client_frame(bytearray(100), WS_HEADROOM - 1)


def test_the_websockets_internals_the_fast_path_uses_are_there() -> None:
    """send_framed relies on these (websockets is pinned to one major version)."""
    assert issubclass(ChunkConnection, ClientConnection)
    assert callable(getattr(ClientConnection, "send_context", None))
    protocol = Protocol(Side.CLIENT)
    assert protocol.writes == [] and protocol.extensions == []
    assert protocol.expect_continuation_frame is False
    data, mask = os.urandom(1000), b"\x01\x02\x03\x04"
    assert frames.apply_mask(memoryview(bytearray(data))[3:], mask) == utils.apply_mask(
        data[3:], mask)


def test_chunks_sent_in_place_reach_a_websockets_server_intact() -> None:
    """A real websockets server on loopback receives every chunk as sent, in order."""
    from websockets.asyncio.client import connect
    from websockets.asyncio.server import serve

    payloads = [os.urandom(n) for n in LENGTHS]

    async def main() -> list[bytes]:
        got: list[bytes] = []
        done = asyncio.Event()

        async def handler(ws: object) -> None:
            async for message in ws:  # type: ignore[attr-defined]
                got.append(bytes(message))
                if len(got) == len(payloads):
                    done.set()

        async with serve(handler, "127.0.0.1", 0, compression=None, max_size=None) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            async with connect(f"ws://127.0.0.1:{port}", compression=None,
                               create_connection=ChunkConnection) as ws:
                assert isinstance(ws, ChunkConnection)
                for payload in payloads:
                    await ws.send_framed(bytearray(WS_HEADROOM) + payload, WS_HEADROOM)
                await asyncio.wait_for(done.wait(), 30)
        return got

    assert asyncio.run(main()) == payloads
