"""The sender's buffers are reused, not allocated per chunk: the reader fills one buffer,
the driver seals later chunks into frames already written out. (A new 256 KiB buffer per
chunk made the allocator return pages to the kernel and fault them in again: ~40,000 page
faults per 256 MiB; tests/bench/bench_transfer.py shows the time.) Reuse must never change
a byte: files still land verified, also after a resume that re-hashes the skipped prefix."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

from client.transfer import (
    FileReader,
    IntegrityFailed,
    ReceiverStatus,
    SenderStatus,
    TransferReceiver,
    TransferSender,
    build_manifest,
)
from client.transfer.driver import SEAL_BATCH, FrameQueue, Incoming, ReceiverDriver, SenderDriver
from client.transfer.fileio import open_read, read_into_at
from client.transfer.keys import FileKey
from client.transfer.stream import ChunkOpener, ChunkSealer, parse_chunk_header

from .helpers import Secrets, deliver_control, make_pair, pump, sha256_file, write_seeded_file

CHUNK = 16_384


def test_read_into_at_fills_the_buffer_or_stops_at_the_end(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(bytes(range(256)) * 40)  # 10,240 bytes
    fd = open_read(path)
    try:
        buffer = bytearray(4096)
        assert read_into_at(fd, buffer, 100) == 4096
        assert buffer == path.read_bytes()[100:4196]
        assert read_into_at(fd, buffer, 8192) == 2048
        assert buffer[:2048] == path.read_bytes()[8192:]
        assert read_into_at(fd, buffer, 20_000) == 0
    finally:
        os.close(fd)


def test_the_file_reader_returns_views_of_one_buffer(tmp_path: Path) -> None:
    source = tmp_path / "f.bin"
    write_seeded_file(source, 3 * CHUNK + 5, seed=1)
    content = source.read_bytes()
    reader = FileReader([source])
    first = reader(0, 0, CHUNK)
    assert bytes(first) == content[:CHUNK]
    second = reader(0, CHUNK, CHUNK)
    assert isinstance(first, memoryview) and isinstance(second, memoryview)
    assert second.obj is first.obj  # no new buffer per chunk
    assert bytes(second) == content[CHUNK:2 * CHUNK]
    assert bytes(reader(0, 3 * CHUNK, 5)) == content[3 * CHUNK:]
    reader.close()


def test_a_restored_sender_with_the_file_reader_rehashes_the_prefix_right(
        tmp_path: Path) -> None:
    """The skipped prefix is hashed before the resume chunk is read into the same buffer."""
    source = tmp_path / "src" / "f.bin"
    write_seeded_file(source, 7 * CHUNK + 9, seed=2)
    pair = make_pair([source], tmp_path / "dl", chunk_size=CHUNK, window=3)
    deliver_control(pair.sender, pair.receiver)
    for frame in pair.sender.frames():
        pair.receiver.receive_frame(frame)
    deliver_control(pair.sender, pair.receiver)
    snapshot = pair.sender.snapshot()
    assert pair.sender.acknowledged == (0, 3)
    built = build_manifest([source], chunk_size=CHUNK)
    sender = TransferSender.restore(snapshot, pair.secrets.keys(pair.manifest),
                                    FileReader.for_manifest(built), window_chunks=3)
    events = pump(sender, pair.receiver)
    assert not [e for e in events if isinstance(e, IntegrityFailed)]
    assert pair.receiver.status is ReceiverStatus.COMPLETE
    assert sha256_file(pair.receiver.landed()[0]) == sha256_file(source)


def test_a_frame_of_the_right_size_is_sealed_into_again() -> None:
    key = FileKey(os.urandom(32), os.urandom(7))
    tid = os.urandom(16)
    sealer, opener = ChunkSealer(tid, 0, key), ChunkOpener(tid, 0, key)
    first = sealer.seal(0, os.urandom(1000), False, headroom=8)
    again_plain = os.urandom(1000)
    again = sealer.seal(1, again_plain, False, headroom=8, reuse=first)
    assert again is first
    out = memoryview(bytearray(1000))
    view = memoryview(again)[8:]
    assert opener.open_into(view, parse_chunk_header(view), out) == 1000
    assert bytes(out) == again_plain
    assert sealer.seal(2, b"short", True, headroom=8, reuse=first) is not first


class _KeepingLink:
    """Delivers a copy of each chunk and keeps the frame objects it was given."""

    headroom = 0

    def __init__(self, queue: FrameQueue) -> None:
        self.queue = queue
        self.frames: list[bytearray] = []
        self.count = 0

    def frame_chunk(self, frame: bytearray, ordinal: int) -> None:
        return None

    async def send_chunk(self, frame: bytearray) -> None:
        self.frames.append(frame)
        await self.send_control(bytes(frame))

    async def send_control(self, data: bytes) -> None:
        self.count += 1
        await self.queue.put(Incoming(data, self.count))

    async def ack(self, seqs: list[int]) -> None:
        return None


class _Quiet:
    def events(self, events: list[object]) -> None:
        return None

    def progress(self) -> None:
        return None


def _ends(tmp_path: Path, size: int, *, seed: int) -> tuple[Path, TransferSender,
                                                          TransferReceiver]:
    """A seeded file of ``size`` bytes and the two ends of its transfer."""
    source = tmp_path / "src" / "f.bin"
    write_seeded_file(source, size, seed=seed)
    built = build_manifest([source], chunk_size=CHUNK)
    manifest = built.manifest.with_qkd_key_ids(["k"])
    secrets = Secrets.fresh()
    sender = TransferSender(secrets.keys(manifest), FileReader.for_manifest(built),
                            window_chunks=1 << 20)
    return source, sender, TransferReceiver.accept(secrets.keys(manifest), tmp_path / "dl")


async def test_the_driver_seals_into_frames_already_sent(tmp_path: Path) -> None:
    source, sender, receiver = _ends(tmp_path, 40 * CHUNK + 7, seed=3)
    to_receiver: FrameQueue = asyncio.Queue()
    to_sender: FrameQueue = asyncio.Queue()
    sending_link, answering_link = _KeepingLink(to_receiver), _KeepingLink(to_sender)
    sending = SenderDriver(sender, sending_link, to_sender, _Quiet())
    receiving = ReceiverDriver(receiver, answering_link, to_receiver, _Quiet())
    running = asyncio.ensure_future(sending.run())
    assert await asyncio.wait_for(receiving.run(), 60) is ReceiverStatus.COMPLETE
    assert await asyncio.wait_for(running, 60) is SenderStatus.COMPLETE
    assert sha256_file(receiver.landed()[0]) == sha256_file(source)
    assert len(sending_link.frames) == 41
    distinct = {id(frame) for frame in sending_link.frames}  # all still alive: ids are unique
    # two batches (one sent while the next is sealed), and the short last chunk
    assert len(distinct) <= 2 * SEAL_BATCH + 1


class _WatchedLock:
    """The driver's core lock; ``entered`` is set (on the loop) whenever the worker thread
    takes it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._lock = threading.Lock()
        self._loop = loop
        self.entered = asyncio.Event()
        self.worker_entries = 0

    def __enter__(self) -> None:
        self._lock.acquire()
        if threading.current_thread() is not threading.main_thread():
            self.worker_entries += 1
            self._loop.call_soon_threadsafe(self.entered.set)

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


