"""A link between two processes over TCP: Alice connects, Bob listens.

One connection carries everything as length-prefixed frames (4-byte big-endian length, then the
frame): the quantum frames (the pulses that reach Bob's detector, see source.py), the
authenticated classical messages, and unauthenticated flow-control frames. A `qsecret eve` proxy
can sit in the middle and attack the quantum frames.

Also a small command for tests and demos (prints one JSON line per block and per key batch;
never key material, only a short digest to compare the two ends):

    python -m keysource.qkd bob --port 7000 --psk-file link.psk
    python -m keysource.qkd alice --port 7000 --psk-file link.psk --blocks 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from .auth import AuthKeyExhausted, ChannelAuth, KeyStream
from .background import in_background
from .durable import Checkpoint, LinkStateStore
from .pair import call_maybe_async
from .params import LinkParams
from .protocol import MAX_FRAME_BYTES, AliceEndpoint, BlockReport, BobEndpoint, KeyBatch, Output
from .refill import RefillGate

log = logging.getLogger("qsecret.qkd")
_LEN = struct.Struct(">I")
UNLIMITED = 1 << 62
# LinkParams fields that only the pair runner / Eve use, so they may differ between the ends
_LOCAL_FIELDS = {"seed", "intercept_fraction", "pns", "tamper_classical_every"}


class LinkConfigError(Exception):
    """The two ends cannot form a link (different parameters, wrong roles)."""


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    header = await reader.readexactly(_LEN.size)
    (length,) = _LEN.unpack(header)
    if length == 0 or length > MAX_FRAME_BYTES:
        raise ConnectionError(f"peer sent a frame of {length} bytes")
    return await reader.readexactly(length)


def write_frames(writer: asyncio.StreamWriter, frames: list[bytes]) -> None:
    for frame in frames:
        writer.write(_LEN.pack(len(frame)) + frame)


def params_fingerprint(params: LinkParams) -> str:
    shared = {k: v for k, v in dataclasses.asdict(params).items() if k not in _LOCAL_FIELDS}
    return hashlib.sha256(json.dumps(shared, sort_keys=True).encode()).hexdigest()[:16]


def _hello(role: str, params: LinkParams) -> bytes:
    return b"H" + json.dumps({"v": 1, "role": role,
                              "params": params_fingerprint(params)}).encode()


def _check_hello(frame: bytes, want_role: str, params: LinkParams) -> None:
    if frame[:1] == b"E":
        raise LinkConfigError(f"peer refused the link: {frame[1:].decode(errors='replace')}")
    try:
        hello = json.loads(frame[1:]) if frame[:1] == b"H" else None
    except ValueError:
        hello = None
    if not isinstance(hello, dict):
        raise LinkConfigError("peer did not greet with a QKD link hello")
    if hello.get("role") != want_role:
        raise LinkConfigError(f"peer is {hello.get('role')!r}, expected {want_role!r}")
    if hello.get("params") != params_fingerprint(params):
        raise LinkConfigError("the two ends use different link parameters (LinkParams)")


class AuthStore:
    """Persists the authentication key streams, so a restart never reuses a one-time key.

    Saved (atomically, mode 0600) before any frame that used a new pad leaves the process.
    The file holds unused authentication key: protect it like the PSK. It keeps only the
    streams, not the block a crash may leave half committed: a KME uses a LinkStateStore
    (durable.py) instead and reads this file only once, to take over from older versions.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def load(self, psk: bytes, role: str) -> ChannelAuth:
        if not self.path.exists():
            return ChannelAuth.from_psk(psk, role)
        raw = self.path.read_bytes()
        if raw[:8] != b"QSAUTH1\n" or len(raw) < 16:
            raise ValueError(f"{self.path}: not a qsecret authentication state file")
        size = int.from_bytes(raw[8:16], "big")
        return ChannelAuth(KeyStream.from_bytes(raw[16: 16 + size]),
                           KeyStream.from_bytes(raw[16 + size:]))

    def save(self, auth: ChannelAuth) -> None:
        send = auth.send.to_bytes()
        data = b"QSAUTH1\n" + len(send).to_bytes(8, "big") + send + auth.recv.to_bytes()
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)


