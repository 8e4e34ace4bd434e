"""File transfer through real processes: relay, KME pair, ``qsecret send-file`` and
``qsecret receive-files`` as a user runs them, killed and restarted at awkward moments."""

from __future__ import annotations

import hashlib
import json
import os
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from client.processes import ServiceError, ServiceProcess
from tests.e2e.stack import PASSPHRASE, Stack

pytestmark = pytest.mark.slow
MiB = 1 << 20
Event = dict[str, Any]


# ------------------------------------------------------------------------------ helpers


def _write(path: Path, size: int) -> Path:
    """Random (incompressible) content, written a MiB at a time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        for start in range(0, size, MiB):
            out.write(os.urandom(min(MiB, size - start)))
    return path


def _sha(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): _sha(p) for p in sorted(root.rglob("*")) if p.is_file()}


class Cli(ServiceProcess):
    """A long-running ``qsecret`` command of one user, with its JSON lines."""

    def __init__(self, stack: Stack, handle: str, *args: str, name: str = "") -> None:
        super().__init__(name or f"{handle}-{args[0]}",
                         [*args, "--data", str(stack.profile(handle)),
                          "--relay", stack.relay_url],
                         log=stack.root / f"{handle}-{args[0]}.log",
                         env={"QSECRET_PASSPHRASE": PASSPHRASE, "QSECRET_LOG": "warning"})

    def events(self) -> list[Event]:
        out = []
        for line in list(self.lines):
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return out

    def wait_event(self, match: Callable[[Event], bool], timeout: float = 60.0,
                   what: str = "event") -> Event:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events():
                if match(event):
                    return event
            if not self.running:
                for event in self.events():  # output may have been pumped just now
                    if match(event):
                        return event
                raise ServiceError(f"{self.name} exited without {what}{self._tail()}")
            time.sleep(0.1)
        raise ServiceError(f"{self.name}: no {what} within {timeout:.0f}s{self._tail()}")

    def done_bytes(self) -> int:
        return max((e.get("done", 0) for e in self.events()), default=0)

    def exit_code(self, timeout: float = 120.0) -> int:
        assert self.process is not None
        code = self.process.wait(timeout)
        time.sleep(0.2)  # let the output pump finish
        return code


def _receiver(stack: Stack, downloads: Path, *extra: str) -> Cli:
    return Cli(stack, "bob", "receive-files", "--accept", "all", "--downloads", str(downloads),
               "--json", "--idle", "120", *extra).start()


def _sender(stack: Stack, *paths: Path, extra: tuple[str, ...] = ()) -> Cli:
    return Cli(stack, "alice", "send-file", "bob", *map(str, paths), "--json",
               *extra).start()


def _complete(event: Event) -> bool:
    return event.get("event") == "complete"


def _metric(stack: Stack, name: str) -> float:
    url = f"http://127.0.0.1:{stack.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"relay exports no metric {name}")


# -------------------------------------------------------------------------------- tests


def test_large_file_and_folder_arrive_byte_identical(stack: Stack) -> None:
    src = stack.root / "src-big"
    big = _write(src / "big.bin", 300 * MiB + 12345)
    tree = src / "photos"
    _write(tree / "2024" / "summer" / "beach.raw", 3 * MiB + 7)
    _write(tree / "2024" / "winter" / "snow äöü.raw", 257 * 1024)
    _write(tree / "notes with spaces.txt", 1000)
    (tree / "empty.txt").write_bytes(b"")
    downloads = stack.root / "dl-big"
    receiver = _receiver(stack, downloads, "--count", "1")
    try:
        sender = _sender(stack, big, tree)
        assert sender.exit_code(300) == 0, sender._tail()
        done = sender.wait_event(_complete, 5, "complete")
        assert done["bytes"] == big.stat().st_size + 3 * MiB + 7 + 257 * 1024 + 1000
        assert receiver.exit_code(60) == 0, receiver._tail()
    finally:
        receiver.stop()
    assert _sha(downloads / "big.bin") == _sha(big)
    assert _tree_hashes(downloads / "photos") == _tree_hashes(tree)
    assert not list(downloads.glob("*.part")), "no partial file is left in the downloads"


def test_relay_then_receiver_killed_mid_transfer_still_completes(stack: Stack) -> None:
    source = _write(stack.root / "src-kill" / "video.mp4", 40 * MiB + 99)
    downloads = stack.root / "dl-kill"
    receiver = _receiver(stack, downloads)
    sender = _sender(stack, source, extra=("--limit-rate", "4MB"))
    try:
        receiver.wait_event(lambda e: e.get("done", 0) > 4 * MiB, 60, "25% progress")
        assert stack.relay is not None
        stack.relay.kill()  # kill -9 in the middle of the stream
        time.sleep(1.0)
        stack.start_relay()
        before = receiver.done_bytes()
        receiver.wait_event(lambda e: e.get("done", 0) > before + 2 * MiB, 90,
                            "progress after the relay restart")
        receiver.kill()  # and then the receiver, kill -9
        partial = receiver.done_bytes()
        assert partial < source.stat().st_size, "the kill came too late to test anything"
        receiver = _receiver(stack, downloads, "--count", "1")
        assert receiver.exit_code(180) == 0, receiver._tail()
        assert sender.exit_code(60) == 0, sender._tail()
    finally:
        receiver.stop()
        sender.stop()
    landed = downloads / "video.mp4"
    assert _sha(landed) == _sha(source)


def test_recipient_offline_halfway_gets_the_rest_from_the_relay(stack: Stack) -> None:
    """The design's "done when": a folder, a peer that goes offline halfway and comes back."""
    folder = stack.root / "src-offline" / "project"
    for index in range(6):
        _write(folder / f"part-{index}.bin", 4 * MiB + index)
    total = sum(p.stat().st_size for p in folder.iterdir())
    downloads = stack.root / "dl-offline"
    receiver = _receiver(stack, downloads)
    sender = _sender(stack, folder, extra=("--limit-rate", "6MB"))
    try:
        receiver.wait_event(lambda e: e.get("done", 0) > total // 4, 60, "a quarter")
        receiver.kill()  # bob goes offline
        got = receiver.done_bytes()
        assert got < total // 2
        # alice keeps going: the relay holds what bob has not taken yet.
        deadline = time.monotonic() + 60
        while _metric(stack, "qsecret_relay_spool_bytes") < (total - got) // 2:
            assert time.monotonic() < deadline, "the relay did not spool the chunks"
            assert sender.running, sender._tail()
            time.sleep(0.5)
        receiver = _receiver(stack, downloads, "--count", "1")  # bob is back
        assert receiver.exit_code(180) == 0, receiver._tail()
        assert sender.exit_code(60) == 0, sender._tail()
        progress = [e["done"] for e in sender.events() if e.get("event") == "progress"]
        assert progress, "the sender showed progress"
    finally:
        receiver.stop()
        sender.stop()
    assert _tree_hashes(downloads / "project") == _tree_hashes(folder)


def test_spool_quota_exceeded_is_reported_and_the_transfer_recovers(stack: Stack) -> None:
    stack.restart_relay("--spool-quota", "2MiB")
    source = _write(stack.root / "src-quota" / "archive.tar", 24 * MiB + 1)
    downloads = stack.root / "dl-quota"
    receiver = _receiver(stack, downloads)
    sender = _sender(stack, source, extra=("--limit-rate", "8MB"))
    try:
        receiver.wait_event(lambda e: e.get("done", 0) > 2 * MiB, 60, "some progress")
        receiver.kill()
        full = sender.wait_event(lambda e: e.get("state") == "waiting"
                                 and "full" in e.get("detail", ""), 60, "quota report")
        assert "bob" in full["detail"]
        assert sender.running
        receiver = _receiver(stack, downloads, "--count", "1")
        assert receiver.exit_code(180) == 0, receiver._tail()
        assert sender.exit_code(60) == 0, sender._tail()
    finally:
        receiver.stop()
        sender.stop()
        stack.restart_relay()
    assert _sha(downloads / "archive.tar") == _sha(source)


def _offer_left_waiting(stack: Stack, source: Path) -> tuple[Cli, Event]:
    """alice sends ``source``; bob's ``receive-files --accept never`` stores the offer and is
    stopped. Returns the sender (still waiting for an answer) and the offer's JSON line."""
    lister = Cli(stack, "bob", "receive-files", "--accept", "never", "--json", "--follow",
                 name="bob-lister").start()
    sender = _sender(stack, source)
    try:
        offer = lister.wait_event(lambda e: e.get("event") == "offer", 60, "the offer")
    except BaseException:
        sender.stop()
        raise
    finally:
        lister.stop()
    return sender, offer


def test_decline_is_reported_to_the_sender(stack: Stack) -> None:
    source = _write(stack.root / "src-decline" / "unwanted.bin", 1000)
    sender, offer = _offer_left_waiting(stack, source)
    try:
        assert offer["names"] == ["unwanted.bin"] and offer["peer"] == "alice"
        assert offer["bytes"] == 1000
        result = stack.cli("bob", "transfers", "--decline", offer["transfer"][:12])
        assert result.returncode == 0, result.stderr
        assert sender.exit_code(60) == 1
        declined = sender.wait_event(lambda e: e.get("state") == "declined", 5, "decline")
        assert declined["detail"] == "declined"
    finally:
        sender.stop()
    listing = stack.cli("alice", "transfers", "--json", check=True)
    states = {json.loads(line)["transfer"]: json.loads(line)["state"]
              for line in listing.stdout.splitlines()}
    assert states[offer["transfer"]] == "declined"


def test_accept_all_takes_an_offer_that_came_before_it_ran(stack: Stack) -> None:
    """An offer stored by an earlier run (here ``receive-files --accept never``) is accepted by
    a later ``receive-files --accept all``: the messenger's auto-accept sees only offers that
    arrive while it runs, so the command accepts the waiting ones itself."""
    source = _write(stack.root / "src-waiting" / "waiting.bin", 300_000)
    sender, offer = _offer_left_waiting(stack, source)
    try:
        downloads = stack.root / "dl-waiting"
        receiver = _receiver(stack, downloads, "--count", "1")
        try:
            done = receiver.wait_event(_complete, 90, "the waiting offer completed")
            assert done["transfer"] == offer["transfer"]
            assert receiver.exit_code(30) == 0
        finally:
            receiver.stop()
        assert sender.exit_code(60) == 0
    finally:
        sender.stop()
    assert _sha(downloads / "waiting.bin") == _sha(source)


def test_sender_cancels_and_the_receiver_keeps_nothing_partial(stack: Stack) -> None:
    source = _write(stack.root / "src-cancel" / "big.iso", 16 * MiB)
    downloads = stack.root / "dl-cancel"
    receiver = _receiver(stack, downloads, "--count", "1")
    sender = _sender(stack, source, extra=("--limit-rate", "2MB"))
    try:
        started = receiver.wait_event(lambda e: e.get("done", 0) > MiB, 60, "progress")
        sender.stop()  # Ctrl+C pauses; the cancel is explicit:
        result = stack.cli("alice", "transfers", "--cancel", started["transfer"][:12])
        assert result.returncode == 0, result.stderr
        receiver.wait_event(lambda e: e.get("state") == "cancelled", 60, "the cancel")
    finally:
        receiver.stop()
        sender.stop()
    assert not (downloads / "big.iso").exists()
    assert not [p for p in downloads.rglob("*") if p.is_file() and p.suffix == ".part"]


def test_missing_path_is_refused_before_anything_is_offered(stack: Stack) -> None:
    result = stack.cli("alice", "send-file", "bob", str(stack.root / "no-such-file"))
    assert result.returncode == 2
    assert "no such file" in result.stderr


def test_a_file_changed_while_it_is_sent_is_refused_with_the_reason(stack: Stack) -> None:
    """Nothing is hashed before sending, so a file edited mid-transfer is caught while it
    is sent: the sender stops ("changed since it was offered") and the receiver ends the
    transfer with that reason, keeping nothing of it."""
    source = _write(stack.root / "src-changed" / "draft.bin", 8 * MiB)
    downloads = stack.root / "dl-changed"
    receiver = _receiver(stack, downloads, "--count", "1")
    sender = _sender(stack, source, extra=("--limit-rate", "2MB"))
    try:
        receiver.wait_event(lambda e: e.get("done", 0) > MiB, 60, "progress")
        with source.open("r+b") as edit:  # an editor saving in place, mid-transfer
            edit.seek(100)
            edit.write(b"edited")
        ended = receiver.wait_event(lambda e: e.get("state") in ("cancelled", "failed",
                                                                 "complete"), 90, "the end")
        assert sender.exit_code(60) != 0
    finally:
        receiver.stop()
        sender.stop()
    assert ended["state"] == "cancelled", ended
    assert "changed since it was offered" in json.dumps(ended), ended
    assert not (downloads / "draft.bin").exists()
    assert not [p for p in downloads.rglob("*") if p.is_file() and p.suffix == ".part"]


def test_an_offer_another_process_took_is_not_taken_again(
        stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """A chat window still shows an offer that another process on the same profile
    (``qsecret transfers --accept``) has since accepted and finished: accepting it there is
    refused, and the finished transfer stays finished (it used to go back to "waiting", its
    files forgotten)."""
    import argparse
    import asyncio

    from client.cli.session import go_online, open_messenger
    from client.messenger.api import MessengerError, TransferState

    monkeypatch.setenv("QSECRET_PASSPHRASE", PASSPHRASE)
    source = _write(stack.root / "src-twice" / "report.pdf", 2 * MiB + 5)
    downloads = stack.profile("bob") / "downloads"  # the profile's: where both processes land

    async def offered(messenger: Any) -> Any:
        async with asyncio.timeout(90):
            while True:
                for view in messenger.transfers():
                    if not view.outgoing and view.state is TransferState.OFFERED:
                        return view
                await asyncio.sleep(0.1)

    async def scenario() -> str:
        # The window lands files elsewhere (as a TUI started with another downloads folder
        # would), so nothing on disk stops it from opening the transfer a second time.
        window = open_messenger(argparse.Namespace(
            data=stack.profile("bob"), relay_url=stack.relay_url, kme_url=None),
            downloads_dir=str(stack.root / "dl-window"))
        await go_online(window, 30)
        try:
            sender = _sender(stack, source)
            offer = await offered(window)
            receiver = Cli(stack, "bob", "transfers", "--accept", offer.transfer_id[:12],
                           "--json").start()
            await asyncio.to_thread(receiver.wait_event, _complete, 120, "the download")
            assert await asyncio.to_thread(receiver.exit_code) == 0
            assert await asyncio.to_thread(sender.exit_code) == 0
            with pytest.raises(MessengerError, match="another qsecret process"):
                await window.accept_transfer(offer.transfer_id)
            (view,) = [v for v in window.transfers() if v.transfer_id == offer.transfer_id]
            assert view.state is TransferState.COMPLETE
            assert view.paths  # what the other process landed, now shown here
            return offer.transfer_id
        finally:
            await window.stop()

    transfer_id = asyncio.run(scenario())
    listing = stack.cli("bob", "transfers", "--json", check=True)
    states = {t["transfer"]: t["state"] for t in map(json.loads, listing.stdout.splitlines())}
    assert states[transfer_id] == "complete"
    assert _sha(downloads / "report.pdf") == _sha(source)
    assert not (stack.root / "dl-window").exists() or not any(
        (stack.root / "dl-window").rglob("*")), "the refused accept wrote files"
