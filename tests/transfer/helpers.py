"""Shared helpers of the transfer tests: seeded files, key pairs, and a frame pump."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from client.transfer import (
    Event,
    FileReader,
    Manifest,
    TransferKeys,
    TransferReceiver,
    TransferSender,
    build_manifest,
    decode_message,
    encode_offer,
)

BLOCK = 1 << 20


def write_seeded_file(path: Path, size: int, seed: int) -> bytes:
    """Write ``size`` pseudo-random bytes (seeded, streamed in 1 MiB blocks); return SHA-256."""
    rng = np.random.default_rng(seed)
    digest = hashlib.sha256()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        left = size
        while left:
            block = rng.bytes(min(BLOCK, left))
            digest.update(block)
            handle.write(block)
            left -= len(block)
    return digest.digest()


def sha256_file(path: Path) -> bytes:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(BLOCK):
            digest.update(block)
    return digest.digest()


@dataclass
class Secrets:
    session: bytes
    qkd: bytes

    @classmethod
    def fresh(cls) -> Secrets:
        return cls(os.urandom(32), os.urandom(32))

    def keys(self, manifest: Manifest) -> TransferKeys:
        return TransferKeys(manifest, self.session, self.qkd)


@dataclass
class Pair:
    secrets: Secrets
    manifest: Manifest
    sources: tuple[Path, ...]
    downloads: Path
    sender: TransferSender
    receiver: TransferReceiver


def make_pair(paths: list[Path], downloads: Path, *, chunk_size: int | None = 64 * 1024,
              window: int = 8) -> Pair:
    """Build, offer (through the E2EE payload codec) and accept a transfer.

    ``chunk_size=None`` uses the library default.
    """
    built = (build_manifest(paths) if chunk_size is None
             else build_manifest(paths, chunk_size=chunk_size))
    manifest = built.manifest.with_qkd_key_ids(["qkd-key-1"])
    secrets = Secrets.fresh()
    offer = decode_message(encode_offer(manifest))
    assert offer.manifest is not None
    sender = TransferSender(secrets.keys(manifest), FileReader.for_manifest(built),
                            window_chunks=window)
    receiver = TransferReceiver.accept(secrets.keys(offer.manifest), downloads)
    return Pair(secrets, manifest, built.sources, downloads, sender, receiver)


def deliver_control(sender: TransferSender, receiver: TransferReceiver) -> list[Event]:
    events: list[Event] = []
    for frame in receiver.data_to_send():
        events.extend(sender.receive_control(frame))
    return events


def pump(sender: TransferSender, receiver: TransferReceiver, *,
         max_frames: int = 1_000_000) -> list[Event]:
    """Move frames both ways until nothing moves; bounded by ``max_frames``."""
    events = deliver_control(sender, receiver)
    moved = 0
    while moved < max_frames:
        frame = sender.next_frame()
        if frame is None:
            break
        moved += 1
        events.extend(receiver.receive_frame(frame))
        events.extend(deliver_control(sender, receiver))
    for frame in sender.data_to_send():
        events.extend(receiver.receive_frame(frame))
    return events
