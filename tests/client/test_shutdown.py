"""Quitting with work in flight: the TUI (Pilot, in-process) and the CLI (real processes).

At the moment of quitting, a file is moving, texts were just sealed, and a KME request of
the key-status loop is in flight (a forwarder in front of the real KME holds its answers).
The messenger must stop its tasks before its store closes -- no traceback, no
``ProgrammingError: Cannot operate on a closed database`` -- and lose nothing: every text
is in the store (sent, or queued for the next start) and the transfer resumes to a
verified file.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import pytest

from client.config import load_config
from client.messenger.api import TransferState
from client.messenger.profile import ProfileGate, open_profile
from client.tui.app import QsecretApp
from client.tui.widgets.conversation import Conversation
from tests.client.pilot_helpers import online, until
from tests.client.test_tui_pilot import SIZE, _type
from tests.e2e.holdproxy import HoldProxy
from tests.e2e.stack import PASSPHRASE, Stack

pytestmark = pytest.mark.slow

FILE_BYTES = 8 * 1024 * 1024
RATE = "1MB"  # slow enough that the file is still moving when we quit
RATE_BYTES = 1_000_000


class Running:
    """A ``qsecret`` process whose stdout and stderr lines are collected as they come.

    One thread per pipe reads it to its end and nothing else touches the pipes, so no line
    is read twice or lost, and a chatty process never blocks on a full pipe.
    """

    def __init__(self, stack: Stack, handle: str, *args: str, stdin: str | None = None) -> None:
        command = [sys.executable, "-m", "client", *args, "--data", str(stack.profile(handle)),
                   "--relay", stack.relay_url]
        env = {**os.environ, "QSECRET_PASSPHRASE": PASSPHRASE}
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        if stdin is not None:
            assert self.process.stdin is not None
            self.process.stdin.write(stdin)
            self.process.stdin.close()
        self.lines: list[str] = []
        self.err_lines: list[str] = []
        assert self.process.stdout is not None and self.process.stderr is not None
        self._readers = [
            threading.Thread(target=self._read, args=(self.process.stdout, self.lines),
                             daemon=True),
            threading.Thread(target=self._read, args=(self.process.stderr, self.err_lines),
                             daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(pipe: IO[str], into: list[str]) -> None:
        with pipe:
            for line in pipe:
                into.append(line)

    def json_lines(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in list(self.lines) if line.startswith("{")]

    def interrupt(self, timeout: float = 60) -> tuple[int, str]:
        """Ctrl+C, as a user quits; the exit code and everything on stderr."""
        self.process.send_signal(signal.SIGINT)
        return self.finish(timeout)

    def finish(self, timeout: float = 120) -> tuple[int, str]:
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            # Where is it stuck? The qsecret entry point dumps every thread and task on USR1.
            self.process.send_signal(signal.SIGUSR1)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self._join()
            stderr = "".join(self.err_lines)
            raise AssertionError(f"{self.process.args[3:5]} did not exit within {timeout:g}s; "
                                 f"its stderr and stacks:\n{stderr[-20000:]}") from None
        self._join()
        return self.process.returncode, "".join(self.err_lines)

    def _join(self) -> None:
        for reader in self._readers:
            reader.join(10)


def _wait(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _moving(process: Running) -> bool:
    return any(line.get("event") == "progress" and int(line.get("done", 0)) > 0  # type: ignore[call-overload]
               for line in process.json_lines())


def _clean(stderr: str) -> None:
    assert "Traceback" not in stderr, stderr
    assert "ProgrammingError" not in stderr, stderr
    assert "closed database" not in stderr, stderr


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _resume_until_landed(stack: Stack, source: Path) -> None:
    """alice resumes what was paused; bob receives it; the file lands verified."""
    landed = stack.profile("bob") / "downloads" / source.name
    assert not landed.exists()
    bob = Running(stack, "bob", "receive-files", "--accept", "all", "--json", "--count", "1",
                  "--idle", "60")
    alice = Running(stack, "alice", "transfers", "--resume", "--idle", "60", "--json")
    for process in (bob, alice):
        code, stderr = process.finish()
        _clean(stderr)
        assert code == 0, stderr[-2000:]
    assert _digest(landed) == _digest(source)


def _texts(stack: Stack, handle: str, peer: str) -> list[str]:
    return [str(m["text"]) for m in stack.history(handle, peer)]


async def test_quitting_the_tui_mid_work_stops_in_order_and_loses_nothing(
        stack: Stack, tmp_path: Path) -> None:
    source = tmp_path / "tui-quit.bin"
    source.write_bytes(os.urandom(FILE_BYTES))
    proxy = HoldProxy(stack.port_a).start()  # alice's KME, behind a forwarder we can hold
    bob = Running(stack, "bob", "receive-files", "--accept", "all", "--follow", "--json")
    texts = [f"typed before quitting {n}" for n in range(3)]
    try:
        config = load_config(stack.profile("alice"), relay_url=stack.relay_url,
                             kme_url=proxy.url)
        messenger = open_profile(config, PASSPHRASE)
        app = QsecretApp(ProfileGate(config), export_dir=tmp_path / "exports",
                         messenger=messenger)
        async with app.run_test(size=SIZE) as pilot:
            screen = await online(pilot)
            conversation = screen.query_one(Conversation)
            for text in texts:  # sealed, committed, on their way to the relay
                await _type(pilot, text)
                await pilot.press("enter")
            await until(pilot, lambda: set(texts) <= set(conversation.texts()))
            view = await messenger.send_files("bob", [str(source)],
                                              limit_bytes_per_s=RATE_BYTES)
            await until(pilot, lambda: any(
                t.transfer_id == view.transfer_id and t.state is TransferState.SENDING
                and t.done_bytes > 0 for t in messenger.transfers()), timeout=60)
            proxy.hold()
            await until(pilot, proxy.request_while_held.is_set)  # key status: mid-request
            await pilot.press("ctrl+q")
        # run_test re-raises whatever crashed the app (a closed-store error would)
        assert app.return_code in (0, None)
        assert messenger.stopped
        progress = {t.transfer_id: t for t in messenger.transfers()}[view.transfer_id]
        assert progress.state is not TransferState.COMPLETE  # it was quit mid-way
        assert progress.state is not TransferState.FAILED
    finally:
        proxy.release()
        proxy.stop()
        code, stderr = bob.interrupt()
        _clean(stderr)
    assert code in (0, 130)
    # Every text typed before Ctrl+Q is in alice's store (sent, or queued for the next start)
    assert set(texts) <= set(await asyncio.to_thread(_texts, stack, "alice", "bob"))
    await asyncio.to_thread(stack.cli, "alice", "recv", check=True)  # flushes any outbox
    received = await asyncio.to_thread(stack.cli, "bob", "recv", "--json", check=True)
    assert set(texts) <= {json.loads(line)["text"] for line in received.stdout.splitlines()}
    await asyncio.to_thread(_resume_until_landed, stack, source)


def test_interrupting_the_cli_mid_work_stops_in_order_and_loses_nothing(
        stack: Stack, tmp_path: Path) -> None:
    source = tmp_path / "cli-quit.bin"
    source.write_bytes(os.urandom(FILE_BYTES))
    proxy = HoldProxy(stack.port_b).start()  # bob's KME, behind a forwarder we can hold
    texts = [f"sent while bob quits {n}" for n in range(3)]
    # carol sends them: alice's profile is busy in its send-file process (one process
    # per profile at a time)
    bob = Running(stack, "bob", "receive-files", "--accept", "all", "--follow", "--json",
                  "--kme", proxy.url)
    # carol's texts reach bob's running messenger while the file moves
    carol = Running(stack, "carol", "send", "bob", "-", "--json", stdin="\n".join(texts))
    alice = Running(stack, "alice", "send-file", "bob", str(source), "--json",
                    "--limit-rate", RATE)
    try:
        _wait(lambda: _moving(bob), "the file to move")
        carol_code, carol_err = carol.finish()
        assert carol_code == 0, carol_err
        proxy.hold()
        _wait(proxy.request_while_held.is_set, "a KME request in flight")
        bob_code, bob_err = bob.interrupt()
        alice_code, alice_err = alice.interrupt()
    finally:
        proxy.release()
        proxy.stop()
        for process in (alice, bob):
            if process.process.poll() is None:
                process.process.kill()
                process.process.wait()
    _clean(bob_err)
    _clean(alice_err)
    assert bob_code in (0, 130)
    assert alice_code == 130  # send-file: interrupted, the transfer is paused
    assert "paused" in alice_err
    received = stack.cli("bob", "recv", "--json", check=True)
    shown = {json.loads(line)["text"] for line in received.stdout.splitlines()}
    assert set(texts) <= shown | set(_texts(stack, "bob", "carol"))
    assert not any(line.get("event") == "complete" for line in bob.json_lines())
    _resume_until_landed(stack, source)
