"""``qsecret recv`` waits for exactly the relay's login backlog, however it arrives.

The relay's answer to the login and the queued envelopes after it may reach the client in
one read (a slow or busy client reads its socket late). The client then handles those
envelopes in its read loop, possibly before the login work task runs for the first time.
Counted from that task, the deliveries handled first were forgotten, and ``recv`` waited
for messages it had already handled, then exited 1 ("N message(s) still at the relay").
The test makes that arrival certain: a forwarder in front of the relay holds everything
the relay sends after the client's login request until the whole backlog is there, then
passes it on in one write.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import threading

from tests.e2e.stack import PASSPHRASE, Stack
from tests.relay.harness import Client, Identity

BACKLOG = 40


class LoginBurstProxy:
    """TCP forwarder: after the client's second write (its login, after the upgrade
    request), the relay's bytes are held until ``deliveries`` deliver frames are among
    them, then written to the client at once."""

    def __init__(self, target_port: int, deliveries: int) -> None:
        self.target_port = target_port
        self.deliveries = deliveries
        self.port = 0
        self.burst_sent = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    def start(self) -> LoginBurstProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        async def shut() -> None:
            assert self._server is not None
            self._server.close()
        asyncio.run_coroutine_threadsafe(shut(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        login_sent = asyncio.Event()

        async def upstream() -> None:
            writes = 0
            while data := await reader.read(65536):
                up_writer.write(data)
                await up_writer.drain()
                writes += 1
                if writes == 2:
                    login_sent.set()

        async def downstream() -> None:
            held = b""
            while data := await up_reader.read(65536):
                if login_sent.is_set() and not self.burst_sent.is_set():
                    held += data
                    if held.count(b'"t":"deliver"') < self.deliveries:
                        continue
                    data, held = held, b""
                    self.burst_sent.set()
                writer.write(data)
                await writer.drain()

        with contextlib.suppress(ConnectionError, OSError):
            await asyncio.gather(upstream(), downstream())
        writer.close()
        up_writer.close()


async def _queue_garbage_for(url: str, to: str, count: int) -> None:
    """A stranger's envelopes that bob's client drops at once (no session, not a prekey
    message): handled in the read loop without waiting for anything."""
    stranger = await Client(url, Identity("mallory")).connect()
    try:
        for _ in range(count):
            await stranger.send(to, os.urandom(64))
        await stranger.wait(lambda: len(stranger.stored) >= count, timeout=30)
    finally:
        await stranger.close()


def test_recv_counts_a_backlog_that_arrives_with_the_login(stack: Stack) -> None:
    stack.cli("bob", "recv", check=True)  # registered, prekeys published, queue empty
    asyncio.run(_queue_garbage_for(stack.relay_url, "bob", BACKLOG))
    proxy = LoginBurstProxy(stack.relay_port, BACKLOG).start()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "client", "recv", "--timeout", "10",
             "--data", str(stack.profile("bob")), "--relay", f"ws://127.0.0.1:{proxy.port}"],
            capture_output=True, text=True, timeout=120,
            env={**os.environ, "QSECRET_PASSPHRASE": PASSPHRASE})
    finally:
        proxy.stop()
    assert proxy.burst_sent.is_set(), "the backlog never came in one burst"
    assert done.returncode == 0, done.stderr
    assert "still at the relay" not in done.stderr
