"""Portable positioned I/O, and chunk/control frames riding in the relay's binary frames."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from client.transfer import ReceiverStatus, frame_kind
from client.transfer.fileio import open_read, open_write, read_at, write_at
from client.transfer.stream import KIND_CHUNK, KIND_CONTROL
from relay.wire import KIND_FILE_CHUNK, MAX_BINARY_PAYLOAD, encode_binary, parse_binary

from .helpers import make_pair, sha256_file, write_seeded_file


@pytest.mark.parametrize("positioned", [True, False])
def test_read_at_write_at(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                          positioned: bool) -> None:
    if not positioned:  # the code path for platforms without pread/pwrite (Windows)
        monkeypatch.delattr(os, "pread", raising=False)
        monkeypatch.delattr(os, "pwrite", raising=False)
    path = tmp_path / "f"
    fd = open_write(path)
    try:
        write_at(fd, b"world", 6)
        write_at(fd, memoryview(b"hello "), 0)
    finally:
        os.close(fd)
    fd = open_read(path)
    try:
        assert read_at(fd, 5, 6) == b"world"
        assert read_at(fd, 100, 0) == b"hello world"
        assert read_at(fd, 10, 50) == b""
    finally:
        os.close(fd)


def test_frames_ride_in_relay_binary_frames(tmp_path: Path) -> None:
    """Default-size chunks fit the relay's bulk payload; both directions survive the header."""
    source = tmp_path / "src" / "f.bin"
    write_seeded_file(source, 3 * 1024 * 1024 + 1, seed=3)
    pair = make_pair([source], tmp_path / "dl", chunk_size=None)
    stream = os.urandom(16)

    def relay(frame: bytes | bytearray, seq: int) -> bytes:
        wire = encode_binary(KIND_FILE_CHUNK, stream, seq, bytes(frame))
        parsed = parse_binary(wire)
        assert parsed.stream == stream and parsed.seq == seq
        return parsed.payload

    seq = 0
    for frame in pair.receiver.data_to_send():
        assert frame_kind(frame) == KIND_CONTROL
        pair.sender.receive_control(relay(frame, seq := seq + 1))
    for _ in range(10_000):
        frame = pair.sender.next_frame()
        if frame is None:
            break
        assert frame_kind(frame) == KIND_CHUNK and len(frame) <= MAX_BINARY_PAYLOAD
        pair.receiver.receive_frame(relay(frame, seq := seq + 1))
        for control in pair.receiver.data_to_send():
            pair.sender.receive_control(relay(control, seq := seq + 1))
    assert pair.receiver.status is ReceiverStatus.COMPLETE
    assert sha256_file(pair.receiver.landed()[0]) == sha256_file(source)
