"""Crash-safe link state (issue 15, build item 4), sans-I/O: either end crashes at every step.

Each end has a "disk": its exported state and its key pool, written in one atomic step after
every endpoint step and before that step's frames leave (durable.Checkpoint, exactly as the
TCP shell does it). A crash throws the endpoint away (in-memory block, transcripts, Cascade)
and rebuilds it from the disk; the connection drops, so the peer voids its open block (as
net.py does on a lost connection) and frames in flight are lost. Then the link must go on:
every later block succeeds, both pools hold the same keys, and no authentication pad is used
twice in either direction. The authentication pool is tiny, so the refilled key is reached
within a few blocks: a refill one end kept and the other dropped (the old failure: COMMIT lost
and Alice restarted) shows up as tag mismatches well within the blocks run here.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import pytest

from keysource.qkd.auth import make_psk
from keysource.qkd.durable import Checkpoint
from keysource.qkd.params import LinkParams
from keysource.qkd.protocol import (
    DEFERRED,
    NAMES,
    AliceEndpoint,
    BobEndpoint,
    Classical,
    Output,
)

# Small frames, a short fibre (a good key yield per block) and a tiny authentication pool
# (32 pads per direction, topped up by every block) so that pads cycle every ~8 blocks.
PARAMS = LinkParams(frame_bits=32768, fibre_km=5, misalignment=0.005, p_signal=0.6,
                    p_decoy=0.3, min_sample_bits=1024, auth_pool_bytes=1024, seed=15)
PSK_BYTES = 2048
BLOCKS_AFTER = 16


@dataclass
class Durable:
    """One end of the link with its disk (state + pool), as the KME keeps them."""

    kind: type[AliceEndpoint] | type[BobEndpoint]
    psk: bytes
    endpoint: AliceEndpoint | BobEndpoint = field(init=False)
    checkpoint: Checkpoint = field(init=False)
    disk: bytes | None = None
    pool: dict[str, bytes] = field(default_factory=dict)
    pads_sent: list[int] = field(default_factory=list)
    crashes: int = 0

    def __post_init__(self) -> None:
        self.endpoint = self.kind(PARAMS, self.psk)
        self.checkpoint = Checkpoint(self.endpoint)

    def commit(self, out: Output) -> None:
        due = self.checkpoint.due(out)
        if due is None:
            return
        state, keys = due
        for key_id, key in keys:  # one transaction: keys and state together
            assert key_id not in self.pool, "a key_ID came twice"
            self.pool[key_id] = key
        self.disk = state
        self.checkpoint.committed(state)

    def sent(self, frames: list[bytes]) -> list[bytes]:
        for frame in frames:
            if frame[:1] == b"C":
                message = Classical.parse(frame)
                if message.type not in DEFERRED:
                    self.pads_sent.append(message.pad_index)
        return frames

    def crash(self) -> None:
        """kill -9 and restart: only the disk survives."""
        self.crashes += 1
        self.endpoint = (self.kind(PARAMS, self.psk) if self.disk is None
                         else self.kind.from_state(PARAMS, self.disk))
        self.checkpoint = Checkpoint(self.endpoint, self.disk)


def _kind(frame: bytes) -> str:
    return "Q" if frame[:1] == b"Q" else NAMES[frame[2]]


@dataclass
class Link:
    alice: Durable
    bob: Durable

    def run_block(self, crash: tuple[str, str, str] | None = None) -> bool:
        """One block; ``crash`` = (role, step, "before" | "after"). True if keys were made."""
        alice, bob = self.alice, self.bob
        assert isinstance(alice.endpoint, AliceEndpoint)
        queue: deque[tuple[Durable, bytes | None]] = deque([(alice, None)])
        made = False
        while queue:
            end, frame = queue.popleft()
            step = "start" if frame is None else _kind(frame)
            role = "alice" if end is alice else "bob"
            if crash is not None and crash[:2] == (role, step):
                if crash[2] == "after":
                    out = (end.endpoint.start_block() if frame is None  # type: ignore[union-attr]
                           else end.endpoint.receive(frame))
                    end.commit(out)
                    end.sent(out.send)  # their pads are spent, the frames never arrive
                end.crash()
                peer = bob if end is alice else alice
                if peer.endpoint.block is not None:  # the peer sees the connection drop
                    peer.commit(peer.endpoint._abort("connection lost", notify=False))
                return False
            out = (end.endpoint.start_block() if frame is None  # type: ignore[union-attr]
                   else end.endpoint.receive(frame))
            end.commit(out)
            made |= bool(out.keys)
            peer = bob if end is alice else alice
            queue.extend((peer, f) for f in end.sent(out.send))
        return made


CRASH_POINTS = [("alice", step) for step in ("start", "SIFT", "ESTIMATE", "CASCADE_Q",
                                             "VERIFY", "DONE")] + \
               [("bob", step) for step in ("Q", "START", "SIFT_REPLY", "CASCADE_A",
                                           "VERIFY_RESULT", "COMMIT")]


@pytest.mark.slow
@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize(("role", "step"), CRASH_POINTS)
def test_a_crash_at_any_step_of_a_block_does_not_break_the_link(role: str, step: str,
                                                                 when: str) -> None:
    psk = make_psk(PSK_BYTES)
    link = Link(Durable(AliceEndpoint, psk), Durable(BobEndpoint, psk))
    assert link.run_block()  # a block with a refill before the crash
    link.run_block(crash=(role, step, when))
    assert link.alice.crashes + link.bob.crashes == 1, "the crash point was never reached"
    # every pad either end held at the crash, refills included, is used up in the blocks after
    held = {end.endpoint.role: (len(end.pads_sent), end.endpoint.auth.send.available_pads())
            for end in (link.alice, link.bob)}
    for _ in range(BLOCKS_AFTER):
        assert link.run_block(), "a block after the crash made no key"
    assert link.alice.pool == link.bob.pool
    assert list(link.alice.pool) == list(link.bob.pool)  # same keys, same order
    for end in (link.alice, link.bob):
        assert len(set(end.pads_sent)) == len(end.pads_sent), "a pad was used twice"
        sent_before, available = held[end.endpoint.role]
        assert len(end.pads_sent) - sent_before > available, "the test never reached new key"


@pytest.mark.slow
def test_a_new_psk_after_a_crash_between_done_and_commit_keeps_both_ends_in_step() -> None:
    """Alice committed, Bob holds the block pending, then both ends get a new PSK: Bob still
    commits the keys Alice has, but not the refill (it belonged to the old streams)."""
    psk = make_psk(PSK_BYTES)
    link = Link(Durable(AliceEndpoint, psk), Durable(BobEndpoint, psk))
    assert link.run_block()
    link.run_block(crash=("alice", "DONE", "after"))
    assert isinstance(link.bob.endpoint, BobEndpoint) and link.bob.endpoint.pending is not None
    link.bob.crash()  # both restart with the new PSK
    new_psk = make_psk(PSK_BYTES)
    for end in (link.alice, link.bob):
        end.endpoint.reprovision(new_psk)
    held = {end.endpoint.role: (len(end.pads_sent), end.endpoint.auth.send.available_pads())
            for end in (link.alice, link.bob)}
    for _ in range(BLOCKS_AFTER):
        assert link.run_block(), "a block after the new PSK made no key"
    assert list(link.alice.pool.items()) == list(link.bob.pool.items())
    for end in (link.alice, link.bob):
        sent_before, available = held[end.endpoint.role]
        assert len(end.pads_sent) - sent_before > available


def test_state_round_trips_and_refuses_a_foreign_or_damaged_state() -> None:
    psk = make_psk(PSK_BYTES)
    link = Link(Durable(AliceEndpoint, psk), Durable(BobEndpoint, psk))
    link.run_block()
    state = link.alice.endpoint.export_state()
    assert AliceEndpoint.from_state(PARAMS, state).export_state() == state
    with pytest.raises(ValueError, match="not of 'bob'"):
        BobEndpoint.from_state(PARAMS, state)
    with pytest.raises(ValueError, match="not a QKD link state"):
        AliceEndpoint.from_state(PARAMS, b"\xff garbage")
