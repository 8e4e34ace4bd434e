"""keysource.kme.http11 against raw loopback servers: keep-alive, a connection closed at the
moment of reuse, timeouts, refusals. (The KME itself is in test_etsi_api.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from keysource.kme.http11 import AsyncHttpClient, HttpError

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
async def server(answer: Callable[[int, int, bytes], bytes | None]) -> AsyncIterator[list[bytes]]:
    """A loopback server; ``answer(connection_no, request_no, request)`` returns the bytes
    to send back, or None to close the connection without answering."""
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
    async with server(lambda conn, n, req: OK) as seen:
        client = AsyncHttpClient(seen.pop(0).decode(), timeout=5)
        first = await client.request("GET", "/a")
        streams = client._streams
        second = await client.request("POST", "/b", json_body={"x": 1})
        assert client._streams is streams
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
