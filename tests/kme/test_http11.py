"""keysource.kme.http11 against raw loopback servers: keep-alive, a connection closed at the
moment of reuse, timeouts, refusals, cancellation in the middle of an exchange, concurrency.
(The KME itself is in test_etsi_api.py and test_kme_concurrency.py.)"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from keysource.kme.http11 import AsyncHttpClient, HttpError, PrivateLoop, Response

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\":true}"


async def _read_request(reader: asyncio.StreamReader) -> bytes | None:
    """One request (head and Content-Length body), or None at the end of the stream."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head + await reader.readexactly(length)


@asynccontextmanager
async def server(
    answer: Callable[[int, int, bytes], bytes | None | Awaitable[bytes | None]],
) -> AsyncIterator[list[bytes]]:
    """A loopback server; ``answer(connection_no, request_no, request)`` returns (or, as a
    coroutine, waits and returns) the bytes to send back, or None to close the connection
    without answering. ``seen[0]`` is the URL, then every request in order of arrival."""
    seen: list[bytes] = []
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        number, count = connections, 0
        while (request := await _read_request(reader)) is not None:
            seen.append(request)
            count += 1
            reply = answer(number, count, request)
            if inspect.isawaitable(reply):
                reply = await reply
            if reply is None:
                break
            writer.write(reply)
            await writer.drain()
        writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    seen.append(f"http://127.0.0.1:{port}".encode())  # seen[0]: the URL
    async with srv:
        yield seen


async def test_requests_share_one_connection() -> None:
    on_connection: list[int] = []
    async with server(lambda conn, n, req: on_connection.append(conn) or OK) as seen:
        client = AsyncHttpClient(seen.pop(0).decode(), timeout=5)
        first = await client.request("GET", "/a")
        second = await client.request("POST", "/b", json_body={"x": 1})
        assert client.idle_connections == 1 and on_connection == [1, 1]
        assert first.status_code == second.status_code == 200 and second.json() == {"ok": True}
        assert seen[1].startswith(b"POST /b") and seen[1].endswith(b'{"x": 1}')
        await client.aclose()


async def test_a_get_is_retried_once_on_a_fresh_connection_a_post_never() -> None:
    """The server closes the first connection when its second request arrives (as a KME
    closing an idle connection at that very moment would)."""
    async with server(lambda conn, n, req: None if conn == 1 and n == 2 else OK) as seen:
        client = AsyncHttpClient(seen.pop(0).decode(), timeout=5)
        await client.request("GET", "/status")
        answer = await client.request("GET", "/status")  # lost, then sent again
        assert answer.status_code == 200
        assert [r.split(b" ")[1] for r in seen] == [b"/status"] * 3
        await client.aclose()
    async with server(lambda conn, n, req: None if conn == 1 and n == 2 else OK) as seen:
        client = AsyncHttpClient(seen.pop(0).decode(), timeout=5)
        await client.request("GET", "/status")
        with pytest.raises(HttpError, match="closed the connection before answering"):
            await client.request("POST", "/enc_keys", json_body={"number": 1})
        assert sum(r.startswith(b"POST") for r in seen) == 1  # never twice
        assert (await client.request("GET", "/status")).status_code == 200  # and it recovers
        await client.aclose()


async def test_silence_times_out_and_refusal_is_an_error() -> None:
    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never answers

    srv = await asyncio.start_server(mute, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    async with srv:
        client = AsyncHttpClient(f"http://127.0.0.1:{port}", timeout=0.3)
        with pytest.raises(HttpError, match="no answer within 0.3s"):
            await client.request("GET", "/status")
        await client.aclose()
    closed = AsyncHttpClient(f"http://127.0.0.1:{port}", timeout=5)  # the server is gone
    with pytest.raises(HttpError, match="ConnectionRefusedError"):
        await closed.request("GET", "/status")


async def test_garbage_is_an_error_and_an_oversized_answer_is_cut() -> None:
    async with server(lambda conn, n, req: b"SMTP ready\r\n\r\n") as seen:
        client = AsyncHttpClient(seen.pop(0).decode(), timeout=5)
        with pytest.raises(HttpError, match="ProtocolError"):
            await client.request("GET", "/")
        await client.aclose()
    huge = b"HTTP/1.1 200 OK\r\nContent-Length: 20000000\r\n\r\n" + b"x" * 20_000_000
    async with server(lambda conn, n, req: huge) as seen:
        client = AsyncHttpClient(seen.pop(0).decode(), timeout=10)
        with pytest.raises(HttpError, match="larger than"):
            await client.request("POST", "/")
        await client.aclose()


def test_only_http_urls() -> None:
    with pytest.raises(ValueError, match="not an http"):
        AsyncHttpClient("ftp://example.org")
    with pytest.raises(ValueError, match="SSL context"):
        AsyncHttpClient("https://127.0.0.1:1")


class Held:
    """Answers of a test server that wait until the test lets them go (no timing involved)."""

    def __init__(self) -> None:
        self.arrived = asyncio.Event()
        self.release = asyncio.Event()

    async def answer(self, reply: bytes) -> bytes:
        self.arrived.set()
        await self.release.wait()
        return reply


def json_reply(body: bytes) -> bytes:
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body)


