"""Cascade in lockstep: K frames reconciled in one exchange, each exactly as on its own."""

from __future__ import annotations

import hashlib

import cbor2
import numpy as np
import pytest

from keysource.qkd import LinkParams, amplification
from keysource.qkd.cascade import (
    N_PASSES,
    CascadeAlice,
    CascadeBob,
    ParityQuery,
    reconcile_lockstep,
)
from keysource.qkd.pair import PairLink
from keysource.qkd.protocol import CASCADE_A, CASCADE_Q

Transcript = list[list[tuple[int, int, bytes]]]


def frames(k: int, n: int, qbers: list[float], seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    alice = rng.integers(0, 2, (k, n), dtype=np.uint8)
    flips = rng.random((k, n)) < np.array(qbers)[:, None]
    return alice, alice ^ flips.astype(np.uint8)


def run(alice_bits: np.ndarray, bob_bits: np.ndarray, qber: float | list[float], seed: int
        ) -> tuple[CascadeBob, CascadeAlice, Transcript]:
    """Both sides in-process, keeping every round trip's questions."""
    alice = CascadeAlice(alice_bits, seed)
    bob = CascadeBob(bob_bits, qber, seed)
    transcript: Transcript = []
    queries = bob.start()
    while queries is not None:
        transcript.append([(q.pass_index, q.level, q.ids.astype("<u4").tobytes())
                           for q in queries])
        queries = bob.receive(alice.answer(queries))
    return bob, alice, transcript


def frame_transcript(transcript: Transcript, frame: int) -> Transcript:
    """One frame's questions in a lockstep transcript, with its passes numbered 0..13."""
    rounds = [[(p - frame * N_PASSES, level, ids) for p, level, ids in round_trip
               if p // N_PASSES == frame] for round_trip in transcript]
    return [round_trip for round_trip in rounds if round_trip]


@pytest.mark.parametrize(("n", "qbers"), [(1 << 14, [0.02, 0.005, 0.04]),
                                          (5000, [0.05, 0.05, 0.11]),
                                          (1 << 16, [0.01, 0.08, 0.03])])
def test_lockstep_of_three_frames_equals_three_separate_reconciliations(
        n: int, qbers: list[float]) -> None:
    alice_bits, bob_bits = frames(3, n, qbers, seed=n)
    bob, alice, transcript = run(alice_bits, bob_bits, qbers, seed=5)
    assert bob.results is not None and len(bob.results) == 3
    rounds = []
    for k in range(3):
        alone, alone_alice, alone_transcript = run(alice_bits[k], bob_bits[k], qbers[k], seed=5)
        one, together = alone.result, bob.results[k]
        assert one is not None
        # the same questions in the same round trips, hence the same corrections and leakage
        assert frame_transcript(transcript, k) == alone_transcript
        assert np.array_equal(together.bits, one.bits)
        assert np.array_equal(together.bits, alice_bits[k])
        assert together.corrected == one.corrected == int((alice_bits[k] != bob_bits[k]).sum())
        assert together.leaked_bits == one.leaked_bits == int(alice.leaked[k])
        assert alone_alice.leaked_bits == one.leaked_bits
        assert together.rounds == one.rounds
        rounds.append(one.rounds)
        # the same final key for a seeded Toeplitz hash
        seed_bits = np.random.default_rng(k).integers(
            0, 2, amplification.identity_toeplitz_seed_bits(n, n // 2), dtype=np.uint8)
        assert np.array_equal(amplification.identity_toeplitz_hash(together.bits, seed_bits,
                                                                   n // 2),
                              amplification.identity_toeplitz_hash(one.bits, seed_bits, n // 2))
    # the frames share round trips: as many as the slowest frame needs
    assert bob.rounds == len(transcript) == max(rounds)
    assert bob.leaked_bits == alice.leaked_bits == sum(r.leaked_bits for r in bob.results)


def test_one_frame_asks_exactly_what_it_asked_before_lockstep() -> None:
    """K = 1 is the single-frame protocol unchanged: this digest of the questions and the
    corrected bits was taken with the code before lockstep existed (same keys per seed)."""
    rng = np.random.default_rng(2026)
    n = 20000
    alice_bits = rng.integers(0, 2, n, dtype=np.uint8)
    bob_bits = alice_bits ^ (rng.random(n) < 0.03).astype(np.uint8)
    bob, _, transcript = run(alice_bits, bob_bits, 0.03, seed=11)
    digest = hashlib.sha256()
    for round_trip in transcript:
        for pass_index, level, ids in round_trip:
            digest.update(bytes([pass_index, level]) + ids)
    assert bob.result is not None
    digest.update(np.packbits(bob.result.bits).tobytes())
    assert digest.hexdigest() == (
        "2103659c068ce75caf781f91fc3b0dd6128253148dab17c2bc2b83be43c62051")
    assert (bob.result.leaked_bits, bob.result.rounds, bob.result.corrected) == (3891, 308, 573)


def test_lockstep_is_deterministic() -> None:
    alice_bits, bob_bits = frames(4, 8192, [0.03] * 4, seed=9)
    first = reconcile_lockstep(alice_bits, bob_bits, [0.03] * 4, seed=2)
    second = reconcile_lockstep(alice_bits, bob_bits, [0.03] * 4, seed=2)
    assert first[1] == second[1]
    for a, b in zip(first[0], second[0], strict=True):
        assert np.array_equal(a.bits, b.bits) and a.leaked_bits == b.leaked_bits


def test_alice_refuses_a_question_about_a_frame_that_does_not_exist() -> None:
    alice_bits, _ = frames(2, 4096, [0.0, 0.0], seed=1)
    alice = CascadeAlice(alice_bits, 3)
    ids = np.array([0], np.int64)
    assert alice.answer([ParityQuery(2 * N_PASSES - 1, 0, ids)]).size == 1  # frame 1, pass 13
    with pytest.raises(ValueError, match="2 frame"):
        alice.answer([ParityQuery(2 * N_PASSES, 0, ids)])  # frame 2 of 2
    with pytest.raises(ValueError, match="outside the frame"):
        alice.answer([ParityQuery(N_PASSES, 0, np.array([4096], np.int64))])
    assert alice.leaked_bits == 1  # refused questions reveal nothing


def test_bob_refuses_an_answer_of_the_wrong_length() -> None:
    alice_bits, bob_bits = frames(3, 4096, [0.02] * 3, seed=4)
    alice = CascadeAlice(alice_bits, 3)
    bob = CascadeBob(bob_bits, [0.02] * 3, 3)
    queries = bob.start()
    assert queries is not None
    answer = alice.answer(queries)
    with pytest.raises(ValueError, match="expected"):
        bob.receive(answer[:-1])


def test_mismatched_frames_and_estimates_are_refused() -> None:
    alice_bits, bob_bits = frames(3, 2048, [0.02] * 3, seed=6)
    with pytest.raises(ValueError, match="QBER estimates"):
        CascadeBob(bob_bits, [0.02, 0.02], 1)
    with pytest.raises(ValueError, match="frames"):
        CascadeAlice(alice_bits[None, :, :], 1)
    bob, _, _ = run(alice_bits, bob_bits, [0.02] * 3, 1)
    assert bob.results is not None
    with pytest.raises(ValueError, match="results"):
        _ = bob.result  # several frames: one result each, never a silent first one


def _first_cascade_question(link: PairLink) -> bytes:
    """Run a block by hand until Bob's first CASCADE_Q; return it undelivered (the messages
    before it delivered: Alice has her Cascade state)."""
    to_bob = link.alice.start_block().send
    while to_bob:
        to_alice = [f for frame in to_bob for f in link.bob.receive(frame).send]
        to_bob = []
        for frame in to_alice:
            if frame[:1] == b"C" and frame[2] == CASCADE_Q:
                return frame
            to_bob += link.alice.receive(frame).send
    raise AssertionError("no Cascade question")


@pytest.mark.parametrize(("questions", "reason"), [
    ({"q": [[N_PASSES, 0, 1]], "ids": b"\x00\x00\x00\x00"}, "1 frame(s)"),  # frame 1 of 1
    ({"q": [[0, 0, 2]], "ids": b"\x00\x00\x00\x00"}, "do not match"),  # ids too short
    ({"q": [[0, 0, 1]], "ids": b"\x00\x00\x00"}, "bad cascade query"),  # not whole ids
])
def test_a_cascade_question_about_a_frame_that_does_not_exist_aborts_the_block(
        questions: dict, reason: str) -> None:
    link = PairLink(LinkParams(frame_bits=32768, p_signal=0.6, p_decoy=0.3,
                               min_sample_bits=1024, seed=7))
    genuine = _first_cascade_question(link)
    block = link.alice.block.number
    out = link.alice.receive(link.bob._message(CASCADE_Q, block, cbor2.dumps(questions)))
    assert out.reports and out.reports[0].aborted and reason in out.reports[0].reason
    assert out.keys == [] and not any(f[2] == CASCADE_A for f in out.send if f[:1] == b"C")
    assert link.alice.block is None and link.alice.receive(genuine).send == []  # block gone
    assert not link.run_block().report.aborted  # the link goes on