class _Session:
    """Shared plumbing of one endpoint across (re)connections."""

    def __init__(self, endpoint: AliceEndpoint | BobEndpoint, store: AuthStore | None,
                 on_keys: Callable[[KeyBatch], Any], on_report: Callable[[BlockReport], Any],
                 *, state_store: LinkStateStore | None = None, stored: bytes | None = None
                 ) -> None:
        self.endpoint = endpoint
        self.store = store
        self.on_keys = on_keys
        self.on_report = on_report
        self._saved_state: tuple[int, int, int, int] | None = None
        self.gate = RefillGate()  # Alice's: when to start the next block
        self.state_store = state_store
        self.checkpoint = Checkpoint(endpoint, stored)

    def _persist(self) -> None:
        auth = self.endpoint.auth
        state = (auth.send.next_index, auth.recv.next_index, auth.send.added_bytes,
                 auth.recv.added_bytes)
        if self.store is not None and state != self._saved_state:
            self.store.save(auth)
            self._saved_state = state

    async def _commit(self, out: Output) -> None:
        """Store the step's state with its keys (durable.py), before its frames leave."""
        assert self.state_store is not None
        due = self.checkpoint.due(out)
        if due is None:
            return
        await self.state_store.commit(*due)
        self.checkpoint.committed(due[0])
        if self.store is not None:  # a legacy authentication file, now superseded
            self.store.path.unlink(missing_ok=True)
            self.store = None

    async def deliver(self, out: Output, writer: asyncio.StreamWriter) -> None:
        if self.state_store is not None:
            await self._commit(out)
        else:
            self._persist()
        write_frames(writer, out.send)
        await writer.drain()
        if self.state_store is None:  # otherwise the store took them, with the state
            for batch in out.keys:
                await call_maybe_async(self.on_keys, batch)
        for report in out.reports:
            if self.endpoint.role == "alice":
                self.gate.on_report(report)
            await call_maybe_async(self.on_report, report)


async def _frame_queue(reader: asyncio.StreamReader, queue: asyncio.Queue[bytes | None]) -> None:
    try:
        while True:
            await queue.put(await read_frame(reader))
    except (asyncio.IncompleteReadError, ConnectionError, OSError):
        pass
    finally:
        await queue.put(None)


