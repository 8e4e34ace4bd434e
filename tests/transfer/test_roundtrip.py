"""Round trips through the sender and receiver state machines, on disk, no sockets."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import pytest

from client.transfer import (
    FileDelivered,
    FileLanded,
    ProgressUpdate,
    ReceiverStatus,
    SenderStatus,
    TransferComplete,
)
from client.transfer.stream import ChunkSealer

from .helpers import make_pair, pump, sha256_file, write_seeded_file

MiB = 1 << 20


def _round_trip_one_file(tmp_path: Path, size: int, chunk_size: int) -> None:
    source = tmp_path / "src" / "big.bin"
    try:
        _check_round_trip(tmp_path, source, size, chunk_size)
    finally:  # pytest keeps recent tmp dirs: do not leave hundreds of MiB behind
        for path in (source, tmp_path / "downloads" / "big.bin"):
            path.unlink(missing_ok=True)


def _check_round_trip(tmp_path: Path, source: Path, size: int, chunk_size: int) -> None:
    digest = write_seeded_file(source, size, seed=7)
    pair = make_pair([source], tmp_path / "downloads", chunk_size=chunk_size)
    events = pump(pair.sender, pair.receiver)
    assert pair.sender.status is SenderStatus.COMPLETE
    assert pair.receiver.status is ReceiverStatus.COMPLETE
    landed = tmp_path / "downloads" / "big.bin"
    assert landed.stat().st_size == size
    assert sha256_file(landed) == digest
    assert [e for e in events if isinstance(e, FileLanded)] == [
        FileLanded(0, landed, renamed=False)]
    assert any(isinstance(e, TransferComplete) for e in events)
    assert FileDelivered(0) in events
    final = [e for e in events if isinstance(e, ProgressUpdate)][-1].progress
    assert final.done_bytes == size and final.fraction == 1.0
    # Nothing partial is left behind.
    assert not list((tmp_path / "downloads").rglob("*.part"))


def test_small_file_round_trip(tmp_path: Path) -> None:
    _round_trip_one_file(tmp_path, 5 * MiB + 123, chunk_size=256 * 1024)


@pytest.mark.slow
def test_300_mib_file_round_trip(tmp_path: Path) -> None:
    _round_trip_one_file(tmp_path, 300 * MiB + 17, chunk_size=1 * MiB)


def test_exact_multiple_and_empty_files(tmp_path: Path) -> None:
    a = tmp_path / "src" / "exact.bin"
    write_seeded_file(a, 4 * 65536, seed=1)
    empty = tmp_path / "src" / "empty"
    empty.write_bytes(b"")
    one = tmp_path / "src" / "one"
    one.write_bytes(b"x")
    pair = make_pair([a, empty, one], tmp_path / "dl")
    pump(pair.sender, pair.receiver)
    assert pair.receiver.status is ReceiverStatus.COMPLETE
    assert (tmp_path / "dl" / "exact.bin").read_bytes() == a.read_bytes()
    assert (tmp_path / "dl" / "empty").read_bytes() == b""
    assert (tmp_path / "dl" / "one").read_bytes() == b"x"


def test_directory_tree_round_trip(tmp_path: Path) -> None:
    root = tmp_path / "src" / "photos"
    expected = {}
    layout = {
        "a.jpg": 200_000, "b/c.jpg": 70_000, "b/d/e.raw": 1_000_001, "b/d/empty": 0,
        "f g h.txt": 10, "ünï/çødé.txt": 3000,
    }
    for seed, (relative, size) in enumerate(sorted(layout.items())):
        expected[relative] = write_seeded_file(root / relative, size, seed)
    (root / "emptydir").mkdir()
    pair = make_pair([root], tmp_path / "dl")
    pump(pair.sender, pair.receiver)
    assert pair.receiver.status is ReceiverStatus.COMPLETE
    landed_root = tmp_path / "dl" / "photos"
    got = {
        p.relative_to(landed_root).as_posix(): sha256_file(p)
        for p in landed_root.rglob("*") if p.is_file()
    }
    assert got == expected


def test_directory_never_merges_into_existing_folder(tmp_path: Path) -> None:
    root = tmp_path / "src" / "docs"
    write_seeded_file(root / "x.txt", 100, seed=3)
    downloads = tmp_path / "dl"
    (downloads / "docs").mkdir(parents=True)
    (downloads / "docs" / "x.txt").write_bytes(b"mine")
    pair = make_pair([root], downloads)
    events = pump(pair.sender, pair.receiver)
    assert (downloads / "docs" / "x.txt").read_bytes() == b"mine"
    assert (downloads / "docs (1)" / "x.txt").read_bytes() == (root / "x.txt").read_bytes()
    landed = [e for e in events if isinstance(e, FileLanded)]
    assert landed[0].renamed is True


def test_existing_file_is_not_overwritten(tmp_path: Path) -> None:
    source = tmp_path / "src" / "report.pdf"
    write_seeded_file(source, 1000, seed=4)
    downloads = tmp_path / "dl"
    downloads.mkdir()
    (downloads / "report.pdf").write_bytes(b"keep me")
    (downloads / "report (1).pdf").write_bytes(b"keep me too")
    pair = make_pair([source], downloads)
    pump(pair.sender, pair.receiver)
    assert (downloads / "report.pdf").read_bytes() == b"keep me"
    assert (downloads / "report (1).pdf").read_bytes() == b"keep me too"
    assert (downloads / "report (2).pdf").read_bytes() == source.read_bytes()


def test_peak_memory_of_the_core_is_bounded(tmp_path: Path) -> None:
    """Python allocations stay a few chunks deep whatever the file size.

    64 MiB through 256 KiB chunks with a window of 8: the bound is the window of sealed frames
    (8 x 256 KiB), the receiver's chunk buffer and a read block -- far below the file size.
    """
    chunk = 256 * 1024
    size = 64 * MiB
    source = tmp_path / "src" / "mem.bin"
    write_seeded_file(source, size, seed=11)
    pair = make_pair([source], tmp_path / "dl", chunk_size=chunk, window=8)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        pump(pair.sender, pair.receiver)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert pair.receiver.status is ReceiverStatus.COMPLETE
    source.unlink()
    pair.receiver.landed()[0].unlink()
    bound = (8 + 4) * chunk + 2 * MiB  # window frames + buffers + a 1 MiB hashing block
    assert peak - before < bound, f"peak {peak - before} bytes exceeds {bound}"
    assert peak - before < size // 16


def test_receiver_acks_every_stored_chunk_and_window_limits_in_flight(tmp_path: Path) -> None:
    source = tmp_path / "src" / "w.bin"
    write_seeded_file(source, 40 * 4096, seed=5)
    pair = make_pair([source], tmp_path / "dl", chunk_size=4096, window=3)
    for frame in pair.receiver.data_to_send():
        pair.sender.receive_control(frame)
    frames = pair.sender.frames()
    assert len(frames) == 3 and pair.sender.in_flight == 3
    assert pair.sender.next_frame() is None
    pair.receiver.receive_frame(frames[0])
    for frame in pair.receiver.data_to_send():
        pair.sender.receive_control(frame)
    assert pair.sender.in_flight == 2
    assert len(pair.sender.frames()) == 1
    assert os.path.getsize(pair.receiver.store.part_path(0)) == 4096


def test_frames_sealed_with_headroom_are_the_same_frames(tmp_path: Path) -> None:
    """The sender leaves room for the relay's header in front; what follows is unchanged."""
    source = tmp_path / "src" / "h.bin"
    write_seeded_file(source, 5 * 4096 + 17, seed=9)
    pair = make_pair([source], tmp_path / "dl", chunk_size=4096)
    sealer = ChunkSealer(pair.manifest.transfer_id, 0, pair.receiver.keys.file_key(0))
    chunk = os.urandom(4096)
    assert sealer.seal(3, chunk, False, headroom=32)[32:] == sealer.seal(3, chunk, False)
    for frame in pair.receiver.data_to_send():
        pair.sender.receive_control(frame)
    while (frame := pair.sender.next_frame(headroom=32)) is not None:
        assert bytes(frame[:32]) == bytes(32)
        pair.receiver.receive_frame(memoryview(frame)[32:])  # a view, as the relay link gives
    for control in pair.receiver.data_to_send():
        pair.sender.receive_control(control)
    assert pair.receiver.status is ReceiverStatus.COMPLETE
    assert sha256_file(tmp_path / "dl" / "h.bin") == sha256_file(source)
