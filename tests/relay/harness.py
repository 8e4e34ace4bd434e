"""Test harness: the relay as a real subprocess, and a tiny asyncio client on relay.wire.

The client is what the real client's thin asyncio layer will look like: a
websocket, a :class:`relay.wire.ClientConnection`, a reader task.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection as WsConnection
from websockets.asyncio.client import connect

from keysource.pq import KeyPair, hybrid_signature
from relay import wire

ROOT = Path(__file__).resolve().parents[2]
HYBRID = hybrid_signature()


@dataclass
class RelayProcess:
    proc: subprocess.Popen[str]
    url: str
    port: int
    relay_id: str
    fingerprint: str | None
    data_dir: Path
    args: list[str]
    output: list[str] = field(default_factory=list)
    metrics_url: str | None = None  # the metrics listener's base URL (--metrics-listen)

    @property
    def http_url(self) -> str:
        return self.url.replace("ws", "http", 1).rstrip("/")

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def alive(self) -> bool:
        return self.proc.poll() is None


def start_relay(data_dir: Path, *extra: str, port: int = 0, timeout: float = 20.0,
                metrics: bool = True) -> RelayProcess:
    """Start ``python -m relay`` on 127.0.0.1 and wait for its listening line; ``metrics``:
    with a metrics listener on a free loopback port (its URL in ``metrics_url``)."""
    if metrics and "--metrics-listen" not in extra:
        extra = (*extra, "--metrics-listen", "127.0.0.1:0")
    args = [sys.executable, "-m", "relay", "--host", "127.0.0.1", "--port", str(port),
            "--data", str(data_dir), "--log-level", "warning", *extra]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    relay_id = fingerprint = metrics_url = None
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("relay exited early:\n" + "".join(lines))
        lines.append(line)
        if m := re.match(r"relay id: (\S+)", line):
            relay_id = m.group(1)
        if m := re.match(r"relay certificate SHA-256 fingerprint: (\S+)", line):
            fingerprint = m.group(1)
        if m := re.match(r"relay metrics on (\S+)/metrics", line):
            metrics_url = m.group(1)
        if m := re.match(r"relay listening on (\S+)", line):
            url = m.group(1)
            port_found = int(url.rsplit(":", 1)[1].strip("/"))
            assert relay_id is not None
            relay = RelayProcess(proc, url, port_found, relay_id, fingerprint, data_dir, args,
                                 lines, metrics_url)
            _drain_output(relay)
            return relay
    proc.kill()
    raise RuntimeError("relay did not start in time:\n" + "".join(lines))


def _drain_output(relay: RelayProcess) -> None:
    """Keep reading the relay's output so a full pipe never blocks it."""
    import threading

    def pump() -> None:
        assert relay.proc.stdout is not None
        for line in relay.proc.stdout:
            relay.output.append(line)

    threading.Thread(target=pump, daemon=True).start()


class Identity:
    """A handle and its hybrid identity key pair."""

    def __init__(self, handle: str, keypair: KeyPair | None = None) -> None:
        self.handle = handle
        self.keypair = keypair or HYBRID.generate_keypair()

    def sign(self, message: bytes) -> bytes:
        return HYBRID.sign(self.keypair.secret_key, message)