async def test_a_request_cancelled_mid_exchange_leaves_no_half_used_connection() -> None:
    """issue 13: a request cancelled after it was sent (the messenger stopping its key-status
    loop) left the connection with our side DONE and theirs SEND_RESPONSE; the next request
    reused it and failed with h11's LocalProtocolError. The next request must just work."""
    held = Held()

    def answer(conn: int, n: int, req: bytes) -> bytes | Awaitable[bytes]:
        return held.answer(OK) if req.startswith(b"GET /status") else OK

    async with server(answer) as seen:
        client = AsyncHttpClient(seen.pop(0).decode(), timeout=5)
        await client.request("GET", "/warm-up")  # one idle keep-alive connection
        status = asyncio.create_task(client.request("GET", "/status"))
        await held.arrived.wait()  # the request is on the wire, its answer not yet sent
        status.cancel()
        with pytest.raises(asyncio.CancelledError):
            await status
        answer_b = await client.request("POST", "/enc_keys", json_body={"number": 1})
        assert answer_b.status_code == 200
        held.release.set()
        await client.drain()  # the cancelled exchange read its answer to the end
        assert (await client.request("GET", "/again")).status_code == 200
        assert client.idle_connections == 2  # both connections IDLE/IDLE, kept
        await client.aclose()


async def test_the_answer_of_a_cancelled_request_goes_to_on_orphan() -> None:
    held = Held()
    keys = json_reply(b'{"keys": ["k1"]}')
    async with server(lambda conn, n, req: held.answer(keys) if n == 1 else OK) as seen:
        client = AsyncHttpClient(seen.pop(0).decode(), timeout=5)
        orphans: list[Response] = []
        call = asyncio.create_task(
            client.request("POST", "/enc_keys", json_body={"number": 1}, on_orphan=orphans.append))
        await held.arrived.wait()
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert orphans == []
        held.release.set()
        await client.drain()
        assert [o.json() for o in orphans] == [{"keys": ["k1"]}]
        # An answer the caller did get is never also an orphan.
        got = await client.request("GET", "/x", on_orphan=orphans.append)
        assert got.status_code == 200 and len(orphans) == 1
        assert len(seen) == 2  # one connection served both, in turn
        await client.aclose()


async def test_a_request_cancelled_before_sending_sends_nothing() -> None:
    held = Held()
    async with server(lambda conn, n, req: held.answer(OK)) as seen:
        client = AsyncHttpClient(seen.pop(0).decode(), timeout=5, max_connections=1)
        first = asyncio.create_task(client.request("GET", "/first"))
        await held.arrived.wait()
        waiting = asyncio.create_task(client.request("POST", "/second", json_body={}))
        await asyncio.sleep(0)  # let it queue for the only slot (no timing involved)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        held.release.set()
        assert (await first).status_code == 200
        await client.drain()
        assert [r.split(b" ")[1] for r in seen] == [b"/first"]
        await client.aclose()


async def test_a_slow_request_does_not_hold_up_the_others_and_slots_are_bounded() -> None:
    held = Held()
    opened: set[int] = set()

    def answer(conn: int, n: int, req: bytes) -> bytes | Awaitable[bytes]:
        opened.add(conn)
        return held.answer(OK) if req.startswith(b"POST /slow") else OK

    async with server(answer) as seen:
        client = AsyncHttpClient(seen.pop(0).decode(), timeout=10, max_connections=3)
        slow = [asyncio.create_task(client.request("POST", "/slow")) for _ in range(2)]
        await held.arrived.wait()
        for _ in range(5):  # one slot left: the quick ones take turns on it
            assert (await client.request("GET", "/status")).status_code == 200
        assert len(opened) == 3
        third = asyncio.create_task(client.request("POST", "/slow"))
        blocked = asyncio.create_task(client.request("GET", "/status"))
        done, _ = await asyncio.wait([blocked], timeout=0.2)
        assert not done  # all three slots busy: it waits for one, it does not open a fourth
        held.release.set()
        assert (await blocked).status_code == 200
        assert all(r.status_code == 200 for r in await asyncio.gather(*slow, third))
        assert len(opened) == 3
        await client.aclose()


def test_private_loop_runs_the_async_client_for_blocking_callers() -> None:
    async def get(url: str) -> int:
        client = AsyncHttpClient(url, timeout=5)
        try:
            return (await client.request("GET", "/")).status_code
        finally:
            await client.aclose()

    async def serve() -> tuple[asyncio.Server, str]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while await _read_request(reader) is not None:
                writer.write(OK)
            writer.close()

        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        return srv, f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}"

    server_loop, loop = PrivateLoop(), PrivateLoop()
    try:
        srv, url = server_loop.run(serve())

        async def from_inside_a_running_loop() -> int:
            return loop.run(get(url))  # blocks this loop, as a sync helper would

        assert asyncio.run(from_inside_a_running_loop()) == 200
        assert loop.run(get(url)) == 200
        async def shut() -> None:  # on the server's own loop: asyncio is not thread-safe
            srv.close()
            await srv.wait_closed()

        server_loop.run(shut())
    finally:
        loop.close()
        server_loop.close()
    with pytest.raises(RuntimeError, match="closed"):
        loop.run(get(url))


async def test_a_path_h11_refuses_is_an_http_error() -> None:
    client = AsyncHttpClient("http://127.0.0.1:1", timeout=5)
    with pytest.raises(HttpError, match="cannot send"):
        await client.request("GET", "/api/v1/keys/bad id\n/status")


def test_a_forgotten_private_loop_stops_its_thread() -> None:
    import gc
    import threading

    loop = PrivateLoop()
    thread = loop._thread
    assert thread.is_alive()
    del loop
    gc.collect()
    thread.join(timeout=10)
    assert not thread.is_alive() and thread is not threading.current_thread()
