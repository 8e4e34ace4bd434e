"""A lossy websocket forwarder in front of the relay: a bad network for call media.

Every websocket connection made to it is forwarded to the relay frame by frame. Binary
*media* frames going from the client to the relay are dropped with probability ``loss``,
delayed by a uniform 0..``max_delay`` seconds each (so they also arrive out of order),
every ``tamper_every``-th one altered (one bit of the SFrame tag flipped) and every
``replay_every``-th one sent twice (a replay). Text frames and
everything else pass in order, untouched. It runs its own event loop on a thread; the
random choices come from a seeded generator (the same run, the same losses).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
from typing import Any

import websockets
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from relay.wire import HEADER_BYTES, KIND_MEDIA, MAX_FRAME_BYTES


class MediaProxy:
    def __init__(self, relay_url: str, *, loss: float = 0.0, max_delay: float = 0.0,
                 tamper_every: int = 0, replay_every: int = 0, seed: int = 17) -> None:
        self.relay_url = relay_url
        self.loss = loss
        self.max_delay = max_delay
        self.tamper_every = tamper_every
        self.replay_every = replay_every
        self._random = random.Random(seed)
        self.port = 0
        self.media_frames = 0
        self.dropped = 0
        self.tampered = 0
        self.replayed = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="media-proxy",
                                        daemon=True)
        self._server: Any = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self) -> MediaProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        self._server = await serve(self._serve, "127.0.0.1", 0, compression=None,
                                   max_size=MAX_FRAME_BYTES)
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        async def shut() -> None:
            self._server.close()
            await self._server.wait_closed()
        asyncio.run_coroutine_threadsafe(shut(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _serve(self, client: ServerConnection) -> None:
        async with connect(self.relay_url, compression=None, max_size=MAX_FRAME_BYTES) as relay:
            upstream = asyncio.ensure_future(self._pump(client, relay, lossy=True))
            downstream = asyncio.ensure_future(self._pump(relay, client, lossy=False))
            await asyncio.wait([upstream, downstream], return_when=asyncio.FIRST_COMPLETED)
            for task in (upstream, downstream):
                task.cancel()
            await asyncio.gather(upstream, downstream, return_exceptions=True)

    async def _pump(self, source: Any, sink: Any, *, lossy: bool) -> None:
        delayed: set[asyncio.Task[None]] = set()
        with contextlib.suppress(websockets.ConnectionClosed):
            async for message in source:
                if lossy and isinstance(message, bytes) and len(message) > HEADER_BYTES \
                        and message[1] == KIND_MEDIA:
                    damaged = self._damage(message)
                    if damaged is None:
                        continue
                    copies = [damaged]
                    if self.replay_every and self.media_frames % self.replay_every == 0:
                        self.replayed += 1
                        copies.append(damaged)
                    for copy in copies:
                        task = asyncio.ensure_future(self._later(
                            sink, copy, self._random.uniform(0, self.max_delay)))
                        delayed.add(task)
                        task.add_done_callback(delayed.discard)
                    continue
                await sink.send(message)

    def _damage(self, frame: bytes) -> bytes | None:
        self.media_frames += 1
        if self._random.random() < self.loss:
            self.dropped += 1
            return None
        if self.tamper_every and self.media_frames % self.tamper_every == 0:
            self.tampered += 1
            return frame[:-1] + bytes([frame[-1] ^ 0x01])
        return frame

    @staticmethod
    async def _later(sink: Any, frame: bytes, delay: float) -> None:
        if delay > 0:
            await asyncio.sleep(delay)  # the simulated network's delay
        with contextlib.suppress(websockets.ConnectionClosed):
            await sink.send(frame)