class Client:
    """One connection to the relay, collecting what arrives."""

    def __init__(self, url: str, identity: Identity, *, relay_id: str | None = None,
                 ssl_context: ssl.SSLContext | None = None, tls_fingerprint: bytes = b"",
                 auto_ack: bool = True, resend: list[wire.Send] | None = None) -> None:
        self.url = url
        self.identity = identity
        self.conn = wire.ClientConnection(
            identity.handle, identity.keypair.public_key, identity.sign,
            expected_relay_id=relay_id, tls_fingerprint=tls_fingerprint, resend=resend or (),
        )
        self.ssl_context = ssl_context
        self.auto_ack = auto_ack
        self.ws: WsConnection | None = None
        self.events: list[Any] = []
        self.delivered: list[wire.Deliver] = []
        self.stored: dict[str, bool] = {}
        self.errors: list[wire.Error] = []
        self.auth_ok: wire.AuthOk | None = None
        self.protocol_error: wire.WireError | None = None
        self.pending_acks: list[int] = []
        self.outgoing: list[str | bytes] = []
        self.closed: asyncio.Future[tuple[int | None, str]] | None = None
        self._changed = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self.on_deliver: Callable[[wire.Deliver], None] | None = None

    async def connect(self, *, wait_auth: bool = True, timeout: float = 10.0) -> Client:
        self.ws = await connect(self.url, compression=None, max_size=wire.MAX_FRAME_BYTES,
                                ssl=self.ssl_context, open_timeout=timeout)
        self.closed = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read())
        if wait_auth:
            await self.wait(lambda: self.auth_ok is not None or self.errors
                            or self.closed.done(), timeout)
            if self.protocol_error is not None:
                raise self.protocol_error
            if self.auth_ok is None:
                raise RuntimeError(f"login refused: {self.errors}")
        return self

    async def _read(self) -> None:
        assert self.ws is not None and self.closed is not None
        try:
            async for data in self.ws:
                for event in self.conn.receive(data):
                    self._record(event)
                # Like a real client: ack in batches, once nothing more is waiting to be read.
                if self.pending_acks and (len(self.pending_acks) >= 256
                                          or not self.ws.recv_messages.frames):
                    self.conn.ack(self.pending_acks)
                    self.pending_acks = []
                await self.flush()
        except websockets.ConnectionClosed:
            pass
        except wire.WireError as exc:  # the relay broke the protocol (or is not the pinned one)
            self.protocol_error = exc
            await self.ws.close()
        finally:
            if not self.closed.done():
                self.closed.set_result((self.ws.close_code, self.ws.close_reason or ""))
            self._changed.set()

    def _record(self, event: Any) -> None:
        self.events.append(event)
        if isinstance(event, wire.AuthOk):
            self.auth_ok = event
        elif isinstance(event, wire.Deliver):
            self.delivered.append(event)
            if self.on_deliver is not None:
                self.on_deliver(event)
            if self.auto_ack:
                self.pending_acks.append(event.seq)
        elif isinstance(event, wire.Stored):
            self.stored[event.msg] = event.dup
        elif isinstance(event, wire.Error):
            self.errors.append(event)
        self._changed.set()

    async def flush(self) -> None:
        assert self.ws is not None
        self.outgoing.extend(self.conn.data_to_send())
        while self.outgoing:
            await self.ws.send(self.outgoing.pop(0))

    def _queue(self, frame: str | bytes) -> None:
        """Queue a frame behind everything the connection core has queued (order kept)."""
        self.outgoing.extend(self.conn.data_to_send())
        self.outgoing.append(frame)

    # Stream frames, built as production builds them (client/messenger/relay_link.py):
    # the frame classes and relay.wire.binary's encoder; sent by the next flush().

    def open_stream(self, to: str, kind: str, *, req_id: str | None = None) -> bytes:
        stream = os.urandom(16)
        self.stream_open(stream, to, kind, req_id=req_id)
        return stream

    def stream_open(self, stream: bytes, to: str, kind: str, *,
                    req_id: str | None = None) -> None:
        self._queue(wire.StreamOpen(stream.hex(), to, kind, req_id).encode())

    def send_chunk(self, stream: bytes, kind: str, seq: int, payload: bytes, *,
                   final: bool = False) -> None:
        code = wire.KIND_FILE_CHUNK if kind == "file" else wire.KIND_MEDIA
        frame = bytearray(wire.HEADER_BYTES) + payload
        wire.encode_binary_into(frame, code, stream, seq, flags=wire.FLAG_FINAL if final else 0)
        self._queue(bytes(frame))

    def stream_ack(self, stream: bytes, seqs: list[int]) -> None:
        for start in range(0, len(seqs), wire.MAX_ACK_SEQS):
            chunk = tuple(seqs[start:start + wire.MAX_ACK_SEQS])
            self._queue(wire.StreamAck(stream.hex(), chunk).encode())

    def stream_close(self, stream: bytes) -> None:
        self._queue(wire.StreamClose(stream.hex()).encode())

    async def send_raw(self, data: str | bytes) -> None:
        assert self.ws is not None
        await self.ws.send(data)

    async def send(self, to: str, body: bytes, **kw: Any) -> str:
        msg = self.conn.send(to, body, **kw)
        await self.flush()
        return msg

    async def wait(self, predicate: Callable[[], Any], timeout: float = 10.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not predicate():
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise TimeoutError("condition not met in time")
            self._changed.clear()
            if predicate():
                return
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                if not predicate():
                    raise
                return

    async def next_error(self, timeout: float = 5.0) -> wire.Error:
        count = len(self.errors)
        await self.wait(lambda: len(self.errors) > count, timeout)
        return self.errors[count]

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            await asyncio.wait_for(self._reader, 5)
