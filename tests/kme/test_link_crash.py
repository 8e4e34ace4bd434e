"""kill -9 of either KME of a TCP-linked pair, mid-block: the link goes on (issue 15, item 4).

Two real ``qsecret kme serve`` processes linked over TCP. Each is killed (SIGKILL) several
times, alternately, at an arbitrary point of a block (whenever its next status line appears:
the status clock is independent of the block steps), restarted, and must get the link going
again. After the last restart the link runs BLOCKS_AFTER more blocks at both ends. Then:

* no status line ever reported an authentication failure or a stopped link, and since the
  last kill at most the block it cut short (and one more, by chance) was aborted;
* both pools hold the same keys (Bob's pool plus the block Alice committed and Bob holds as
  pending, which Alice's next START would settle);
* the authentication key streams of the two ends still agree byte for byte where they
  overlap, so no refill was kept by one end and dropped by the other, and neither end will
  ever reuse a pad (each resumes from its stored index).

Every step-by-step crash point is covered by tests/qkd/test_crash_recovery.py (sans-I/O).
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from keysource.kme.linkstate import DEFAULT_LINK
from keysource.kme.pool import KeyPool
from keysource.kme.runtime import KME_A, KME_B, pool_path
from keysource.qkd.auth import PAD_BYTES, KeyStream
from keysource.qkd.params import LinkParams
from keysource.qkd.protocol import AliceEndpoint, BobEndpoint

from .conftest import KmeProcess, qsecret_cmd, start_kme
from .test_link import free_port

FRAME_BITS = 65536  # ~0.1-0.3 s per block, a few dozen keys each
KILLS = ["alice", "bob", "alice", "bob", "bob", "alice"]
BLOCKS_AFTER = 40
STATUS = re.compile(r"\| blocks (\d+) aborted (\d+)")


def _serve(data: Path, role: str, ports: dict[str, int]) -> KmeProcess:
    own, peer = (ports["a"], ports["b"]) if role == "alice" else (ports["b"], ports["a"])
    return start_kme(
        ["serve", "--role", role, "--data", str(data), "--port", str(own),
         "--peer-url", f"https://127.0.0.1:{peer}", "--link-host", "127.0.0.1",
         "--link-port", str(ports["link"]), "--status-interval", "0.3",
         "--frame-bits", str(FRAME_BITS)],
        ready_count=1,
    )


def _wait_blocks(process: KmeProcess, at_least: int, timeout_s: float = 300) -> None:
    """Wait for a status line reporting ``at_least`` blocks since this process started."""
    deadline = time.monotonic() + timeout_s
    start = 0
    while True:
        match = process.wait_for(STATUS.pattern, timeout_s=max(1.0, deadline - time.monotonic()),
                                 start=start)
        if int(match.group(1)) >= at_least:
            return
        start = len(process.lines)


def _overlap_agrees(sender: KeyStream, receiver: KeyStream) -> int:
    """Pads both ends still hold for one direction; assert they are the same bytes."""
    first = max(sender.base_index, receiver.base_index)
    last = min(sender.base_index + len(sender.data) // PAD_BYTES,
               receiver.base_index + len(receiver.data) // PAD_BYTES)
    for index in range(first, last):
        assert sender.pad(index) == receiver.pad(index), f"pad {index} differs"
    return last - first


@pytest.mark.slow
def test_kill_9_of_either_kme_mid_block_does_not_stop_the_link(tmp_path: Path) -> None:
    init = subprocess.run(qsecret_cmd("kme", "pki", "init", "--dir", str(tmp_path / "pki")),
                          capture_output=True, text=True, timeout=60)
    assert init.returncode == 0, init.stderr
    ports = {"a": free_port(), "b": free_port(), "link": free_port()}
    running: dict[str, KmeProcess] = {}
    history: list[KmeProcess] = []
    try:
        running["bob"] = _serve(tmp_path, "bob", ports)
        running["alice"] = _serve(tmp_path, "alice", ports)
        history += running.values()
        _wait_blocks(running["alice"], 2)
        for victim in KILLS:
            process = running[victim]
            process.wait_for(STATUS.pattern, start=len(process.lines))  # an arbitrary moment
            process.stop(signal.SIGKILL)
            running[victim] = _serve(tmp_path, victim, ports)
            history.append(running[victim])
            _wait_blocks(running[victim], 2)  # the link works again
        for process in running.values():
            _wait_blocks(process, BLOCKS_AFTER)
    finally:
        for role in ("alice", "bob"):
            if role in running:
                running[role].stop()
    for process in history:
        text = "\n".join(process.lines)
        assert "authentication failed" not in text and "LINK STOPPED" not in text, text[-3000:]
    for process in running.values():  # since the last kill: at most the block it cut short
        last = [m for line in process.lines if (m := STATUS.search(line))][-1]
        assert int(last.group(1)) >= BLOCKS_AFTER and int(last.group(2)) <= 2, last.string

    params = LinkParams(frame_bits=FRAME_BITS)
    with KeyPool(pool_path(tmp_path, KME_A)) as pool_a, \
            KeyPool(pool_path(tmp_path, KME_B)) as pool_b:
        keys_a = {k: v for k, v in pool_a._db.execute("SELECT key_id, material FROM keys")}
        keys_b = {k: v for k, v in pool_b._db.execute("SELECT key_id, material FROM keys")}
        state_a, state_b = pool_a.link_state(DEFAULT_LINK), pool_b.link_state(DEFAULT_LINK)
    assert state_a is not None and state_b is not None
    alice = AliceEndpoint.from_state(params, state_a)
    bob = BobEndpoint.from_state(params, state_b)
    pending = bob.pending
    if pending is not None and pending.pending is not None:
        if pending.number == alice.last_committed:
            keys_b.update(pending.pending[2][:alice.last_count])
    assert len(keys_a) > 10 * BLOCKS_AFTER
    assert keys_a == keys_b
    assert _overlap_agrees(alice.auth.send, bob.auth.recv) > 0
    assert _overlap_agrees(bob.auth.send, alice.auth.recv) > 0
    assert not (tmp_path / KME_A / "link-auth.state").exists()
