"""Resume after interruptions at random points: sender and receiver restarted from disk."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from client.transfer import (
    FileReader,
    ReceiverStatus,
    SenderStatus,
    TransferReceiver,
    TransferSender,
)

from .helpers import Pair, Secrets, deliver_control, make_pair, pump, sha256_file, write_seeded_file

CHUNK = 4096


def _sources(tmp_path: Path) -> list[Path]:
    big = tmp_path / "src" / "big.bin"
    write_seeded_file(big, 150 * CHUNK + 77, seed=1)
    tree = tmp_path / "src" / "tree"
    for index, size in enumerate([0, 1, CHUNK, 3 * CHUNK - 1, 20 * CHUNK]):
        write_seeded_file(tree / f"d{index % 2}" / f"f{index}", size, seed=10 + index)
    return [big, tree]


def _restart_receiver(pair: Pair) -> TransferReceiver:
    pair.receiver.close()
    (tid,) = TransferReceiver.pending(pair.downloads)
    manifest = TransferReceiver.stored_manifest(pair.downloads, tid)
    return TransferReceiver.resume(pair.secrets.keys(manifest), pair.downloads)


def _restart_sender(pair: Pair, snapshot: dict) -> TransferSender:
    manifest = TransferSender.manifest_from_snapshot(snapshot)
    return TransferSender.restore(snapshot, pair.secrets.keys(manifest),
                                  FileReader(pair.sources), window_chunks=8)


def _run_with_crashes(pair: Pair, rng: random.Random, crashes: int) -> list[str]:
    """Move frames, losing some in transit, and crash one side or both ``crashes`` times."""
    log = []
    deliver_control(pair.sender, pair.receiver)
    snapshot = pair.sender.snapshot()
    for _ in range(crashes):
        for _ in range(rng.randint(1, 12)):
            frames = pair.sender.frames()
            if not frames:
                break
            for frame in frames:
                pair.receiver.receive_frame(frame)
            if rng.random() < 0.8:  # sometimes the acks are lost with the connection
                deliver_control(pair.sender, pair.receiver)
            else:
                pair.receiver.data_to_send()
            if rng.random() < 0.5:
                snapshot = pair.sender.snapshot()  # persisted now and then, so often stale
        # The crash: frames in flight are lost; then restart one side or both.
        in_flight = pair.sender.frames()
        for frame in in_flight[: rng.randint(0, len(in_flight))]:
            pair.receiver.receive_frame(frame)
        pair.receiver.data_to_send()
        who = rng.choice(["receiver", "sender", "both"])
        log.append(f"{who}@{pair.receiver.position}")
        if who in ("receiver", "both"):
            pair.receiver = _restart_receiver(pair)
        if who in ("sender", "both"):
            pair.sender = _restart_sender(pair, snapshot)
        else:
            pair.sender.retransmit()  # reconnect: the timeout path
        deliver_control(pair.sender, pair.receiver)
        if pair.receiver.status is ReceiverStatus.COMPLETE:
            break
    pump(pair.sender, pair.receiver)
    return log


@pytest.mark.parametrize("seed", range(6))
def test_resume_after_random_crashes(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    sources = _sources(tmp_path)
    pair = make_pair(sources, tmp_path / "dl", chunk_size=CHUNK, window=8)
    log = _run_with_crashes(pair, rng, crashes=6)
    assert pair.receiver.status is ReceiverStatus.COMPLETE, log
    assert pair.sender.status is SenderStatus.COMPLETE, log
    landed = pair.receiver.landed()
    assert len(landed) == len(pair.manifest.files)
    for index, source in enumerate(pair.sources):
        assert sha256_file(landed[index]) == sha256_file(source)
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == [
        ".qsecret-partial", "big.bin", "tree"]
    assert not list((tmp_path / "dl").rglob("*.part"))


def test_part_file_longer_than_recorded_is_truncated(tmp_path: Path) -> None:
    """A crash after writing a chunk but before recording it: the extra bytes are dropped."""
    pair = make_pair(_sources(tmp_path)[:1], tmp_path / "dl", chunk_size=CHUNK)
    deliver_control(pair.sender, pair.receiver)
    for frame in pair.sender.frames()[:5]:
        pair.receiver.receive_frame(frame)
    pair.receiver.data_to_send()  # the ack of chunks 0..4: their position is on record
    part = pair.receiver.store.part_path(0)
    pair.receiver.close()
    with open(part, "ab") as handle:
        handle.write(os.urandom(CHUNK + 100))
    pair.receiver = _restart_receiver(pair)
    assert pair.receiver.position == (0, 5)
    assert part.stat().st_size == 5 * CHUNK
    pair.sender.retransmit()
    pump(pair.sender, pair.receiver)
    assert sha256_file(pair.receiver.landed()[0]) == sha256_file(pair.sources[0])


def test_crash_before_the_ack_resumes_from_the_last_acknowledged_chunk(tmp_path: Path) -> None:
    """Chunks written but never acknowledged are not on record: they come again."""
    pair = make_pair(_sources(tmp_path)[:1], tmp_path / "dl", chunk_size=CHUNK)
    deliver_control(pair.sender, pair.receiver)
    frames = pair.sender.frames()
    for frame in frames[:2]:
        pair.receiver.receive_frame(frame)
    deliver_control(pair.sender, pair.receiver)  # ack of chunks 0..1
    for frame in frames[2:6]:
        pair.receiver.receive_frame(frame)  # written, but the process dies before acking
    pair.receiver.close()
    pair.receiver = _restart_receiver(pair)
    assert pair.receiver.position == (0, 2)
    assert pair.receiver.store.part_path(0).stat().st_size == 2 * CHUNK
    pump(pair.sender, pair.receiver)
    assert sha256_file(pair.receiver.landed()[0]) == sha256_file(pair.sources[0])


def test_part_file_shorter_than_recorded_resumes_from_whole_chunks(tmp_path: Path) -> None:
    """After a power loss the data may lag the progress row: resume from what is on disk."""
    pair = make_pair(_sources(tmp_path)[:1], tmp_path / "dl", chunk_size=CHUNK)
    deliver_control(pair.sender, pair.receiver)
    for frame in pair.sender.frames()[:6]:
        pair.receiver.receive_frame(frame)
    pair.receiver.data_to_send()  # chunks 0..5 acknowledged: on record
    part = pair.receiver.store.part_path(0)
    pair.receiver.close()
    os.truncate(part, 3 * CHUNK + 10)
    pair.receiver = _restart_receiver(pair)
    assert pair.receiver.position == (0, 3)
    deliver_control(pair.sender, pair.receiver)
    assert pair.sender.position == (0, 3)
    pump(pair.sender, pair.receiver)
    assert sha256_file(pair.receiver.landed()[0]) == sha256_file(pair.sources[0])


def test_completed_receiver_tells_a_restarted_sender(tmp_path: Path) -> None:
    pair = make_pair(_sources(tmp_path)[:1], tmp_path / "dl", chunk_size=CHUNK)
    stale = pair.sender.snapshot()
    pump(pair.sender, pair.receiver)
    assert pair.receiver.status is ReceiverStatus.COMPLETE
    pair.receiver = _restart_receiver(pair)
    pair.sender = _restart_sender(pair, stale)  # still "offered": lost everything
    deliver_control(pair.sender, pair.receiver)
    assert pair.sender.status is SenderStatus.COMPLETE
    pair.receiver.forget()
    assert TransferReceiver.pending(pair.downloads) == []


def test_cancel_from_either_side(tmp_path: Path) -> None:
    from client.transfer import Cancelled

    pair = make_pair(_sources(tmp_path), tmp_path / "dl", chunk_size=CHUNK)
    deliver_control(pair.sender, pair.receiver)
    for frame in pair.sender.frames():
        pair.receiver.receive_frame(frame)
    assert pair.sender.cancel("sender stops") == [Cancelled("sender stops", by_peer=False)]
    (frame,) = pair.sender.data_to_send()
    assert pair.receiver.receive_frame(frame) == [Cancelled("sender stops", by_peer=True)]
    assert pair.receiver.status is ReceiverStatus.CANCELLED
    assert not list((tmp_path / "dl").rglob("*.part"))
    assert not (tmp_path / "dl" / "tree").exists()  # reserved folder removed while empty

    other = make_pair(_sources(tmp_path)[:1], tmp_path / "dl2", chunk_size=CHUNK)
    deliver_control(other.sender, other.receiver)
    other.receiver.cancel("no space")
    events = deliver_control(other.sender, other.receiver)
    assert events == [Cancelled("no space", by_peer=True)]
    assert other.sender.status is SenderStatus.CANCELLED
    assert other.sender.next_frame() is None


def test_decline_before_accept() -> None:
    from client.transfer import Declined, FileEntry, Manifest

    manifest = Manifest(os.urandom(16), CHUNK, (FileEntry("a", 1),), ("k",))
    sender = TransferSender(Secrets.fresh().keys(manifest), lambda i, o, n: b"x")
    assert sender.next_frame() is None  # nothing leaves before acceptance
    assert sender.declined("not now") == [Declined("not now")]
    assert sender.status is SenderStatus.DECLINED
    assert sender.next_frame() is None
