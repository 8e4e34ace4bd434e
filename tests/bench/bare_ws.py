"""The ceiling for bench_transfer: bytes through a bare websockets forwarder, no crypto, no disk.

Three roles, each its own process (like the qsecret and wormhole clients and their servers)::

    python tests/bench/bare_ws.py forward --port P
    python tests/bench/bare_ws.py receive --url ws://127.0.0.1:P/recv --bytes N
    python tests/bench/bare_ws.py send --url ws://127.0.0.1:P/send --bytes N --frame F

The forwarder pairs one receiver with one sender and relays the sender's binary frames
unchanged; the sender sends ``N`` bytes from one in-memory buffer in ``F``-byte frames; the
receiver only counts them. Whatever qsecret or wormhole does beyond moving frames through a
middle process (sealing, hashing, writing the file, acks) is what this leaves out, so it is
the upper bound for their speed on this machine. The forwarder runs on the same event loop as
``qsecret relay`` (uvloop when installed), the clients on the standard loop like qsecret's.
Loopback only, every wait bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from relay import loop as event_loop

LOOPBACK = "127.0.0.1"
SLACK = 1024  # frame size headroom for max_size


async def forward(port: int, frame: int, pair_timeout: float) -> None:
    """Serve until killed: each /send connection is piped into the waiting /recv one."""
    waiting: asyncio.Queue[ServerConnection] = asyncio.Queue(maxsize=1)

    async def handler(ws: ServerConnection) -> None:
        path = ws.request.path if ws.request is not None else ""
        if path == "/recv":
            await waiting.put(ws)
            await ws.wait_closed()
        elif path == "/send":
            try:
                receiver = await asyncio.wait_for(waiting.get(), pair_timeout)
            except TimeoutError:
                await ws.close(1011, "no receiver")
                return
            try:
                async for message in ws:
                    await receiver.send(message)
            except ConnectionClosed:
                pass  # either side went away; the receiver's byte count tells the outcome
            await receiver.close()
        else:
            await ws.close(1008, "path must be /send or /recv")

    async with serve(handler, LOOPBACK, port, compression=None, max_size=frame + SLACK):
        print(f"forwarder listening on {LOOPBACK}:{port}", flush=True)
        await asyncio.Future()


async def send(url: str, total: int, frame: int) -> None:
    block = bytes(range(256)) * (frame // 256) + bytes(frame % 256)
    view = memoryview(block)
    async with connect(url, compression=None, max_size=frame + SLACK) as ws:
        left = total
        while left:
            size = min(frame, left)
            await ws.send(view[:size])
            left -= size


async def receive(url: str, total: int, frame: int, timeout: float) -> int:
    got = 0
    async with connect(url, compression=None, max_size=frame + SLACK) as ws:
        print("connected", flush=True)
        start = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                async for message in ws:
                    got += len(message)
                    if got >= total:
                        break
        except (ConnectionClosed, TimeoutError):
            pass
        elapsed = time.perf_counter() - start
    print(json.dumps({"event": "complete" if got == total else "failed", "bytes": got,
                      "seconds": round(elapsed, 4)}), flush=True)
    return 0 if got == total else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", choices=["forward", "send", "receive"])
    parser.add_argument("--port", type=int, help="forward: port to listen on (loopback)")
    parser.add_argument("--url", help="send/receive: ws://127.0.0.1:PORT/send or /recv")
    parser.add_argument("--bytes", type=int, default=0, help="send/receive: how many bytes")
    parser.add_argument("--frame", type=int, default=256 * 1024, help="bytes per websocket frame")
    parser.add_argument("--timeout", type=float, default=300.0, help="upper bound on any wait")
    args = parser.parse_args()
    if args.role == "forward":
        if args.port is None:
            parser.error("forward needs --port")
        event_loop.run(forward(args.port, args.frame, args.timeout))  # the relay's loop
        return 0
    if not args.url or not args.url.startswith(f"ws://{LOOPBACK}:"):
        parser.error(f"--url must be ws://{LOOPBACK}:PORT/...")
    if args.bytes <= 0:
        parser.error("--bytes must be positive")
    if args.role == "send":
        asyncio.run(asyncio.wait_for(send(args.url, args.bytes, args.frame), args.timeout))
        return 0
    return asyncio.run(receive(args.url, args.bytes, args.frame, args.timeout))


if __name__ == "__main__":
    sys.exit(main())