async def _next(queue: asyncio.Queue[bytes | None], stop: asyncio.Event,
                timeout: float) -> bytes | None | bool:
    """Next frame; None on disconnect; False on timeout or stop."""
    if stop.is_set():
        return False
    getter = asyncio.ensure_future(queue.get())
    stopper = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait({getter, stopper}, timeout=timeout,
                                 return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if getter in done:
        return getter.result()
    getter.cancel()
    return False


async def _alice_connection(session: _Session, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter, stop: asyncio.Event,
                            room: Callable[[], int] | None) -> None:
    alice = session.endpoint
    assert isinstance(alice, AliceEndpoint)
    params = alice.params
    write_frames(writer, [_hello("alice", params)])
    await writer.drain()
    _check_hello(await asyncio.wait_for(read_frame(reader), 30), "bob", params)
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()
    pump = asyncio.ensure_future(_frame_queue(reader, queue))
    try:
        while not stop.is_set():
            if alice.idle:
                free = UNLIMITED if room is None else int(room())
                if alice.peer_room is not None:
                    free = min(free, alice.peer_room)
                if not session.gate.ready(free):
                    write_frames(writer, [b"R?"])
                    await writer.drain()
                    frame = await _next(queue, stop, 0.5)
                    if frame is None:
                        return
                    if isinstance(frame, bytes) and frame[:1] == b"R" and len(frame) == 9:
                        alice.peer_room = int.from_bytes(frame[1:], "big")
                    continue
                out = await in_background(alice.start_block, free)
                await session.deliver(out, writer)
                continue
            frame = await _next(queue, stop, 60.0)
            if frame is None:
                return
            if frame is False:
                if stop.is_set():
                    return
                raise ConnectionError("peer silent for 60 s in the middle of a block")
            assert isinstance(frame, bytes)
            if frame[:1] == b"R":
                if len(frame) == 9:
                    alice.peer_room = int.from_bytes(frame[1:], "big")
                continue
            out = await in_background(alice.receive, frame)
            await session.deliver(out, writer)
    finally:
        pump.cancel()
        if not alice.idle:  # connection lost mid-block: the block is void
            await session.deliver(alice._abort("connection lost", notify=False), writer)


async def _bob_connection(session: _Session, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter, stop: asyncio.Event,
                          room: Callable[[], int] | None) -> None:
    bob = session.endpoint
    assert isinstance(bob, BobEndpoint)
    try:
        _check_hello(await asyncio.wait_for(read_frame(reader), 30), "alice", bob.params)
    except LinkConfigError as exc:
        write_frames(writer, [b"E" + str(exc).encode()])
        await writer.drain()
        raise
    write_frames(writer, [_hello("bob", bob.params)])
    await writer.drain()
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()
    pump = asyncio.ensure_future(_frame_queue(reader, queue))
    try:
        while not stop.is_set():
            frame = await _next(queue, stop, 1.0)
            if frame is None:
                return
            if frame is False:
                continue
            assert isinstance(frame, bytes)
            free = UNLIMITED if room is None else max(0, int(room()))
            if frame == b"R?":
                write_frames(writer, [b"R" + free.to_bytes(8, "big")])
                await writer.drain()
                continue
            bob.room = free
            out = await in_background(bob.receive, frame)
            await session.deliver(out, writer)
    finally:
        pump.cancel()
        if bob.block is not None:
            await session.deliver(bob._abort("connection lost", notify=False), writer)


async def run_link_endpoint(
    role: Literal["alice", "bob"], *, host: str, port: int, params: LinkParams, psk: bytes,
    on_keys: Callable[[KeyBatch], Any], on_report: Callable[[BlockReport], Any],
    stop: asyncio.Event, room: Callable[[], int] | None = None,
    auth_store: str | os.PathLike[str] | None = None,
    on_listening: Callable[[int], Any] | None = None,
    state_store: LinkStateStore | None = None,
) -> None:
    """Run one end of a TCP link until ``stop`` is set.

    Alice connects to (host, port), reconnecting with back-off; Bob listens on (host, port)
    (port 0 picks a free one, reported through ``on_listening``). Both ends need the same
    ``psk`` (see make_psk) and LinkParams. With ``auth_store`` the authentication key state is
    kept in that file across restarts (required for a long-lived link: restarting from the PSK
    would reuse one-time keys). With ``state_store`` (durable.py) the whole state both ends
    must agree on is stored there instead, atomically with the keys, which then go to the
    store and not to ``on_keys``; a legacy ``auth_store`` file is read once if the store holds
    nothing yet, and removed once the store has taken over. Raises LinkConfigError when the
    ends do not match and AuthKeyExhausted when attacks have used up the authentication key.
    """
    if role not in ("alice", "bob"):
        raise ValueError("role must be 'alice' or 'bob'")
    kind = AliceEndpoint if role == "alice" else BobEndpoint
    store = AuthStore(auth_store) if auth_store is not None else None
    stored = await state_store.load() if state_store is not None else None
    endpoint: AliceEndpoint | BobEndpoint
    psk_id = hashlib.sha256(b"qsecret qkd link psk\x00" + psk).digest()[:16]
    if stored is not None:
        endpoint = kind.from_state(params, stored)
        if endpoint.psk_id is not None and endpoint.psk_id != psk_id:
            log.warning("%s: the link's PSK was re-provisioned: authentication starts afresh "
                        "from it (the peer must have the same new PSK)", role)
            endpoint.reprovision(psk)
    else:
        auth = store.load(psk, role) if store is not None else ChannelAuth.from_psk(psk, role)
        endpoint = kind(params, auth=auth)
    endpoint.psk_id = psk_id
    session = _Session(endpoint, store, on_keys, on_report, state_store=state_store,
                       stored=stored)
    if role == "alice":
        await _run_alice(session, host, port, stop, room)
    else:
        await _run_bob(session, host, port, stop, room, on_listening)


async def _run_alice(session: _Session, host: str, port: int, stop: asyncio.Event,
                     room: Callable[[], int] | None) -> None:
    delay = 0.2
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError as exc:
            log.info("alice: cannot reach %s:%s (%s); retrying in %.1fs", host, port, exc, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * 2, 5.0)
            continue
        delay = 0.2
        try:
            await _alice_connection(session, reader, writer, stop, room)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError) as exc:
            log.warning("alice: link connection lost: %s", exc)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def _run_bob(session: _Session, host: str, port: int, stop: asyncio.Event,
                   room: Callable[[], int] | None,
                   on_listening: Callable[[int], Any] | None) -> None:
    failure: list[BaseException] = []
    current: list[asyncio.Task[None]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for task in current:  # the newest Alice wins; an older connection is presumed dead
            task.cancel()
        current.clear()
        task = asyncio.current_task()
        assert task is not None
        current.append(task)
        try:
            await _bob_connection(session, reader, writer, stop, room)
        except LinkConfigError as exc:
            log.error("bob: %s", exc)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError) as exc:
            log.warning("bob: link connection lost: %s", exc)
        except AuthKeyExhausted as exc:
            failure.append(exc)
            stop.set()
        finally:
            writer.close()

    server = await asyncio.start_server(handle, host, port)
    bound = server.sockets[0].getsockname()[1]
    log.info("bob: QKD link listening on %s:%s", host, bound)
    if on_listening is not None:
        await call_maybe_async(on_listening, bound)
    try:
        await stop.wait()
    finally:
        server.close()
        for task in current:
            task.cancel()
        await server.wait_closed()
    if failure:
        raise failure[0]


