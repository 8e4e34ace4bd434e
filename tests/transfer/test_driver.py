"""The asyncio driver over an in-memory link that loses frames: recovery without help."""

from __future__ import annotations

import asyncio
from pathlib import Path

from client.transfer import (
    ChunkRefused,
    Event,
    ReceiverStatus,
    SenderStatus,
    summarise,
)
from client.transfer.driver import FrameQueue, run_receiver, run_sender

from .helpers import make_pair, sha256_file, write_seeded_file


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

    async def _put(self, direction: str, queue: FrameQueue, frame: bytes) -> None:
        self.count[direction] += 1
        every = self.every[direction]
        if every and self.count[direction] % every == 0:
            self.dropped += 1
        else:
            await queue.put(frame)

    async def sender_send(self, frame: bytes) -> None:
        await self._put("r", self.to_receiver, frame)

    async def receiver_send(self, frame: bytes) -> None:
        await self._put("s", self.to_sender, frame)


async def test_lossy_link_still_delivers_verified(tmp_path: Path) -> None:
    root = tmp_path / "src" / "album"
    for index, size in enumerate([3 * 1024 * 1024 + 3, 70_000, 0, 16_384]):
        write_seeded_file(root / f"t{index}.flac", size, seed=index)
    pair = make_pair([root], tmp_path / "dl", chunk_size=16_384, window=8)
    assert summarise(pair.manifest).title == "album/ (4 files, 3.1 MiB)"
    link = LossyLink(every_to_receiver=37, every_to_sender=41)
    seen: list[Event] = []
    statuses = await asyncio.wait_for(asyncio.gather(
        run_sender(pair.sender, link.sender_send, link.to_sender, on_event=seen.append,
                   retransmit_seconds=0.05),
        run_receiver(pair.receiver, link.receiver_send, link.to_receiver,
                     on_event=seen.append, idle_seconds=0.05, linger_seconds=0.5),
    ), timeout=60)
    assert statuses == [SenderStatus.COMPLETE, ReceiverStatus.COMPLETE]
    assert link.dropped > 0
    for index, entry in enumerate(pair.manifest.files):
        assert sha256_file(pair.receiver.landed()[index]) == entry.sha256
    assert any(isinstance(e, ChunkRefused) for e in seen)  # gaps were noticed and recovered


async def test_cancel_by_receiver_ends_both_drivers(tmp_path: Path) -> None:
    source = tmp_path / "src" / "big.bin"
    write_seeded_file(source, 2 * 1024 * 1024, seed=5)
    pair = make_pair([source], tmp_path / "dl", chunk_size=16_384, window=4)
    link = LossyLink()

    def cancel_midway(event: Event) -> None:
        if pair.receiver.position[1] == 20 and pair.receiver.status is ReceiverStatus.RECEIVING:
            pair.receiver.cancel("disk full")

    statuses = await asyncio.wait_for(asyncio.gather(
        run_sender(pair.sender, link.sender_send, link.to_sender, retransmit_seconds=0.05),
        run_receiver(pair.receiver, link.receiver_send, link.to_receiver,
                     on_event=cancel_midway, idle_seconds=0.05),
    ), timeout=60)
    assert statuses == [SenderStatus.CANCELLED, ReceiverStatus.CANCELLED]
    assert not list((tmp_path / "dl").rglob("*.part"))


async def test_connection_drop_returns_and_a_new_connection_resumes(tmp_path: Path) -> None:
    source = tmp_path / "src" / "f.bin"
    write_seeded_file(source, 1024 * 1024, seed=6)
    pair = make_pair([source], tmp_path / "dl", chunk_size=16_384, window=4)
    link = LossyLink()
    drops = 0

    async def receiver_send(frame: bytes) -> None:
        nonlocal drops
        await link.receiver_send(frame)
        if pair.receiver.position[1] >= 30 and drops == 0:
            drops = 1
            await link.to_sender.put(None)  # the connection drops mid-transfer
            await link.to_receiver.put(None)

    first = await asyncio.wait_for(asyncio.gather(
        run_sender(pair.sender, link.sender_send, link.to_sender, retransmit_seconds=0.05),
        run_receiver(pair.receiver, receiver_send, link.to_receiver, idle_seconds=0.05),
    ), timeout=60)
    assert first == [SenderStatus.SENDING, ReceiverStatus.RECEIVING]
    fresh = LossyLink()
    pair.receiver.request_resume()  # what the I/O layer does on a new connection
    second = await asyncio.wait_for(asyncio.gather(
        run_sender(pair.sender, fresh.sender_send, fresh.to_sender, retransmit_seconds=0.05),
        run_receiver(pair.receiver, fresh.receiver_send, fresh.to_receiver, idle_seconds=0.05,
                     linger_seconds=0.2),
    ), timeout=60)
    assert second == [SenderStatus.COMPLETE, ReceiverStatus.COMPLETE]
    assert sha256_file(pair.receiver.landed()[0]) == sha256_file(source)
