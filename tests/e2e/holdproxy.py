"""A TCP forwarder in front of a real service that can hold the service's answers.

It stands for a slow network between a client and its KME: while held, requests still
reach the KME but no byte of an answer comes back, so a test can be sure a request is in
flight at the moment it quits a client. TLS passes through untouched (the forwarder only
copies bytes). It runs its own event loop on a thread, so it serves in-process clients
(Pilot tests) and subprocesses alike.

``before_answer``, if given, is called on the forwarder's thread with every chunk of an
answer just before it is passed on: a test can stop the client right there, knowing that no
byte of that chunk has reached it (the bytes are opaque TLS records; the test decides from
what the service did, e.g. what its journal holds, whether the chunk answers the request
it is waiting for).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable


class HoldProxy:
    def __init__(self, target_port: int, host: str = "127.0.0.1", *,
                 before_answer: Callable[[bytes], None] | None = None, port: int = 0) -> None:
        self.host = host
        self.target_port = target_port
        self.before_answer = before_answer
        self.port = port  # 0: any free port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="hold-proxy",
                                        daemon=True)
        self._open = asyncio.Event()  # set: answers flow
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._connections: set[asyncio.Task[None]] = set()
        self.request_while_held = threading.Event()

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    def start(self) -> HoldProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        self._open.set()
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    def hold(self) -> None:
        """From now on answers wait (requests still go through)."""
        async def close() -> None:
            self.request_while_held.clear()
            self._open.clear()
        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)

    def release(self) -> None:
        async def open_() -> None:
            self._open.set()
        asyncio.run_coroutine_threadsafe(open_(), self._loop).result(10)

    def stop(self) -> None:
        async def shut() -> None:
            if self._server is not None:
                self._server.close()
            self._open.set()  # nothing stays held: every pump sees its end
            for writer in list(self._writers):
                writer.close()
            if self._connections:
                await asyncio.wait(list(self._connections), timeout=10)
            if self._server is not None:
                await self._server.wait_closed()
        asyncio.run_coroutine_threadsafe(shut(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        me = asyncio.current_task()
        assert me is not None
        self._connections.add(me)
        me.add_done_callback(self._connections.discard)
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.target_port)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        try:
            await asyncio.gather(self._pump(reader, up_writer, upstream=True),
                                 self._pump(up_reader, writer, upstream=False))
        finally:
            for end in (writer, up_writer):
                self._writers.discard(end)
                end.close()

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, *,
                    upstream: bool) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await source.read(65536):
                if upstream and not self._open.is_set():
                    self.request_while_held.set()
                if not upstream:
                    await self._open.wait()
                    if self.before_answer is not None:
                        self.before_answer(data)
                sink.write(data)
                await sink.drain()
        with contextlib.suppress(ConnectionError, OSError):
            if sink.can_write_eof():
                sink.write_eof()