# -- command line (tests, demos) ---------------------------------------------------------------

def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m keysource.qkd",
                                     description="Run one end of a QKD link over TCP.")
    parser.add_argument("role", choices=["alice", "bob"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True, help="bob: 0 picks a free port")
    parser.add_argument("--psk-file", required=True, help="pre-shared key (created if absent)")
    parser.add_argument("--fibre-km", type=float, default=LinkParams.fibre_km)
    parser.add_argument("--frame-bits", type=int, default=LinkParams.frame_bits)
    parser.add_argument("--fibre-at-receiver", action="store_true")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--blocks", type=int, default=0, help="stop after N blocks (0: never)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(message)s")
    try:
        params = LinkParams(fibre_km=args.fibre_km, frame_bits=args.frame_bits,
                            fibre_at_receiver=args.fibre_at_receiver, seed=args.seed)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    psk_path = Path(args.psk_file)
    if not psk_path.exists():
        from .auth import make_psk
        fd = os.open(psk_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(make_psk())
    psk = psk_path.read_bytes()

    async def run() -> None:
        stop = asyncio.Event()
        blocks = 0

        def keys(batch: KeyBatch) -> None:
            digest = hashlib.sha256(b"".join(k for _, k in batch)).hexdigest()[:16]
            print(json.dumps({"keys": len(batch), "first_id": batch[0][0], "digest": digest}),
                  flush=True)

        def report(rep: BlockReport) -> None:
            nonlocal blocks
            print(json.dumps({"report": dataclasses.asdict(rep)}), flush=True)
            blocks += 1
            if args.blocks and blocks >= args.blocks:
                stop.set()

        def listening(port: int) -> None:
            print(json.dumps({"listening": port}), flush=True)

        await run_link_endpoint(args.role, host=args.host, port=args.port, params=params,
                                psk=psk, on_keys=keys, on_report=report, stop=stop,
                                on_listening=listening)

    try:
        asyncio.run(run())
    except (LinkConfigError, AuthKeyExhausted) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0