class _WaitingLink(_KeepingLink):
    """Holds the first chunk until the worker thread has gone back to the core (to seal
    the next batch): without read-ahead that never happens and the test times out."""

    def __init__(self, queue: FrameQueue, lock: _WatchedLock) -> None:
        super().__init__(queue)
        self.lock = lock

    async def send_chunk(self, frame: bytearray) -> None:
        if not self.frames:
            before = self.lock.worker_entries
            while self.lock.worker_entries == before:
                self.lock.entered.clear()
                if self.lock.worker_entries == before:
                    await asyncio.wait_for(self.lock.entered.wait(), 10)
        await super().send_chunk(frame)


async def test_the_next_batch_is_sealed_while_one_is_sent(tmp_path: Path) -> None:
    source, sender, receiver = _ends(tmp_path, 3 * SEAL_BATCH * CHUNK, seed=4)
    to_receiver: FrameQueue = asyncio.Queue()
    to_sender: FrameQueue = asyncio.Queue()
    lock = _WatchedLock(asyncio.get_running_loop())
    sending = SenderDriver(sender, _WaitingLink(to_receiver, lock), to_sender, _Quiet(),
                           lock=lock)  # type: ignore[arg-type]
    receiving = ReceiverDriver(receiver, _KeepingLink(to_sender), to_receiver, _Quiet())
    running = asyncio.ensure_future(sending.run())
    assert await asyncio.wait_for(receiving.run(), 60) is ReceiverStatus.COMPLETE
    assert await asyncio.wait_for(running, 60) is SenderStatus.COMPLETE
    assert sha256_file(receiver.landed()[0]) == sha256_file(source)
