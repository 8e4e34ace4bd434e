"""client/messenger/ws_frames.py's receiving side: bulk binary frames split off the byte
stream in one copy, everything else read by websockets exactly as before.

The property: whatever the frames and wherever the reads split them, the messages (and
frames) a client sees are the ones websockets alone would give. Then a real websockets
server on loopback, a frame websockets must refuse, and the internals relied on."""

from __future__ import annotations

import asyncio
import os
import random

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosedError
from websockets.frames import Frame, Opcode
from websockets.protocol import CLIENT, Protocol, State

from client.messenger.ws_frames import (
    BULK_MIN_BYTES,
    BulkFrameReader,
    ChunkConnection,
    parser_at_frame_boundary,
)

BIG = BULK_MIN_BYTES + 1000


def _server_bytes(frames: list[Frame]) -> bytes:
    return b"".join(frame.serialize(mask=False) for frame in frames)


def _random_frames(rng: random.Random) -> list[Frame]:
    """Bulk and small binary frames, text, pings, pongs and fragmented messages."""
    frames: list[Frame] = []
    for _ in range(rng.randrange(1, 12)):
        pick = rng.randrange(7)
        if pick == 0:
            frames.append(Frame(Opcode.BINARY, rng.randbytes(rng.choice([BULK_MIN_BYTES, BIG]))))
        elif pick == 1:
            frames.append(Frame(Opcode.BINARY, rng.randbytes(rng.randrange(0, 300))))
        elif pick == 2:
            frames.append(Frame(Opcode.TEXT, ("é" * rng.randrange(0, BIG // 2)).encode()))
        elif pick == 3:
            frames.append(Frame(Opcode.PING, rng.randbytes(rng.randrange(0, 125))))
        elif pick == 4:
            frames.append(Frame(Opcode.PONG, rng.randbytes(rng.randrange(0, 125))))
        else:  # a fragmented binary message: big first fragment, then continuations
            frames.append(Frame(Opcode.BINARY, rng.randbytes(BIG), fin=False))
            frames.append(Frame(Opcode.CONT, rng.randbytes(BIG), fin=False))
            frames.append(Frame(Opcode.CONT, rng.randbytes(rng.randrange(0, BIG))))
    return frames


def _reads(data: bytes, rng: random.Random) -> list[bytes]:
    """``data`` cut at random points, some of them a byte or two apart."""
    cuts = sorted({rng.randrange(len(data) + 1) for _ in range(rng.randrange(0, 40))}
                  | {rng.randrange(len(data) + 1) + d for d in (0, 1, 2) for _ in range(3)})
    cuts = [c for c in cuts if 0 < c < len(data)]
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def _as_websockets_alone(reads: list[bytes]) -> list[tuple[Opcode, bytes, bool]]:
    protocol = Protocol(CLIENT, state=State.OPEN, max_size=None)
    seen = []
    for data in reads:
        protocol.receive_data(data)
        seen += [(f.opcode, bytes(f.data), f.fin) for f in protocol.events_received()]
    return seen


def _through_the_bulk_reader(reads: list[bytes]) -> tuple[list[tuple[Opcode, bytes, bool]],
                                                          int]:
    protocol = Protocol(CLIENT, state=State.OPEN, max_size=None)
    seen: list[tuple[Opcode, bytes, bool]] = []
    bulk = 0

    def forward(data: bytes) -> None:
        protocol.receive_data(data)
        seen.extend((f.opcode, bytes(f.data), f.fin) for f in protocol.events_received())

    def deliver(payload: bytes) -> None:
        nonlocal bulk
        assert type(payload) is bytes
        bulk += 1
        seen.append((Opcode.BINARY, payload, True))

    reader = BulkFrameReader(forward, deliver, lambda: protocol.state is State.OPEN, None,
                             fragmenting=lambda: protocol.current_size is not None)
    for data in reads:
        reader.feed(data)
    return seen, bulk


@pytest.mark.parametrize("seed", range(60))
def test_any_frames_split_anywhere_give_what_websockets_gives(seed: int) -> None:
    rng = random.Random(seed)
    frames = _random_frames(rng)
    reads = _reads(_server_bytes(frames), rng)
    seen, bulk = _through_the_bulk_reader(reads)
    assert seen == _as_websockets_alone(reads)
    expected_bulk = sum(1 for f in frames if f.opcode is Opcode.BINARY and f.fin
                        and len(f.data) >= BULK_MIN_BYTES)
    assert bulk == expected_bulk


def test_a_bulk_frame_read_a_byte_at_a_time() -> None:
    payload = os.urandom(BIG)
    data = _server_bytes([Frame(Opcode.BINARY, payload), Frame(Opcode.PING, b"hi")])
    seen, bulk = _through_the_bulk_reader([data[i:i + 1] for i in range(len(data))])
    assert bulk == 1
    assert seen == [(Opcode.BINARY, payload, True), (Opcode.PING, b"hi", True)]


def test_after_a_close_frame_everything_goes_to_websockets() -> None:
    """websockets discards what follows a close; the reader must not take it."""
    close = Frame(Opcode.CLOSE, (1000).to_bytes(2, "big") + b"bye")
    data = _server_bytes([close, Frame(Opcode.BINARY, os.urandom(BIG))])
    seen, bulk = _through_the_bulk_reader([data])
    assert bulk == 0
    assert [opcode for opcode, _, _ in seen] == [Opcode.CLOSE]


def test_a_whole_binary_frame_inside_a_fragmented_message_is_websockets_to_refuse() -> None:
    """A protocol error: websockets fails the connection; the reader must not take it."""
    data = _server_bytes([Frame(Opcode.BINARY, os.urandom(BIG), fin=False),
                          Frame(Opcode.BINARY, os.urandom(BIG))])
    protocol = Protocol(CLIENT, state=State.OPEN, max_size=None)
    taken: list[bytes] = []
    reader = BulkFrameReader(protocol.receive_data, taken.append,
                             lambda: protocol.state is State.OPEN, None,
                             fragmenting=lambda: protocol.current_size is not None)
    reader.feed(data)
    assert taken == []
    assert protocol.state is State.CLOSING  # websockets refused it, as without the reader
    assert "continuation" in str(protocol.parser_exc)


def test_masked_or_oversized_frames_are_left_to_websockets() -> None:
    """A server must not mask; a frame over max_size is websockets' to refuse."""
    masked = Frame(Opcode.BINARY, os.urandom(BIG)).serialize(mask=True)
    oversized = _server_bytes([Frame(Opcode.BINARY, os.urandom(BIG))])
    forwarded: list[bytes] = []
    reader = BulkFrameReader(forwarded.append, lambda p: pytest.fail("taken"),
                             lambda: True, max_size=BIG - 1)
    reader.feed(masked)
    reader.feed(oversized)
    assert b"".join(forwarded) == masked + oversized


class CountingConnection(ChunkConnection):
    """Counts the messages the bulk reader delivered (so a test sees it was used)."""

    bulk_messages = 0

    def _bulk_message(self, payload: bytes) -> None:
        self.bulk_messages += 1
        super()._bulk_message(payload)


async def _serve_and_receive(send: list[bytes | str], max_size: int | None = None,
                             ) -> tuple[list[bytes | str], CountingConnection]:
    async def handler(ws: ServerConnection) -> None:
        await ws.recv()  # the client is connected: what follows is not in the handshake's read
        for message in send:
            await ws.send(message)
        await ws.ping(b"keepalive")
        await ws.send("end")
        await ws.wait_closed()

    got: list[bytes | str] = []
    async with serve(handler, "127.0.0.1", 0, compression=None, max_size=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}", compression=None, max_size=max_size,
                           create_connection=CountingConnection) as ws:
            assert isinstance(ws, CountingConnection)
            await ws.send("go")
            async for message in ws:
                if message == "end":
                    break
                got.append(message)
            return got, ws


def test_a_websockets_server_sends_chunks_and_messages_they_arrive_in_order() -> None:
    rng = random.Random(7)
    send: list[bytes | str] = []
    for i in range(40):
        send.append(rng.randbytes(rng.choice([BIG, 256 << 10, 300])))
        if i % 7 == 0:
            send.append(f"text {i}")
    got, ws = asyncio.run(_serve_and_receive(send))
    assert got == send
    assert ws.bulk_messages == sum(1 for m in send
                                   if isinstance(m, bytes) and len(m) >= BULK_MIN_BYTES)


def test_a_message_over_max_size_still_closes_the_connection_with_1009() -> None:
    with pytest.raises(ConnectionClosedError) as caught:
        asyncio.run(_serve_and_receive([os.urandom(BIG), os.urandom(BIG * 2)], max_size=BIG))
    assert caught.value.sent is not None and caught.value.sent.code == 1009


def test_parser_boundary_check_follows_websockets_internals() -> None:
    """parser_at_frame_boundary relies on the parser waiting in StreamReader.at_eof."""
    class Fake:
        def __init__(self) -> None:
            self.protocol = Protocol(CLIENT, state=State.OPEN)

    fake = Fake()
    assert parser_at_frame_boundary(fake)  # type: ignore[arg-type]
    fake.protocol.receive_data(b"\x82")  # half a header
    assert not parser_at_frame_boundary(fake)  # type: ignore[arg-type]
    fake.protocol.receive_data(b"\x7e\x00")  # still inside the header
    assert not parser_at_frame_boundary(fake)  # type: ignore[arg-type]
