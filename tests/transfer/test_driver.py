"""The asyncio driver the messenger runs (client.transfer.driver), over an in-memory link
that loses frames: recovery without help, cancel, a dropped connection, a late frame."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from client.transfer import (
    ChunkRefused,
    Event,
    ReceiverStatus,
    SenderStatus,
    summarise,
)
from client.transfer.driver import (
    FrameQueue,
    Incoming,
    ReceiverDriver,
    SenderDriver,
)

from .helpers import Pair, make_pair, sha256_file, write_seeded_file

QUICK_S = 0.05  # the drivers' quiet and nudge timers: a lost frame is noticed at once


class LossyLink:
    """Two queues; every ``n``-th frame in each direction is lost (0 = none).

    Counting per direction keeps the losses deterministic whatever the task interleaving.
    """

    def __init__(self, every_to_receiver: int = 0, every_to_sender: int = 0) -> None:
        self.to_receiver: FrameQueue = asyncio.Queue()
        self.to_sender: FrameQueue = asyncio.Queue()
        self.every = {"r": every_to_receiver, "s": every_to_sender}
        self.count = {"r": 0, "s": 0}
        self.dropped = 0
        self.acked: list[int] = []

    async def put(self, direction: str, data: bytes | bytearray) -> None:
        self.count[direction] += 1
        every = self.every[direction]
        queue = self.to_receiver if direction == "r" else self.to_sender
        if every and self.count[direction] % every == 0:
            self.dropped += 1
        else:
            await queue.put(Incoming(bytes(data), self.count[direction]))

    def end(self, direction: str) -> _End:
        return _End(self, direction)


class _End:
    """One side's view of the link (client.transfer.driver.FrameLink)."""

    headroom = 0

    def __init__(self, link: LossyLink, towards: str) -> None:
        self.link = link
        self.towards = towards

    def frame_chunk(self, frame: bytearray, ordinal: int) -> None:
        return None  # no header: the queue is the transfer's own

    async def send_chunk(self, frame: bytearray) -> None:
        await self.link.put(self.towards, frame)

    async def send_control(self, data: bytes) -> None:
        await self.link.put(self.towards, data)

    async def ack(self, seqs: list[int]) -> None:
        self.link.acked.extend(seqs)


class Seen:
    """An observer that keeps every event and may act on each batch."""

    def __init__(self, on_events: Callable[[list[Event]], None] | None = None) -> None:
        self.seen: list[Event] = []
        self.on_events = on_events

    def events(self, events: list[Event]) -> None:
        self.seen.extend(events)
        if self.on_events is not None:
            self.on_events(events)

    def progress(self) -> None:
        return None


def _drivers(pair: Pair, link: LossyLink, observer: Seen) -> tuple[SenderDriver, ReceiverDriver]:
    sender = SenderDriver(pair.sender, link.end("r"), link.to_sender, observer,
                          quiet_s=QUICK_S, quiet_max_s=QUICK_S)
    receiver = ReceiverDriver(pair.receiver, link.end("s"), link.to_receiver, observer,
                              nudge_s=QUICK_S, nudge_max_s=QUICK_S)
    return sender, receiver


async def _run_both(sender: SenderDriver,
                    receiver: ReceiverDriver) -> tuple[SenderStatus, ReceiverStatus]:
    """Both drivers; after the receiver's end it answers late frames as the messenger does
    (its final ack may be lost) until the sender is done too."""
    sending = asyncio.ensure_future(sender.run())
    status = await receiver.run()
    while not sending.done():
        try:
            frame = await asyncio.wait_for(receiver.incoming.get(), QUICK_S)
        except TimeoutError:
            continue
        if frame is None:
            break
        await receiver.answer_late(frame)
    return await sending, status


async def test_lossy_link_still_delivers_verified(tmp_path: Path) -> None:
    root = tmp_path / "src" / "album"
    for index, size in enumerate([3 * 1024 * 1024 + 3, 70_000, 0, 16_384]):
        write_seeded_file(root / f"t{index}.flac", size, seed=index)
    pair = make_pair([root], tmp_path / "dl", chunk_size=16_384, window=8)
    assert summarise(pair.manifest).title == "album/ (4 files, 3.1 MiB)"
    link = LossyLink(every_to_receiver=37, every_to_sender=41)
    observer = Seen()
    statuses = await asyncio.wait_for(_run_both(*_drivers(pair, link, observer)), timeout=60)
    assert statuses == (SenderStatus.COMPLETE, ReceiverStatus.COMPLETE)
    assert link.dropped > 0
    for index, source in enumerate(pair.sources):
        assert sha256_file(pair.receiver.landed()[index]) == sha256_file(source)
    assert any(isinstance(e, ChunkRefused) for e in observer.seen)  # gaps noticed, recovered
    assert link.acked  # every processed frame is acknowledged to the link


async def test_cancel_by_receiver_ends_both_drivers(tmp_path: Path) -> None:
    source = tmp_path / "src" / "big.bin"
    write_seeded_file(source, 2 * 1024 * 1024, seed=5)
    pair = make_pair([source], tmp_path / "dl", chunk_size=16_384, window=4)
    link = LossyLink()

    def cancel_midway(_events: list[Event]) -> None:
        if pair.receiver.position[1] >= 20 and pair.receiver.status is ReceiverStatus.RECEIVING:
            pair.receiver.cancel("disk full")

    statuses = await asyncio.wait_for(
        _run_both(*_drivers(pair, link, Seen(cancel_midway))), timeout=60)
    assert statuses == (SenderStatus.CANCELLED, ReceiverStatus.CANCELLED)
    assert not list((tmp_path / "dl").rglob("*.part"))


async def test_connection_drop_returns_and_a_new_connection_resumes(tmp_path: Path) -> None:
    source = tmp_path / "src" / "f.bin"
    write_seeded_file(source, 1024 * 1024, seed=6)
    pair = make_pair([source], tmp_path / "dl", chunk_size=16_384, window=4)
    link = LossyLink()
    dropped = False

    def drop_midway(_events: list[Event]) -> None:
        nonlocal dropped
        if pair.receiver.position[1] >= 30 and not dropped:
            dropped = True
            link.to_sender.put_nowait(None)  # the connection drops mid-transfer
            link.to_receiver.put_nowait(None)

    sender, receiver = _drivers(pair, link, Seen(drop_midway))
    first = await asyncio.wait_for(asyncio.gather(sender.run(), receiver.run()), timeout=60)
    assert first == [SenderStatus.SENDING, ReceiverStatus.RECEIVING]
    fresh = LossyLink()
    pair.receiver.request_resume()  # what the messenger does on a new connection
    second = await asyncio.wait_for(_run_both(*_drivers(pair, fresh, Seen())), timeout=60)
    assert second == (SenderStatus.COMPLETE, ReceiverStatus.COMPLETE)
    assert sha256_file(pair.receiver.landed()[0]) == sha256_file(source)
