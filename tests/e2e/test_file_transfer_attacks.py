"""A hostile sender against a real receiver: the sender is alice's real messenger in this
process (so the test can misbehave on the wire), the relay, KME pair and bob's
``qsecret receive-files`` are real processes."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from client.config import load_config
from client.messenger.api import TransferState
from client.messenger.profile import open_profile
from client.messenger.service import MessengerService
from client.transfer import build_manifest
from client.transfer.manifest import LEGACY_MANIFEST_VERSION
from relay.wire import parse_binary
from tests.e2e.stack import PASSPHRASE, Stack
from tests.e2e.test_file_transfer import Cli, _receiver, _sha, _write

pytestmark = pytest.mark.slow
MiB = 1 << 20


@pytest.fixture
async def alice(stack: Stack) -> AsyncIterator[MessengerService]:
    config = load_config(stack.profile("alice"), relay_url=stack.relay_url)
    messenger = await asyncio.to_thread(open_profile, config, PASSPHRASE)
    await messenger.start()
    await messenger.wait_online(15)
    try:
        yield messenger
    finally:
        await messenger.stop()


async def _until_finished(messenger: MessengerService, transfer_id: str,
                          timeout: float = 120.0) -> TransferState:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        view = next(v for v in messenger.transfers() if v.transfer_id == transfer_id)
        if view.state.finished:
            return view.state
        await asyncio.sleep(0.2)
    raise AssertionError(f"transfer {transfer_id} did not finish in {timeout:.0f}s")


async def _exit(receiver: Cli, timeout: float = 60.0) -> int:
    return await asyncio.to_thread(receiver.exit_code, timeout)


async def _send_through(alice: MessengerService, send_binary: object, source: Path,
                        receiver: Cli) -> None:
    """Send ``source`` to bob with alice's binary frames going out through ``send_binary``
    (the wire as an attacker in the relay's position shapes it); both ends must finish."""
    genuine = alice.relay.send_binary

    async def send_frame(frame: bytes | bytearray, headroom: int = 0) -> None:
        """Chunks leave as whole encoded frames: hand them to ``send_binary`` parsed."""
        parsed = parse_binary(bytes(frame[headroom:]))
        await send_binary(parsed.kind, parsed.stream, parsed.seq,  # type: ignore[operator]
                          bytes(parsed.payload))

    alice.relay.send_binary = send_binary  # type: ignore[method-assign, assignment]
    alice.relay.send_frame = send_frame  # type: ignore[method-assign]
    try:
        view = await alice.send_files("bob", [str(source)])
        assert await _until_finished(alice, view.transfer_id) is TransferState.COMPLETE
        assert await _exit(receiver) == 0, receiver._tail()
    finally:
        alice.relay.send_binary = genuine  # type: ignore[method-assign]
        del alice.relay.send_frame  # the class's method again
        receiver.stop()


HOSTILE_NAMES = (
    "../../escaped.txt",
    "/etc/qsecret-absolute.conf",
    "CON",
    "sub/../../../deep-escape.sh",
    "C:\\Windows\\system.ini",
    ".qsecret-partial/inside-state.bin",
    "bidi\u202egnp.exe",
)


async def test_hostile_names_land_inside_the_downloads_folder(
        stack: Stack, alice: MessengerService) -> None:
    sources = [_write(stack.root / "src-hostile" / f"f{i}.bin", 10_000 + i)
               for i in range(len(HOSTILE_NAMES))]
    downloads = stack.root / "dl-hostile"
    receiver = _receiver(stack, downloads, "--count", "1")
    try:
        built = await asyncio.to_thread(build_manifest, sources)
        files = tuple(dataclasses.replace(entry, path=name)
                      for entry, name in zip(built.manifest.files, HOSTILE_NAMES, strict=True))
        hostile = dataclasses.replace(built, manifest=dataclasses.replace(built.manifest,
                                                                          files=files))
        view = await alice.files.send_built("bob", hostile)
        assert await _until_finished(alice, view.transfer_id) is TransferState.COMPLETE
        assert await _exit(receiver) == 0, receiver._tail()
    finally:
        receiver.stop()
    complete = receiver.wait_event(lambda e: e.get("event") == "complete", 5, "complete")
    landed = [Path(p) for p in complete["paths"]]
    assert len(landed) == len(HOSTILE_NAMES)
    root = downloads.resolve()
    for path, source in zip(landed, sources, strict=True):
        assert path.resolve().is_relative_to(root), f"{path} escaped {root}"
        assert _sha(path) == _sha(source)
    names = {p.relative_to(root).as_posix() for p in landed}
    assert "escaped.txt" in names and "etc/qsecret-absolute.conf" in names
    assert "_CON" in names  # a device name is defused, visibly
    assert not any(part == ".." for name in names for part in name.split("/"))
    assert not (stack.root / "escaped.txt").exists()
    assert not (stack.root / "deep-escape.sh").exists()
    assert all("\u202e" not in name for name in names)


async def test_tampered_truncated_reordered_and_replayed_chunks_are_refused(
        stack: Stack, alice: MessengerService) -> None:
    source = _write(stack.root / "src-tamper" / "ledger.db", 3 * MiB + 777)
    downloads = stack.root / "dl-tamper"
    receiver = _receiver(stack, downloads, "--count", "1")
    genuine_send = alice.relay.send_binary
    sent: dict[int, bytes] = {}
    injected: list[str] = []

    async def hostile_send(kind: int, stream: bytes, seq: int, payload: bytes) -> None:
        """The wire as an attacker with the relay's position would shape it."""
        if seq == 2 and "tamper" not in injected:
            flipped = bytearray(payload)
            flipped[len(flipped) // 2] ^= 0x01
            injected.append("tamper")
            await genuine_send(kind, stream, seq, bytes(flipped))
        if seq == 4 and "truncate" not in injected:
            injected.append("truncate")
            await genuine_send(kind, stream, seq, payload[: len(payload) // 2])
        if seq == 6 and "replay" not in injected and 1 in sent:
            injected.append("replay")
            await genuine_send(kind, stream, 1, sent[1])
        if seq < (1 << 40):
            sent[seq] = payload
        await genuine_send(kind, stream, seq, payload)

    await _send_through(alice, hostile_send, source, receiver)
    assert {"tamper", "truncate", "replay"} <= set(injected)
    assert _sha(downloads / "ledger.db") == _sha(source)
    refusals = [line for line in receiver.lines if "refused a chunk" in line]
    assert len(refusals) >= 3, receiver._tail()
    text = "\n".join(refusals).lower()
    assert "authentication" in text or "tamper" in text
    assert "replay" in text


async def test_reordered_chunks_are_refused_and_resent_in_order(
        stack: Stack, alice: MessengerService) -> None:
    source = _write(stack.root / "src-order" / "movie.mkv", 2 * MiB + 5)
    downloads = stack.root / "dl-order"
    receiver = _receiver(stack, downloads, "--count", "1")
    genuine_send = alice.relay.send_binary
    held: list[tuple[int, bytes, int, bytes]] = []

    async def swapping_send(kind: int, stream: bytes, seq: int, payload: bytes) -> None:
        if seq == 3 and not held:
            held.append((kind, stream, seq, payload))  # hold chunk 3 back ...
            return
        await genuine_send(kind, stream, seq, payload)
        if seq == 4 and held:
            await genuine_send(*held[0])  # ... and send it after chunk 4

    await _send_through(alice, swapping_send, source, receiver)
    assert held, "the test did not get to reorder anything"
    assert _sha(downloads / "movie.mkv") == _sha(source)
    assert any("refused a chunk: out-of-order" in line for line in receiver.lines), \
        receiver._tail()


async def test_a_lost_final_ack_is_recovered(stack: Stack, alice: MessengerService) -> None:
    """bob's last ack dies on the way (as with a relay crash at that moment): alice hears
    nothing, goes back to her last ack, and bob, already done, answers with it again."""
    config = dataclasses.replace(load_config(stack.profile("bob"), relay_url=stack.relay_url),
                                 auto_accept="all", downloads_dir=str(stack.root / "dl-lost"))
    bob = await asyncio.to_thread(open_profile, config, PASSPHRASE)
    await bob.start()
    await bob.wait_online(15)
    genuine_send = bob.relay.send_binary
    dropped: list[int] = []

    async def lossy_send(kind: int, stream: bytes, seq: int, payload: bytes) -> None:
        item = bob.files._transfers.get(stream)
        done = item is not None and item.receiver is not None and \
            item.receiver.status.value == "complete"
        if done and not dropped:
            dropped.append(seq)  # the final ack: lost
            return
        await genuine_send(kind, stream, seq, payload)

    bob.relay.send_binary = lossy_send  # type: ignore[method-assign]
    alice.files.sender_quiet_s = 1.0
    try:
        source = _write(stack.root / "src-lost" / "final.bin", MiB + 3)
        view = await alice.send_files("bob", [str(source)])
        assert await _until_finished(alice, view.transfer_id, 60) is TransferState.COMPLETE
        assert dropped, "the final ack was never sent, so it could not be lost"
        (landed,) = [v for v in bob.transfers() if v.transfer_id == view.transfer_id]
        assert landed.state is TransferState.COMPLETE
        assert _sha(Path(landed.paths[0])) == _sha(source)
    finally:
        await bob.stop()


async def test_a_finished_receivers_progress_folder_goes_after_a_while(
        stack: Stack, alice: MessengerService, monkeypatch: pytest.MonkeyPatch) -> None:
    from client.messenger import transfers
    from client.transfer.names import PARTIAL_DIR_NAME

    downloads = stack.root / "dl-tidy"
    config = dataclasses.replace(load_config(stack.profile("bob"), relay_url=stack.relay_url),
                                 auto_accept="all", downloads_dir=str(downloads))
    bob = await asyncio.to_thread(open_profile, config, PASSPHRASE)
    await bob.start()
    await bob.wait_online(15)
    try:
        source = _write(stack.root / "src-tidy" / "tidy.bin", 300_000)
        view = await alice.send_files("bob", [str(source)])
        assert await _until_finished(alice, view.transfer_id, 60) is TransferState.COMPLETE
        for _ in range(50):  # bob's side finishes a moment after alice hears the final ack
            if any(v.state.finished for v in bob.transfers() if v.transfer_id == view.transfer_id):
                break
            await asyncio.sleep(0.1)
    finally:
        await bob.stop()
    progress = downloads / PARTIAL_DIR_NAME / view.transfer_id
    assert progress.is_dir(), "kept at first, to answer a sender that missed the end"
    again = await asyncio.to_thread(open_profile, config, PASSPHRASE)
    await again.stop()
    assert progress.is_dir(), "still kept: not old yet"
    monkeypatch.setattr(transfers, "KEEP_FINISHED_PROGRESS_S", 0.0)
    later = await asyncio.to_thread(open_profile, config, PASSPHRASE)
    try:
        assert not progress.exists()
        (record,) = [v for v in later.transfers() if v.transfer_id == view.transfer_id]
        assert record.state is TransferState.COMPLETE and (downloads / "tidy.bin").exists()
    finally:
        await later.stop()


async def test_an_offer_from_an_older_qsecret_is_declined_with_update_qsecret(
        stack: Stack, alice: MessengerService) -> None:
    """alice plays a qsecret from before manifest version 2 (its offer lists each file's
    SHA-256): bob's side declines it with the reason, so alice sees "update qsecret" at
    once instead of a transfer that waits or fails half-way."""
    source = _write(stack.root / "src-old" / "old.bin", 5000)
    downloads = stack.root / "dl-old"
    receiver = _receiver(stack, downloads, "--count", "1", "--idle", "20")
    try:
        built = await asyncio.to_thread(build_manifest, [source])
        files = tuple(dataclasses.replace(entry, sha256=hashlib.sha256(source.read_bytes())
                                          .digest()) for entry in built.manifest.files)
        old = dataclasses.replace(built, manifest=dataclasses.replace(
            built.manifest, files=files, version=LEGACY_MANIFEST_VERSION))
        view = await alice.files.send_built("bob", old)
        assert await _until_finished(alice, view.transfer_id, 60) is TransferState.DECLINED
        final = next(v for v in alice.transfers() if v.transfer_id == view.transfer_id)
        assert "update qsecret" in final.detail, final
    finally:
        receiver.stop()
    assert not (downloads / "old.bin").exists()
