"""A message whose QKD keys the receiver's KME cannot give yet is held and tried again by the
client within seconds, not left for the relay's next redelivery (here 10 minutes away)."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.holdproxy import HoldProxy
from tests.e2e.stack import PASSPHRASE, Stack, free_port, start_stack

pytestmark = pytest.mark.slow

HELD_WAIT_S = 60.0
RETRIES_WITHIN_S = 40.0  # the client's back-off: 1 + 2 + 4 + 8 + 15 s


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, pq_backend: str) -> Iterator[Stack]:
    stack = start_stack(tmp_path_factory.mktemp("held"))
    try:
        stack.restart_relay("--redeliver-after", "600")  # only the client can retry soon
        yield stack
    finally:
        stack.stop()


def _lines(stream, into: queue.Queue[str]) -> None:  # type: ignore[no-untyped-def]
    for line in stream:
        into.put(line)


def _wait_line(lines: queue.Queue[str], text: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        if text in line:
            return line
    raise AssertionError(f"no line with {text!r} within {timeout:.0f}s")


@dataclass
class Recv:
    """bob's ``qsecret recv`` against a KME port nobody listens on yet, its output lines
    read into queues as they come."""

    process: subprocess.Popen[str]
    out: queue.Queue[str]
    err: queue.Queue[str]
    readers: list[threading.Thread]


def _start_recv(stack: Stack, kme_port: int, *extra: str) -> Recv:
    env = {**os.environ, "QSECRET_PASSPHRASE": PASSPHRASE, "QSECRET_LOG": "info"}
    process = subprocess.Popen(
        [sys.executable, "-m", "client", "recv", *extra, "--json",
         "--data", str(stack.profile("bob")), "--relay", stack.relay_url,
         "--kme", f"https://127.0.0.1:{kme_port}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True)
    out: queue.Queue[str] = queue.Queue()
    err: queue.Queue[str] = queue.Queue()
    readers = [threading.Thread(target=_lines, args=(process.stdout, out), daemon=True),
               threading.Thread(target=_lines, args=(process.stderr, err), daemon=True)]
    for reader in readers:
        reader.start()
    return Recv(process, out, err, readers)


def test_a_message_held_for_its_keys_opens_soon_after_the_kme_answers(
        stack: Stack, tmp_path: Path) -> None:
    kme_port = free_port()  # bob's KME, as his client sees it: nobody listens there yet
    recv = _start_recv(stack, kme_port, "--follow")
    bob, out, err, readers = recv.process, recv.out, recv.err, recv.readers
    proxy = None
    try:
        stack.cli("alice", "send", "bob", "keys on the way", check=True)
        _wait_line(err, "held for later", HELD_WAIT_S)
        proxy = HoldProxy(stack.port_b, port=kme_port).start()  # the KME answers from now
        line = _wait_line(out, "keys on the way", RETRIES_WITHIN_S)
        assert "degraded" not in line
    finally:
        os.killpg(bob.pid, signal.SIGTERM)
        bob.wait(30)
        for reader in readers:
            reader.join(10)
        if proxy is not None:
            proxy.stop()


PROXY_AFTER_S = 2.5  # after the hold: the inbox's retry at +1 s fails, the one at +3 s opens


def test_recv_waits_for_a_message_held_for_its_keys_and_prints_it(
        stack: Stack, tmp_path: Path) -> None:
    """A plain ``recv`` (no --follow) does not exit 2 s after the backlog while a message
    waits for its QKD keys: it waits for the inbox's next tries (keys relayed through
    trusted nodes can take a few seconds) and prints the message, exit status 0."""
    kme_port = free_port()  # bob's KME as his client sees it: nobody listens there yet
    # A reply first, so that alice's next message starts a new ratchet turn: new QKD keys,
    # which bob's client must then fetch (the next message of an unanswered chain needs none).
    stack.cli("bob", "send", "alice", "go on", check=True)
    stack.cli("alice", "recv", check=True)
    stack.cli("alice", "send", "bob", "worth the wait", check=True)
    recv = _start_recv(stack, kme_port)
    bob, out, err, readers = recv.process, recv.out, recv.err, recv.readers
    proxy = None
    try:
        _wait_line(err, "held for later", HELD_WAIT_S)
        time.sleep(PROXY_AFTER_S)  # longer than recv's 2 s idle: it must wait for the hold
        proxy = HoldProxy(stack.port_b, port=kme_port).start()  # the KME answers from now
        assert bob.wait(HELD_WAIT_S) == 0
        for reader in readers:
            reader.join(10)
        printed, said = [], []
        while not out.empty():
            printed.append(out.get())
        while not err.empty():
            said.append(err.get())
        assert any("worth the wait" in line for line in printed), "\n".join(printed + said)
    finally:
        if bob.poll() is None:
            os.killpg(bob.pid, signal.SIGTERM)
            bob.wait(30)
        if proxy is not None:
            proxy.stop()
