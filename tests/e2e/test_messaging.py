"""Real processes end to end: relay, KME pair with a running QKD link, two CLI users."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from client.cli.parsers import RECV_IDLE_S
from keysource.kme.runtime import KME_B, pool_path
from tests.conftest import CORE_SOURCES, full_sources
from tests.e2e.holdproxy import HoldProxy
from tests.e2e.stack import PASSPHRASE, Stack

pytestmark = pytest.mark.slow


def _texts(history: list[dict[str, str]], sender: str) -> list[str]:
    return [m["text"] for m in history if m["from"] == sender]


def _recv_follow(stack: Stack, handle: str, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "QSECRET_PASSPHRASE": PASSPHRASE}
    return subprocess.Popen(
        [sys.executable, "-m", "client", "recv", "--follow", "--json",
         "--data", str(stack.profile(handle)), "--relay", stack.relay_url, *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True,
    )


def _read_json_lines(process: subprocess.Popen[str], count: int, timeout: float) -> list[dict]:
    """Read up to ``count`` JSON lines from a recv --follow process within ``timeout``."""
    import selectors

    assert process.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    out: list[dict] = []
    deadline = time.monotonic() + timeout
    while len(out) < count and time.monotonic() < deadline:
        if selector.select(timeout=0.5):
            line = process.stdout.readline()
            if not line:
                break
            out.append(json.loads(line))
    return out


def test_200_messages_across_relay_and_client_restarts(stack: Stack, pq_backend: str) -> None:
    a_to_b = [f"a->b {i:03d}" for i in range(100)]
    b_to_a = [f"b->a {i:03d}" for i in range(100)]

    # alice -> bob: first half, then the relay is killed -9 and restarted, then the rest.
    stack.cli("alice", "send", "bob", "-", stdin="\n".join(a_to_b[:50]), check=True)
    assert stack.relay is not None
    stack.relay.kill()
    sent_while_down = stack.cli("alice", "send", "bob", "msg while relay is down")
    assert sent_while_down.returncode != 0
    assert "relay" in sent_while_down.stderr
    stack.start_relay()
    stack.cli("alice", "send", "bob", "-", stdin="\n".join(a_to_b[50:]), check=True)

    # bob receives with a client that is killed -9 halfway and started again.
    receiver = _recv_follow(stack, "bob")
    first = _read_json_lines(receiver, 40, timeout=60)
    os.killpg(receiver.pid, signal.SIGKILL)
    receiver.wait()
    assert first, "bob's first receiver got nothing"
    stack.cli("bob", "recv", check=True)

    # bob -> alice, 100 messages, received in one go.
    stack.cli("bob", "send", "alice", "-", stdin="\n".join(b_to_a), check=True)
    stack.cli("alice", "recv", check=True)

    bob_view = stack.history("bob", "alice")
    alice_view = stack.history("alice", "bob")
    # Every message exactly once, in order, on both sides (the relay restart lost nothing,
    # the killed receiver duplicated nothing); the message "while down" was never sent.
    assert _texts(bob_view, "alice") == a_to_b
    assert _texts(alice_view, "bob") == b_to_a
    assert _texts(alice_view, "alice")[: len(a_to_b)] == a_to_b
    labels = {m["keys"] for m in bob_view + alice_view}
    assert labels <= full_sources(pq_backend), labels  # never degraded
    if pq_backend == "liboqs":  # the handshake's epoch mixed the conservative KEM too
        assert labels - {CORE_SOURCES}, labels
    assert "msg while relay is down" not in [m["text"] for m in bob_view]


def test_recv_prints_the_whole_backlog_however_slow_the_kme(stack: Stack) -> None:
    """``recv`` exits once the relay's backlog is handled, not after a quiet spell: with
    bob's KME answers held longer than RECV_IDLE_S, every waiting message is still shown."""
    texts = [f"behind a slow KME {n}" for n in range(5)]
    stack.cli("alice", "recv", check=True)  # alice has bob's latest ratchet key: a turn next
    stack.cli("alice", "send", "bob", "-", stdin="\n".join(texts), check=True)
    proxy = HoldProxy(stack.port_b).start()  # bob's KME, behind a forwarder we can hold
    try:
        proxy.hold()
        env = {**os.environ, "QSECRET_PASSPHRASE": PASSPHRASE}
        bob = subprocess.Popen(
            [sys.executable, "-m", "client", "recv", "--json", "--data",
             str(stack.profile("bob")), "--relay", stack.relay_url, "--kme", proxy.url],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        assert proxy.request_while_held.wait(60), "bob never asked his KME for the keys"
        time.sleep(RECV_IDLE_S + 1)  # the slow KME: answers come later than recv's idle exit
        proxy.release()
        out, err = bob.communicate(timeout=120)
    finally:
        proxy.release()
        proxy.stop()
    assert bob.returncode == 0, err
    shown = [json.loads(line)["text"] for line in out.splitlines()]
    assert shown[-len(texts):] == texts


def _delivered_to(pool: Path, sae: str) -> int:
    """How many pool keys the KME's journal says it handed to ``sae`` (read-only, beside it)."""
    with contextlib.closing(sqlite3.connect(f"file:{pool}?mode=ro", uri=True)) as db:
        (count,) = db.execute("SELECT COUNT(*) FROM delivered WHERE sae = ?", (sae,)).fetchone()
    return int(count)


def test_a_receiver_killed_right_after_its_kme_answered_dec_keys_loses_nothing(
        stack: Stack) -> None:
    """kill -9 of ``recv --follow`` after bob's KME committed and answered his dec_keys but
    before any byte of the answer reached him: the KME keeps that answer for bob during
    the redelivery grace, so after a restart every message opens (issue: without it the
    key was gone for ever, and every message of that ratchet step stayed at the relay)."""
    texts = [f"after a turn {n:02d}" for n in range(20)]
    # A ratchet turn for alice: her next message mixes fresh QKD keys that bob must fetch,
    # and every later message of hers depends on that step.
    stack.cli("bob", "send", "alice", "your turn", check=True)
    stack.cli("alice", "recv", check=True)
    stack.cli("alice", "send", "bob", "-", stdin="\n".join(texts), check=True)

    journal = pool_path(stack.root / "kme", KME_B)
    baseline = _delivered_to(journal, "sae-bob")
    known = threading.Event()  # the receiver's pid is known
    stopped = threading.Event()
    receiver: subprocess.Popen[str] | None = None

    def stop_bob_before_the_answer(_chunk: bytes) -> None:
        known.wait(60)  # holds this chunk (and the forwarder) until ``receiver`` is set
        if receiver is None or stopped.is_set():
            return
        if _delivered_to(journal, "sae-bob") > baseline:  # the KME committed: this answers it
            os.killpg(receiver.pid, signal.SIGSTOP)
            stopped.set()

    proxy = HoldProxy(stack.port_b, before_answer=stop_bob_before_the_answer).start()
    try:
        receiver = _recv_follow(stack, "bob", "--kme", proxy.url)
        known.set()
        assert stopped.wait(120), "bob's KME never answered a dec_keys"
        os.killpg(receiver.pid, signal.SIGKILL)
        out, _ = receiver.communicate(timeout=30)
    finally:
        known.set()
        if receiver is not None and receiver.poll() is None:
            os.killpg(receiver.pid, signal.SIGKILL)
            receiver.wait(30)
        proxy.stop()
    # Bob opened at most the messages before the one whose keys he never got (the first,
    # unless alice's KME was short of keys at her turn: then a later one re-mixed QKD).
    shown = [json.loads(line)["text"] for line in out.splitlines()]
    assert shown == texts[:len(shown)] and len(shown) < len(texts), shown
    assert _delivered_to(journal, "sae-bob") > baseline  # the KME had handed the keys out

    again = stack.cli("bob", "recv")  # restarted: asks the KME again for the same keys
    got = _texts(stack.history("bob", "alice"), "alice")
    assert got[-len(texts):] == texts, f"bob got {got[-3:]} of {texts[:3]}...:\n{again.stderr}"
    assert again.returncode == 0, again.stderr


def test_wrong_passphrase_is_refused_clearly(stack: Stack) -> None:
    result = stack.cli("alice", "recv", passphrase="not-the-passphrase")
    assert result.returncode == 2
    assert "wrong passphrase" in result.stderr
    stack.cli("alice", "contacts", "list", check=True)  # nothing was damaged


def test_unknown_contact(stack: Stack) -> None:
    result = stack.cli("alice", "send", "nobody-here", "hello?")
    assert result.returncode != 0
    assert "nobody-here" in result.stderr


def test_relay_down_at_start(stack: Stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = subprocess.run(
        [sys.executable, "-m", "client", "recv", "--timeout", "3",
         "--data", str(stack.profile("alice")), "--relay", "ws://127.0.0.1:9"],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "QSECRET_PASSPHRASE": PASSPHRASE},
    )
    assert result.returncode == 2
    assert "could not reach the relay at ws://127.0.0.1:9" in result.stderr


def test_verify_marks_contact(stack: Stack) -> None:
    shown = stack.cli("alice", "contacts", "verify", "bob", check=True)
    digits = shown.stdout.splitlines()[2].strip()
    assert len(digits.replace(" ", "")) == 60
    # Both sides compute the same safety number.
    assert digits in stack.cli("bob", "contacts", "verify", "alice", check=True).stdout
    stack.cli("alice", "contacts", "verify", "bob", "--yes", check=True)
    listing = json.loads(stack.cli("alice", "contacts", "list", "--json", check=True).stdout)
    assert {"handle": "bob", "verified": True}.items() <= listing[0].items()


async def test_one_time_prekeys_are_replenished(stack: Stack) -> None:
    """When the relay runs low on bob's one-time prekeys, bob publishes fresh ones."""
    import asyncio

    from client.config import load_config
    from client.messenger.profile import open_profile

    alice = open_profile(load_config(stack.profile("alice"), relay_url=stack.relay_url),
                         PASSPHRASE)
    await alice.start()
    try:
        await alice.wait_online(15)
        first = await alice.relay.fetch_bundle("bob")
        seen = {k.key_id for k in first.bundle.one_time}
        remaining = first.remaining
        while remaining >= 5:
            answer = await alice.relay.fetch_bundle("bob")
            seen |= {k.key_id for k in answer.bundle.one_time}
            remaining = answer.remaining
        await asyncio.to_thread(stack.cli, "bob", "recv", check=True)  # bob logs in
        refilled = await alice.relay.fetch_bundle("bob")
    finally:
        await alice.stop()
    assert refilled.remaining >= 40
    fresh = {k.key_id for k in refilled.bundle.one_time}
    assert fresh and not fresh & seen, "a one-time prekey was handed out twice"


def test_both_open_a_session_at_once(stack: Stack) -> None:
    """carol and dave add each other before either writes: one session wins on both sides,
    and whatever the losing session carried is resent, so nothing is lost."""
    for handle in ("carol", "dave"):
        stack.init(handle)
        stack.cli(handle, "recv", check=True)  # publish prekeys
    stack.cli("carol", "contacts", "add", "dave", check=True)
    stack.cli("dave", "contacts", "add", "carol", check=True)
    stack.cli("carol", "send", "dave", "c1", check=True)
    stack.cli("dave", "send", "carol", "d1", check=True)
    for _ in range(3):  # a few rounds let the tie-break and any resend settle
        stack.cli("carol", "recv", check=True)
        stack.cli("dave", "recv", check=True)
    stack.cli("carol", "send", "dave", "c2", check=True)
    stack.cli("dave", "send", "carol", "d2", check=True)
    stack.cli("carol", "recv", check=True)
    stack.cli("dave", "recv", check=True)
    assert _texts(stack.history("dave", "carol"), "carol") == ["c1", "c2"]
    assert _texts(stack.history("carol", "dave"), "dave") == ["d1", "d2"]


def test_both_open_but_only_one_writes(stack: Stack) -> None:
    """erin and frank add each other, only frank writes: erin takes his session."""
    for handle in ("erin", "frank"):
        stack.init(handle)
        stack.cli(handle, "recv", check=True)
    stack.cli("erin", "contacts", "add", "frank", check=True)
    stack.cli("frank", "contacts", "add", "erin", check=True)
    stack.cli("frank", "send", "erin", "f1", check=True)
    stack.cli("erin", "recv", check=True)
    stack.cli("erin", "send", "frank", "e1", check=True)
    stack.cli("frank", "recv", check=True)
    assert _texts(stack.history("erin", "frank"), "frank") == ["f1"]
    assert _texts(stack.history("frank", "erin"), "erin") == ["e1"]
